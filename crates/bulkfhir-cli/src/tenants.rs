//! Tenants: each one a world of its own beside the default tenant's, served at
//! `/fhir/t/{tenant}`.
//!
//! A tenant has its own store (resources, history, export jobs, clients), its own export files
//! and its own export runner and sweeper, built exactly as the default tenant's are: the
//! export engine is the same code over other stores, so nothing of one tenant can reach
//! another's by construction.
//!
//! - Embedded: `DATA_DIR/tenants/{tenant}/` holds its database; a marker file written last
//!   (`tenant`) makes it exist, so a half-made tenant never does.
//! - PostgreSQL: the schema `tenant_{tenant}` (`-` as `_`) of the same database, created and
//!   dropped whole.
//! - Export files: under `t/{tenant}/` of the export store (`DATA_DIR/exports/t/{tenant}`, or
//!   `s3://bucket/prefix/t/{tenant}/...`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use anyhow::{Context, bail};
use bulkfhir_model::TenantName;
use bulkfhir_output::{CloudOptions, Destination, OutputKey, OutputStore};
use bulkfhir_server::{AppState, AuthSettings, ServerConfig, TenantDirectory};
use bulkfhir_store::{JobQuery, JobStatus, JobStore, MeteredStore, ResourceStore};
use bulkfhir_store_embedded::EmbeddedStore;
use bulkfhir_store_postgres::PostgresStore;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::Stores;

/// The marker whose presence makes an embedded tenant exist.
const MARKER: &str = "tenant";

/// Where tenants live: the data directory, or a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct TenantSpace {
    data_dir: PathBuf,
    database: Option<String>,
}

impl TenantSpace {
    /// Tenants beside the default tenant in `data_dir` (embedded) or `database`.
    pub fn new(data_dir: &Path, database: Option<&str>) -> Self {
        TenantSpace { data_dir: data_dir.to_owned(), database: database.map(str::to_owned) }
    }

    fn dir(&self, tenant: &TenantName) -> PathBuf {
        self.data_dir.join("tenants").join(tenant.as_str())
    }

