//! Wiring: builds the server from its parts (embedded or PostgreSQL store, local or cloud
//! output, export service, runner, sweeper). The `bulkfhir` binary and the end-to-end tests both start the server
//! through [`App`], so the tests run exactly what users run.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use bulkfhir_auth::TokenSigner;
use bulkfhir_export::{ExportConfig, ExportService, Runner, Sweeper};
use bulkfhir_output::{Destination, OutputStore};
use bulkfhir_server::{AppState, AuthSettings, ServerConfig};
use bulkfhir_store::{ClientStore, JobStore, MeteredStore, ResourceStore};
use bulkfhir_store_embedded::EmbeddedStore;
use bulkfhir_store_postgres::PostgresStore;
use tenants::{TenantWorlds, WorldTemplate};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod tenants;

pub use tenants::TenantSpace;

/// How long the start-up check of the export store may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data directory (database, export files, node id, lock).
    pub data_dir: PathBuf,
    /// HTTP settings.
    pub server: ServerConfig,
    /// Export settings.
    pub export: ExportConfig,
    /// Whether requests need SMART Backend Services access tokens.
    pub authorization: Authorization,
    /// Where export files go (`s3://bucket/prefix`, …); `None`: `DATA_DIR/exports`.
    pub export_store: Option<String>,
    /// A PostgreSQL URL for resources, jobs and clients; `None`: the embedded store in
    /// `data_dir`.
    pub database: Option<String>,
}

/// The stores a node works with, on one backend.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Resources.
    pub resources: Arc<dyn ResourceStore>,
    /// Export jobs.
    pub jobs: Arc<dyn JobStore>,
    /// SMART clients and the assertion replay cache.
    pub clients: Arc<dyn ClientStore>,
}

impl Stores {
    /// The three stores of one backend value.
    pub fn from_one<S: ResourceStore + JobStore + ClientStore + 'static>(store: Arc<S>) -> Stores {
        Stores {
            resources: Arc::clone(&store) as Arc<dyn ResourceStore>,
            jobs: Arc::clone(&store) as Arc<dyn JobStore>,
            clients: store,
        }
    }

    /// The PostgreSQL database at `database` when given (schema brought up to date), else the
    /// embedded store in `data_dir`.
    pub async fn open(data_dir: &Path, database: Option<&str>) -> anyhow::Result<Stores> {
        match database {
            Some(url) => {
                let store = Arc::new(PostgresStore::connect(url).await.with_context(|| {
                    format!("open the PostgreSQL store at {}", redact_password(url))
                })?);
                match store.connection_is_encrypted().await {
                    Ok(true) => tracing::info!("connected to PostgreSQL over TLS"),
                    Ok(false) => tracing::warn!(
                        "connected to PostgreSQL without TLS (sslmode=verify-full and \
                         sslrootcert in the URL encrypt and check the server)"
                    ),
                    Err(error) => tracing::warn!(%error, "cannot tell whether PostgreSQL uses TLS"),
                }
                Ok(Stores::from_one(store))
            }
            None => {
                let store = Arc::new(
                    EmbeddedStore::open(data_dir)
                        .with_context(|| format!("open the store in {}", data_dir.display()))?,
                );
                Ok(Stores::from_one(store))
            }
        }
    }

    /// The stores of `tenant` when given (which must exist), else the default tenant's.
    pub async fn open_in(
        data_dir: &Path,
        database: Option<&str>,
        tenant: Option<&str>,
    ) -> anyhow::Result<Stores> {
        match tenant {
            None => Self::open(data_dir, database).await,
            Some(name) => {
                let tenant = bulkfhir_model::TenantName::parse(name)?;
                TenantSpace::new(data_dir, database).open(&tenant).await
            }
        }
    }
}

/// `url` with its password, if any, replaced by `***`, for messages and logs.
pub fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // The key=value form: hide the value after password=.
        Err(_) => url
            .split(' ')
            .map(|pair| if pair.starts_with("password=") { "password=***" } else { pair })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Whether the server checks access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Authorization {
    /// SMART Backend Services: every request but discovery and the token endpoint needs a
    /// token; clients are the ones registered with `bulkfhir client add`.
    #[default]
    Smart,
    /// No checks: anyone who reaches the port can do anything.
    Off,
}