    /// Creates `tenant`; false when it existed already.
    pub async fn add(&self, tenant: &TenantName) -> anyhow::Result<bool> {
        if let Some(url) = &self.database {
            let created = bulkfhir_store_postgres::create_schema(url, &tenant.schema()).await?;
            // Its tables now, not on first use.
            let store = PostgresStore::connect_in_schema(url, &tenant.schema()).await?;
            store.close();
            return Ok(created);
        }
        let dir = self.dir(tenant);
        if dir.join(MARKER).is_file() {
            return Ok(false);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        drop(
            EmbeddedStore::open(&dir)
                .with_context(|| format!("open the store in {}", dir.display()))?,
        );
        std::fs::write(dir.join(MARKER), tenant.as_str())
            .with_context(|| format!("write {}", dir.join(MARKER).display()))?;
        Ok(true)
    }

    /// Whether `tenant` exists.
    pub async fn exists(&self, tenant: &TenantName) -> anyhow::Result<bool> {
        match &self.database {
            Some(url) => Ok(bulkfhir_store_postgres::schema_exists(url, &tenant.schema()).await?),
            None => Ok(self.dir(tenant).join(MARKER).is_file()),
        }
    }

    /// Every tenant, sorted by name.
    pub async fn list(&self) -> anyhow::Result<Vec<TenantName>> {
        let names: Vec<String> = match &self.database {
            Some(url) => bulkfhir_store_postgres::list_schemas(url, "tenant_")
                .await?
                .iter()
                .filter_map(|schema| schema.strip_prefix("tenant_"))
                .map(|name| name.replace('_', "-"))
                .collect(),
            None => match std::fs::read_dir(self.data_dir.join("tenants")) {
                Ok(entries) => entries
                    .flatten()
                    .filter(|e| e.path().join(MARKER).is_file())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(error) => return Err(error).context("list the tenants"),
            },
        };
        let mut tenants: Vec<TenantName> =
            names.iter().filter_map(|n| TenantName::parse(n).ok()).collect();
        tenants.sort();
        Ok(tenants)
    }

    /// The stores of `tenant`, which must exist.
    pub async fn open(&self, tenant: &TenantName) -> anyhow::Result<Stores> {
        match self.open_if_exists(tenant).await? {
            Some(stores) => Ok(stores),
            None => {
                bail!("there is no tenant '{tenant}'; add it with `bulkfhir tenant add {tenant}`")
            }
        }
    }

    /// The stores of `tenant`, or `None` when there is no such tenant.
    async fn open_if_exists(&self, tenant: &TenantName) -> anyhow::Result<Option<Stores>> {
        if !self.exists(tenant).await? {
            return Ok(None);
        }
        let stores = match &self.database {
            Some(url) => {
                let store =
                    Arc::new(PostgresStore::connect_in_schema(url, &tenant.schema()).await?);
                Stores::from_one(store)
            }
            None => {
                let dir = self.dir(tenant);
                let store = EmbeddedStore::open(&dir)
                    .with_context(|| format!("open the store in {}", dir.display()))?;
                Stores::from_one(Arc::new(store))
            }
        };
        Ok(Some(stores))
    }

    /// Removes `tenant`: its resources, jobs, clients and export files. Refused while one of its
    /// exports is queued or running, unless `force`. Returns how many export files went.
    pub async fn remove(
        &self,
        tenant: &TenantName,
        force: bool,
        export_store: Option<&str>,
        cloud: &CloudOptions,
    ) -> anyhow::Result<u64> {
        // On the embedded store, a serving node holds the tenant open: it must be stopped.
        let _lock = if self.database.is_none() {
            Some(crate::lock_data_dir(&self.data_dir)?)
        } else {
            None
        };
        let stores = self.open(tenant).await?;
        let mut active = 0;
        for status in [JobStatus::Accepted, JobStatus::InProgress] {
            let query = JobQuery { status: Some(status), requester: None, limit: 1000 };
            active += stores.jobs.search(&query).await?.len();
        }
        if active > 0 && !force {
            bail!(
                "tenant '{tenant}' has {active} export(s) queued or running; wait for them, cancel them, or remove it with --force"
            );
        }
        drop(stores);
        let output = tenant_output(&self.data_dir, export_store, cloud, tenant)?;
        let mut files = 0;
        for prefix in ["jobs", "health"] {
            let key = OutputKey::parse(prefix).map_err(|e| anyhow::anyhow!("{e}"))?;
            files += output.delete_prefix(&key).await.with_context(|| {
                format!("delete the export files of tenant '{tenant}' under {prefix}/")
            })?;
        }
        match &self.database {
            Some(url) => {
                bulkfhir_store_postgres::drop_schema(url, &tenant.schema()).await?;
            }
            None => {
                // The marker goes first: from then on the tenant does not exist, even if the
                // rest of the folder outlives a crash.
                let dir = self.dir(tenant);
                std::fs::remove_file(dir.join(MARKER))
                    .with_context(|| format!("remove {}", dir.join(MARKER).display()))?;
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("remove {}", dir.display()))?;
            }
        }
        if export_store.is_none() {
            let local = local_exports(&self.data_dir, tenant);
            if local.exists() {
                std::fs::remove_dir_all(&local)
                    .with_context(|| format!("remove {}", local.display()))?;
            }
        }
        Ok(files)
    }
}

fn local_exports(data_dir: &Path, tenant: &TenantName) -> PathBuf {
    data_dir.join("exports").join("t").join(tenant.as_str())
}

/// The export store of `tenant`: `t/{tenant}` under the server's.
pub(crate) fn tenant_output(
    data_dir: &Path,
    export_store: Option<&str>,
    options: &CloudOptions,
    tenant: &TenantName,
) -> anyhow::Result<OutputStore> {
    Ok(match export_store {
        None => OutputStore::local(&local_exports(data_dir, tenant))
            .context("open the tenant's export folder")?
            .with_part_size(4 * 1024 * 1024),
        Some(url) => {
            let url = format!("{}/t/{tenant}", url.trim_end_matches('/'));
            Destination::parse(&url)
                .and_then(|d| d.open(options))
                .with_context(|| format!("the export store of tenant '{tenant}'"))?
        }
    })
}

/// What a tenant's world is built from: the default tenant's settings.
#[derive(Debug)]
pub(crate) struct WorldTemplate {
    pub(crate) data_dir: PathBuf,
    pub(crate) node_id: String,
    pub(crate) server: ServerConfig,
    pub(crate) export: bulkfhir_export::ExportConfig,
    pub(crate) export_store: Option<String>,
    /// The token signing secret and the default tenant's settings, when authorization is on.
    pub(crate) auth: Option<(Vec<u8>, Arc<AuthSettings>)>,
}