/// A server ready to run.
#[derive(Debug)]
pub struct App {
    state: AppState,
    tenants: Arc<TenantWorlds>,
    runner: Runner,
    sweeper: Sweeper,
    /// A listener of its own for `GET /metrics`, when one was given.
    metrics_listener: Option<TcpListener>,
    /// Held for the life of the server: one `serve` per data directory, because a restarted
    /// node takes over its predecessor's export leases at once.
    _lock: File,
}

impl App {
    /// Opens the data directory and the store, and builds the server.
    pub async fn open(options: ServeOptions) -> anyhow::Result<App> {
        let data_dir = &options.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let lock = lock_data_dir(data_dir)?;
        let node_id = node_id(data_dir)?;
        let stores = Stores::open(data_dir, options.database.as_deref()).await?;
        // Every resource read and write is timed for `/metrics`; the job store is not wrapped.
        let store: Arc<dyn ResourceStore> = Arc::new(MeteredStore::new(stores.resources));
        // Local disk has no minimum part size: 4 MiB parts keep an open file's buffers near
        // 20 MiB (about five parts in flight or filling).
        let output = match &options.export_store {
            None => OutputStore::local(&data_dir.join("exports"))
                .context("open the export folder")?
                .with_part_size(4 * 1024 * 1024),
            Some(url) => Destination::parse(url)
                .and_then(|d| d.open(&options.export.destinations.options))
                .context("--export-store")?,
        };
        let mut server = options.server;
        let mut signing_secret = None;
        if options.authorization == Authorization::Smart {
            // Nodes sharing a database sign with one key, so a token from one node works on
            // every other; a node on its own keeps its key in its data directory.
            let candidate = TokenSigner::random_secret().map_err(|e| anyhow::anyhow!("{e}"))?;
            let secret = match stores.clients.shared_secret("token-signing-key", &candidate).await?
            {
                Some(secret) => secret,
                None => token_secret(data_dir)?,
            };
            let settings = AuthSettings::new(&secret, stores.clients)
                .map_err(|e| anyhow::anyhow!("start authorization: {e}"))?;
            let settings = Arc::new(settings);
            server.auth = Some(Arc::clone(&settings));
            signing_secret = Some((secret, settings));
        }
        let template = WorldTemplate {
            data_dir: data_dir.clone(),
            node_id: node_id.clone(),
            server: ServerConfig { auth: None, ..server.clone() },
            export: options.export.clone(),
            export_store: options.export_store.clone(),
            auth: signing_secret,
        };
        let tenants = Arc::new(TenantWorlds::new(
            TenantSpace::new(data_dir, options.database.as_deref()),
            template,
        ));
        let exports = ExportService::new(Arc::clone(&store), stores.jobs, output, options.export);
        let runner = exports.runner(&node_id);
        let sweeper = exports.sweeper();
        let state = AppState::new(store, exports, server)
            .with_tenants(Arc::clone(&tenants) as Arc<dyn bulkfhir_server::TenantDirectory>);
        Ok(App { state, tenants, runner, sweeper, metrics_listener: None, _lock: lock })
    }

    /// Serves `GET /metrics` on `listener` only (not on the API's listener), so that metrics
    /// can stay on a private address.
    pub fn with_metrics_listener(mut self, listener: TcpListener) -> Self {
        let mut config = (*self.state.config).clone();
        config.metrics_on_api_listener = false;
        self.state.config = Arc::new(config);
        self.metrics_listener = Some(listener);
        self
    }

    /// Serves on `listener` with the export runner and sweeper until `shutdown` is cancelled;
    /// running exports then pause at a checkpoint and resume on the next start.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // The export store must take a file now, not at the first export.
        match tokio::time::timeout(PROBE_TIMEOUT, self.state.exports.probe_output()).await {
            Ok(Ok(())) => {}
            // The whole chain: the operator needs the backend's reason (access denied, no such
            // bucket, connection refused), which names no secret.
            Ok(Err(error)) => {
                return Err(anyhow::Error::new(error).context("the export store cannot be written"));
            }
            Err(_) => anyhow::bail!(
                "the export store did not answer within {} s (writing a probe file)",
                PROBE_TIMEOUT.as_secs()
            ),
        }
        // Exports run on a runtime of their own: their units keep every core busy copying
        // bytes, and on the same worker threads as HTTP a status poll waited behind them (p99
        // above 10 ms with 200 pollers). On separate threads the kernel's scheduler lets the
        // mostly idle HTTP threads in at once.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .thread_name("bulkfhir-export")
            .enable_all()
            .build()
            .context("start the export runtime")?;
        let runner = runtime.handle().spawn(self.runner.run(shutdown.clone()));
        // Every tenant opens now, so that its interrupted exports resume at once.
        if let Err(error) = self.tenants.start(runtime.handle().clone(), shutdown.clone()).await {
            shutdown.cancel();
            let _ = runner.await;
            self.tenants.stopped().await;
            ExportRuntime(Some(runtime)).stop().await?;
            return Err(error.context("open the tenants"));
        }
        let export_runtime = ExportRuntime(Some(runtime));
        let sweeper = tokio::spawn(self.sweeper.run(shutdown.clone()));
        let metrics = self.metrics_listener.map(|listener| {
            let state = self.state.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let served = bulkfhir_server::serve_metrics(listener, state, async move {
                    stop.cancelled().await;
                })
                .await;
                if let Err(error) = served {
                    tracing::warn!(%error, "the metrics listener stopped");
                }
            })
        });
        let stop = shutdown.clone();
        let served =
            bulkfhir_server::serve(listener, self.state, async move { stop.cancelled().await })
                .await;
        shutdown.cancel();
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        let _ = runner.await;
        let _ = sweeper.await;
        self.tenants.stopped().await;
        export_runtime.stop().await?;
        served.context("serve HTTP")
    }
}

/// The export runtime, stopped without blocking an async thread: `stop` waits for its blocking
/// tasks on a thread of its own; if `serve` is dropped before that, dropping this shuts it down
/// in the background (dropping a runtime on an async thread would panic).
struct ExportRuntime(Option<tokio::runtime::Runtime>);

impl ExportRuntime {
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(runtime) = self.0.take() {
            // A thread of its own, not the blocking pool: when the caller's runtime is itself
            // shutting down, a blocking task that has not started is dropped on a worker thread,
            // and dropping a runtime there panics.
            let (done, finished) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("bulkfhir-export-stop".to_owned())
                .spawn(move || {
                    drop(runtime);
                    let _ = done.send(());
                })
                .context("start a thread to stop the export runtime")?;
            finished.await.context("stop the export runtime")?;
        }
        Ok(())
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The data directory's `serve` lock, for a command that must not share the store with a
/// server (`bulkfhir load` in bulk mode); `None` while a server (or another such command) has it.
pub fn try_lock_data_dir(data_dir: &Path) -> anyhow::Result<Option<File>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let path = data_dir.join("serve.lock");
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("lock {}", path.display()))
        }
    }
}

fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    try_lock_data_dir(data_dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "another `bulkfhir serve`, or a `bulkfhir load` into the empty store, is using {}; \
             wait for it or stop it first (one server per data directory)",
            data_dir.display()
        )
    })
}

/// The key that signs access tokens: made on first start, kept in the data directory (owner
/// read-only), so that tokens stay valid across a restart until they expire.
fn token_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("token-signing.key");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= TokenSigner::MIN_SECRET_BYTES => return Ok(secret),
        Ok(_) => anyhow::bail!(
            "{} is shorter than {} bytes; remove it to make a new key (tokens issued so far stop working)",
            path.display(),
            TokenSigner::MIN_SECRET_BYTES
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    }
    let secret = TokenSigner::random_secret().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Written whole under a temporary name, then renamed: a crash leaves no half key.
    let partial = data_dir.join("token-signing.key.partial");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file =
            options.open(&partial).with_context(|| format!("create {}", partial.display()))?;
        file.write_all(&secret)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", partial.display()))?;
    }
    std::fs::rename(&partial, &path).with_context(|| format!("create {}", path.display()))?;
    tracing::info!(path = %path.display(), "made the access token signing key");
    Ok(secret)
}

/// A stable id for this node, kept in the data directory.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => write_node_id(&path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => write_node_id(&path),
        Err(error) => Err(error).with_context(|| format!("read {}", path.display())),
    }
}

fn write_node_id(path: &Path) -> anyhow::Result<String> {
    let id = format!("node-{}", uuid::Uuid::new_v4());
    std::fs::write(path, &id).with_context(|| format!("write {}", path.display()))?;
    Ok(id)
}