/// Where a tenant's runner and sweeper run, known once the server serves.
#[derive(Debug)]
struct Spawner {
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

/// How long a node trusts that an open tenant still exists (another node, or `tenant remove`
/// on PostgreSQL, may have removed it).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// An open tenant.
#[derive(Debug)]
struct Opened {
    state: AppState,
    checked: std::time::Instant,
    /// Stops its runner and sweeper.
    stop: CancellationToken,
}

/// The tenants a serving node has opened, opening others on first use.
#[derive(Debug)]
pub(crate) struct TenantWorlds {
    space: TenantSpace,
    template: WorldTemplate,
    opened: tokio::sync::Mutex<HashMap<TenantName, Opened>>,
    spawner: OnceLock<Spawner>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl TenantWorlds {
    pub(crate) fn new(space: TenantSpace, template: WorldTemplate) -> Self {
        TenantWorlds {
            space,
            template,
            opened: tokio::sync::Mutex::default(),
            spawner: OnceLock::new(),
            tasks: std::sync::Mutex::default(),
        }
    }

    /// From now on, tenants' runners run on `runtime` until `shutdown`; every existing tenant
    /// is opened, so that its interrupted exports resume now, not at its first request.
    pub(crate) async fn start(
        &self,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let _ = self.spawner.set(Spawner { runtime, shutdown });
        for tenant in self.space.list().await? {
            self.open_world(&tenant).await?;
        }
        Ok(())
    }

    /// Waits for the tenants' runners and sweepers, once `shutdown` was cancelled.
    pub(crate) async fn stopped(&self) {
        let tasks = std::mem::take(
            &mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn open_world(&self, tenant: &TenantName) -> anyhow::Result<Option<AppState>> {
        let mut opened = self.opened.lock().await;
        if let Some(open) = opened.get_mut(tenant) {
            if open.checked.elapsed() < RECHECK {
                return Ok(Some(open.state.clone()));
            }
            if self.space.exists(tenant).await? {
                open.checked = std::time::Instant::now();
                return Ok(Some(open.state.clone()));
            }
            // Removed behind this node's back: stop its work and answer as for no tenant.
            if let Some(gone) = opened.remove(tenant) {
                gone.stop.cancel();
                tracing::info!(%tenant, "the tenant was removed; closed it");
            }
            return Ok(None);
        }
        let Some(spawner) = self.spawner.get() else { bail!("the server is not serving yet") };
        let Some(stores) = self.space.open_if_exists(tenant).await? else { return Ok(None) };
        let template = &self.template;
        let store: Arc<dyn ResourceStore> = Arc::new(MeteredStore::new(stores.resources));
        let output = tenant_output(
            &template.data_dir,
            template.export_store.as_deref(),
            &template.export.destinations.options,
            tenant,
        )?;
        let mut server = template.server.clone();
        if let Some((secret, operators)) = &template.auth {
            let settings = AuthSettings::for_tenant(
                secret,
                stores.clients,
                tenant.clone(),
                Arc::clone(operators),
            )
            .map_err(|e| anyhow::anyhow!("start authorization for tenant '{tenant}': {e}"))?;
            server.auth = Some(Arc::new(settings));
        }
        let jobs: Arc<dyn JobStore> = stores.jobs;
        let exports = bulkfhir_export::ExportService::new(
            Arc::clone(&store),
            jobs,
            output,
            template.export.clone(),
        );
        let runner = exports.runner(&template.node_id);
        let sweeper = exports.sweeper();
        let stop = spawner.shutdown.child_token();
        let runner = spawner.runtime.spawn(runner.run(stop.clone()));
        let sweeper = tokio::spawn(sweeper.run(stop.clone()));
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend([runner, sweeper]);
        let state = AppState::new(store, exports, server).in_tenant(tenant.clone());
        tracing::info!(%tenant, "tenant opened");
        let open = Opened { state: state.clone(), checked: std::time::Instant::now(), stop };
        opened.insert(tenant.clone(), open);
        Ok(Some(state))
    }
}

impl TenantDirectory for TenantWorlds {
    fn open<'a>(
        &'a self,
        tenant: &'a TenantName,
    ) -> BoxFuture<'a, Result<Option<AppState>, String>> {
        Box::pin(async move { self.open_world(tenant).await.map_err(|e| format!("{e:#}")) })
    }
}
