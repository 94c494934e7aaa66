//! `bulkfhir`: the server and its tools in one binary.
//!
//! - `serve`: the FHIR API on the embedded store;
//! - `load`: NDJSON files straight into the store, with a progress bar;
//! - `generate`: a deterministic synthetic population as NDJSON;
//! - `demo`: generate, load and serve in one step, for a first look.

mod bench;
mod clients;
mod config;
mod pull;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant as WallClock},
};

use anyhow::Context;
use bulkfhir_app::{App, Authorization, ServeOptions, Stores};
use bulkfhir_export::ExportConfig;
use bulkfhir_generator::{GenerateOptions, generate_to_dir};
use bulkfhir_model::{ResourceType, TenantName};
use bulkfhir_server::{ConnectionLimits, ServerConfig, TlsSettings};
use bulkfhir_store::{
    ResourceStore, ScanOptions,
    loader::{LoadOptions, LoadProgress, LoadReport, collect_files, load_files},
};
use bulkfhir_store_embedded::EmbeddedStore;
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(name = "bulkfhir", version, about = "A FHIR R4 server built for Bulk Data export")]
struct Cli {
    /// Log lines as text (for people) or JSON (one object a line, for log collectors).
    #[arg(long, global = true, env = "BULKFHIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the FHIR API (base URL http://LISTEN/fhir, or https with --tls-cert) on the embedded store.
    Serve(Box<ServeArgs>),
    /// Load NDJSON files (or folders of them) straight into the store.
    Load(LoadArgs),
    /// Write a deterministic synthetic population as NDJSON, one file per type.
    Generate(GenerateArgs),
    /// Generate a small population into an empty data directory, load it, and serve it.
    Demo(DemoArgs),
    /// Benchmark ingest and every kind of export against this machine's copy and gzip limits.
    Bench(bench::BenchArgs),
    /// Pull a bulk export from any Bulk Data server into a folder: kick off, poll, download
    /// the files in parallel; rerun the same command to resume.
    Pull(Box<pull::PullArgs>),
    /// Configuration files for `serve --config`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// SMART backend clients: register, list, remove, and make a key pair to try with.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Tenants: separate stores, exports and clients on one server, at [base]/fhir/t/NAME.
    #[command(subcommand)]
    Tenant(TenantCommand),
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Create a tenant, served at [base]/fhir/t/NAME with an empty store of its own (a
    /// running server finds it at its first request).
    Add {
        /// 1-48 characters of a-z, 0-9 and '-'.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the tenants.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a tenant with its resources, export jobs, clients and export files. Refused while
    /// one of its exports is queued or running (unless --force) and, on the embedded store,
    /// while a server uses the data directory.
    Remove {
        /// The tenant's name.
        name: String,
        /// Remove it even while its exports are queued or running.
        #[arg(long)]
        force: bool,
        /// The export store the server writes to (as `serve --export-store`); the tenant's
        /// files under t/NAME/ there are deleted too.
        #[arg(long, env = "BULKFHIR_EXPORT_STORE")]
        export_store: Option<String>,
        /// The S3-compatible server of --export-store, as `serve --s3-endpoint`.
        #[arg(long, env = "BULKFHIR_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Register a client; prints its id (the iss and sub of its assertions).
    Add {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// Its public keys: a JWKS file (stored in the store).
        #[arg(long, conflicts_with = "jwks_url", required_unless_present = "jwks_url")]
        jwks: Option<PathBuf>,
        /// Its public keys: a JWKS URL (https://), fetched when it authenticates.
        #[arg(long)]
        jwks_url: Option<String>,
        /// The SMART scopes it may be granted, e.g. "system/*.rs" or
        /// "system/Observation.rs?category=laboratory bulkfhir/admin".
        #[arg(long)]
        scope: String,
        #[command(flatten)]
        store: TenantStoreArgs,
    },
    /// List the registered clients.
    List {
        #[command(flatten)]
        store: TenantStoreArgs,
    },
    /// Remove a client.
    Remove {
        /// The client's id.
        id: String,
        #[command(flatten)]
        store: TenantStoreArgs,
    },
    /// Write a key pair for trying authorization: private-key.pem and jwks.json.
    Keygen {
        /// The folder to write them to.
        #[arg(long)]
        out: PathBuf,
        /// The signing algorithm the key is for.
        #[arg(long, value_enum, default_value_t = clients::KeyAlg::Es384)]
        alg: clients::KeyAlg,
    },
    /// Get an access token from a server (SMART Backend Services) and print it, for curl and
    /// scripts: TOKEN=$(bulkfhir client token ...).
    Token {
        /// The server's FHIR base URL; its token endpoint is read from
        /// .well-known/smart-configuration.
        #[arg(long)]
        base_url: String,
        /// The client id `bulkfhir client add` printed.
        #[arg(long)]
        client_id: String,
        /// The private key (PKCS#8 PEM, as `client keygen` writes it).
        #[arg(long)]
        key: PathBuf,
        /// The key's id in the registered JWKS [default: the first key of jwks.json beside
        /// the private key].
        #[arg(long)]
        kid: Option<String>,
        /// The scopes to ask for.
        #[arg(long, default_value = "system/*.rs")]
        scope: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Report every unknown key and invalid value of a configuration file, with its line
    /// (exit code 2 when there is any).
    Check {
        /// The TOML file (keys as `serve`'s flags: `listen = "0.0.0.0:8080"`).
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// Where the embedded store keeps its database (and a node its id, lock and local files).
    #[arg(long, env = "BULKFHIR_DATA_DIR", default_value = "./bulkfhir-data")]
    data_dir: PathBuf,
    /// Keep resources, export jobs and clients in PostgreSQL instead of the embedded store:
    /// `postgres://user:password@host:5432/database`. Several `serve` nodes may share one
    /// database (each with its own --data-dir); the schema is created or upgraded at start.
    #[arg(long, env = "BULKFHIR_DATABASE")]
    database: Option<String>,
}

/// A store, in a tenant or the default one.
#[derive(Args, Debug)]
struct TenantStoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The tenant (`bulkfhir tenant add`); the default tenant when not given.
    #[arg(long, env = "BULKFHIR_TENANT")]
    tenant: Option<String>,
}

impl TenantStoreArgs {
    async fn open(&self) -> anyhow::Result<Stores> {
        Stores::open_in(
            &self.store.data_dir,
            self.store.database.as_deref(),
            self.tenant.as_deref(),
        )
        .await
    }
}

impl StoreArgs {
    fn tenants(&self) -> bulkfhir_app::TenantSpace {
        bulkfhir_app::TenantSpace::new(&self.data_dir, self.database.as_deref())
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// A TOML file with the same keys as these flags (`max-running-exports = 4`); flags and
    /// environment variables override it. Check one with `bulkfhir config check FILE`.
    #[arg(long, env = "BULKFHIR_CONFIG")]
    config: Option<PathBuf>,
    /// Address and port to listen on.
    #[arg(long, env = "BULKFHIR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "BULKFHIR_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Public base URL of the FHIR API (default: http://HOST/fhir from each request's Host,
    /// https with --tls-cert).
    /// Set it in production: then no request header goes into the URLs the server hands out.
    #[arg(long, env = "BULKFHIR_BASE_URL")]
    base_url: Option<String>,
    /// The Host header values (host or host:port, comma-separated) the server answers; others
    /// get 400. Default: any valid host[:port].
    #[arg(long, env = "BULKFHIR_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Serve `GET /metrics` on this address only (for example 127.0.0.1:9090) instead of on the
    /// API's listener, so that metrics are never public.
    #[arg(long, env = "BULKFHIR_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The most connections served at once; one more gets 503 and is closed.
    #[arg(long, env = "BULKFHIR_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Seconds a client has to send a request's line and headers before the connection closes
    /// (idle keep-alive connections included). Keep it above the longest Retry-After (30 s):
    /// a client that waits as told and reuses its connection must find it open.
    #[arg(long, env = "BULKFHIR_HEADER_TIMEOUT_SECS", default_value_t = 60)]
    header_timeout_secs: u64,
    /// The longest pause in seconds between two parts of a request body (then 408).
    #[arg(long, env = "BULKFHIR_BODY_TIMEOUT_SECS", default_value_t = 60)]
    body_timeout_secs: u64,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first); needs
    /// --tls-key. Without it the API is plain HTTP (for a TLS-terminating proxy in front).
    #[arg(long, env = "BULKFHIR_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted) of --tls-cert.
    #[arg(long, env = "BULKFHIR_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// `smart`: every request needs a SMART Backend Services access token (register clients
    /// with `bulkfhir client add`). `none`: no checks at all; allowed only on a loopback
    /// address unless --insecure-no-auth-on-network is also given.
    #[arg(long, env = "BULKFHIR_AUTH", value_enum, default_value_t = AuthMode::Smart)]
    auth: AuthMode,
    /// With `--auth none`, listen on a non-loopback address anyway: anyone who reaches the
    /// port can read, change and export everything.
    #[arg(long)]
    insecure_no_auth_on_network: bool,
    #[command(flatten)]
    export: ExportArgs,
}

/// `serve --auth`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    /// SMART Backend Services.
    Smart,
    /// No authorization.
    None,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Exports that run at once.
    #[arg(long, env = "BULKFHIR_MAX_RUNNING_EXPORTS", default_value_t = 2)]
    max_running_exports: usize,
    /// Exports that may be queued or running; beyond it a kick-off gets 429.
    #[arg(long, env = "BULKFHIR_MAX_QUEUED_EXPORTS", default_value_t = 32)]
    max_queued_exports: usize,
    /// Resources per export file.
    #[arg(long, env = "BULKFHIR_EXPORT_FILE_RESOURCES", default_value_t = 100_000)]
    export_file_resources: u64,
    /// Hours export files are kept.
    #[arg(long, env = "BULKFHIR_EXPORT_RETENTION_HOURS", default_value_t = 24)]
    export_retention_hours: u64,
    /// Seconds export files are kept, instead of --export-retention-hours (for short-lived
    /// exports; the sweeper then looks at least every quarter of it).
    #[arg(long, env = "BULKFHIR_EXPORT_RETENTION_SECS", conflicts_with = "export_retention_hours")]
    export_retention_secs: Option<u64>,
    /// gzip level for .ndjson.gz output.
    #[arg(long, env = "BULKFHIR_GZIP_LEVEL", default_value_t = 1)]
    gzip_level: u32,
    /// Parts (types, key ranges) of one export that run at once [default: the core count;
    /// twice that with --database, where each part waits on the database].
    #[arg(long, env = "BULKFHIR_EXPORT_PARALLELISM")]
    export_parallelism: Option<usize>,
    /// Seconds an export lease lasts without a heartbeat (a job's, and each of its parts'):
    /// how long the parts a dead node was running wait before another node takes them over.
    #[arg(long, env = "BULKFHIR_EXPORT_LEASE_SECS", default_value_t = 30)]
    export_lease_secs: u64,
    /// How often, in milliseconds, an idle export runner looks for work: queued exports, and
    /// parts of exports other nodes coordinate.
    #[arg(long, env = "BULKFHIR_EXPORT_POLL_MS", default_value_t = 1000)]
    export_poll_ms: u64,
    /// A type with more versions than this is exported as several key ranges of this many
    /// sequence numbers each, run at once (on every core, and on every node sharing the
    /// database).
    #[arg(long, env = "BULKFHIR_EXPORT_KEY_RANGE", default_value_t = 50_000)]
    export_key_range: u64,
    /// Where export files go: file:///path, s3://bucket/prefix, gs://bucket/prefix or
    /// az://container/prefix [default: DATA_DIR/exports]. Credentials come from each cloud's
    /// standard environment variables (AWS_*, GOOGLE_*, AZURE_*).
    #[arg(long, env = "BULKFHIR_EXPORT_STORE")]
    export_store: Option<String>,
    /// An S3-compatible server (MinIO, SeaweedFS, Ceph, R2) instead of AWS, e.g.
    /// http://127.0.0.1:8333 (also AWS_ENDPOINT_URL).
    #[arg(long, env = "BULKFHIR_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// `server`: manifests list this server's download URLs (the owner's token needed when
    /// authorization is on); `signed`: files in a bucket are listed as URLs signed by the
    /// bucket (S3 presigned, GCS v4, Azure SAS) that expire with the export and need no token.
    #[arg(long, env = "BULKFHIR_EXPORT_URLS", value_enum, default_value_t = ExportUrls::Server)]
    export_urls: ExportUrls,
    /// The longest a signed URL is valid, in seconds (never longer than the files are kept;
    /// at most 7 days).
    #[arg(long, env = "BULKFHIR_SIGNED_URL_SECS", default_value_t = 7 * 24 * 3600)]
    signed_url_secs: u64,
    /// Destinations a kick-off may name with `destination` (comma-separated): a URL, or a
    /// prefix ending in /* such as s3://partner-bucket/*. Others are refused with 400.
    #[arg(long, env = "BULKFHIR_ALLOW_EXPORT_DESTINATIONS", value_delimiter = ',')]
    allow_export_destination: Vec<String>,
}

/// `serve --export-urls`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ExportUrls {
    /// This server's download URLs.
    Server,
    /// URLs signed by the bucket.
    Signed,
}

impl ExportArgs {
    fn retention(&self) -> Duration {
        match self.export_retention_secs {
            Some(secs) => Duration::from_secs(secs.max(1)),
            None => Duration::from_secs(self.export_retention_hours.saturating_mul(3600)),
        }
    }

    fn config(&self) -> ExportConfig {
        ExportConfig {
            max_running_jobs: self.max_running_exports.max(1),
            max_active_jobs: self.max_queued_exports.max(1),
            max_resources_per_file: self.export_file_resources.max(1),
            retention: self.retention(),
            sweep_interval: ExportConfig::default()
                .sweep_interval
                .min(self.retention() / 4)
                .max(Duration::from_millis(100)),
            gzip_level: self.gzip_level.min(9),
            lease: Duration::from_secs(self.export_lease_secs.max(1)),
            key_range_span: self.export_key_range.max(1),
            poll_interval: Duration::from_millis(self.export_poll_ms.clamp(10, 60_000)),
            unit_concurrency: self
                .export_parallelism
                .unwrap_or(ExportConfig::default().unit_concurrency)
                .max(1),
            max_signed_url: Duration::from_secs(self.signed_url_secs.max(1)),
            destinations: bulkfhir_output::DestinationPolicy {
                allowed: self
                    .allow_export_destination
                    .iter()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
                options: bulkfhir_output::CloudOptions {
                    s3_endpoint: self.s3_endpoint.clone(),
                    gcs_service_account: None,
                },
            },
            ..ExportConfig::default()
        }
    }
}

#[derive(Args, Debug)]
struct LoadArgs {
    #[command(flatten)]
    store: TenantStoreArgs,
    /// NDJSON files (.ndjson, .ndjson.gz, .jsonl) or folders holding them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Resources per database transaction. Larger batches touch each randomly placed index
    /// page fewer times per resource (1M: 57,000 → 64,000 resources/s from 2,000 to 5,000;
    /// 3M: 36,000 → 48,000) at the cost of memory (peak RSS 150 → 255 MiB).
    #[arg(long, default_value_t = 5000)]
    batch_size: usize,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// How many patients.
    #[arg(long, default_value_t = 100)]
    patients: u64,
    /// The seed: the same seed and patient count give byte-identical files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Address and port to listen on.
    #[arg(long, env = "BULKFHIR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the demo store lives; it is filled only when it holds no Patient.
    #[arg(long, env = "BULKFHIR_DATA_DIR", default_value = "./bulkfhir-data")]
    data_dir: PathBuf,
    /// Patients to generate.
    #[arg(long, default_value_t = 100)]
    patients: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// glibc gives each thread that allocates an arena of its own (up to eight per core) and keeps
/// freed memory in each; with the HTTP and export runtimes and their blocking pools that was a
/// third of the server's peak RSS. Two arenas, measured on the 1M bench data: peak RSS of a
/// system export 143-156 → 109-111 MiB, of a Group export 155-169 → 98-106 MiB, same speed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only changes allocator settings and is safe to call at any time; it
    // runs first thing in `main`, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    // `serve --config FILE`: the file's keys become environment variables before the command
    // line is parsed (flags > environment > file > defaults).
    // A first parse finds `--config` (or BULKFHIR_CONFIG) wherever it stands. It ignores
    // errors: the file may hold what the flags still lack (`tls-cert` for a `--tls-key`).
    let config_file =
        Cli::command().ignore_errors(true).try_get_matches().ok().and_then(|matches| {
            matches.subcommand_matches("serve")?.get_one::<PathBuf>("config").cloned()
        });
    if let Some(path) = config_file {
        // SAFETY: no other thread has started yet.
        if let Err(message) = unsafe { config::apply::<Cli>(&path) } {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Each line carries its spans' fields (an export's `job_id` among them).
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let allowed_hosts =
                args.allowed_hosts.iter().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty());
            let server = ServerConfig {
                max_body_bytes: args.max_body_bytes,
                public_base_url: args.base_url,
                allowed_hosts: allowed_hosts.collect(),
                limits: ConnectionLimits {
                    max_connections: args.max_connections.max(1),
                    header_read_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
                    body_read_timeout: Duration::from_secs(args.body_timeout_secs.max(1)),
                    ..ConnectionLimits::default()
                },
                signed_file_urls: args.export.export_urls == ExportUrls::Signed,
                tls: match (&args.tls_cert, &args.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsSettings::load(cert, key)?),
                    _ => None,
                },
                ..ServerConfig::default()
            };
            let authorization = match args.auth {
                AuthMode::Smart => Authorization::Smart,
                AuthMode::None => {
                    if !args.listen.ip().is_loopback() && !args.insecure_no_auth_on_network {
                        anyhow::bail!(
                            "refusing to serve {} with --auth none: anyone who reaches it could read, change and export every record. Use --auth smart, listen on a loopback address, or pass --insecure-no-auth-on-network if something in front of this server authorizes every request",
                            args.listen
                        );
                    }
                    tracing::warn!(listen = %args.listen, "authorization is off (--auth none): every request is allowed");
                    Authorization::Off
                }
            };
            let options = ServeOptions {
                data_dir: args.store.data_dir,
                server,
                export: {
                    let mut config = args.export.config();
                    // On PostgreSQL each part waits on round trips and the database's own reads,
                    // so twice as many parts in flight keep the cores busy (1M resources, 2
                    // cores: 137-169k resources/s with 2, 233k with 4, 219k with 8).
                    if args.store.database.is_some() && args.export.export_parallelism.is_none() {
                        config.unit_concurrency *= 2;
                    }
                    config
                },
                authorization,
                export_store: args.export.export_store.clone(),
                database: args.store.database,
            };
            serve(options, args.listen, args.metrics_listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => {
            // Bulk mode needs the store to itself: no server on this data directory. PostgreSQL
            // has no bulk mode (other nodes may be writing).
            let lock = match args.store.store.database {
                None => bulkfhir_app::try_lock_data_dir(&args.store.store.data_dir)?,
                Some(_) => None,
            };
            let store = args.store.open().await?.resources;
            let report = load(store.as_ref(), &args.paths, args.batch_size, lock.is_some()).await?;
            drop(lock);
            Ok(if report.n_rejected == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Generate(args) => {
            generate(args.patients, args.seed, &args.out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            {
                let store = open_store(&args.data_dir)?;
                let snapshot = store.snapshot().await?;
                let has_patients = !store
                    .scan(snapshot, ResourceType::PATIENT, ScanOptions::live(0, 1))
                    .await?
                    .resources
                    .is_empty();
                if has_patients {
                    tracing::info!(data_dir = %args.data_dir.display(), "the store already holds data; serving it as it is");
                } else {
                    let generated = args.data_dir.join("generated");
                    generate(args.patients, args.seed, &generated)?;
                    let lock = bulkfhir_app::try_lock_data_dir(&args.data_dir)?;
                    let batch_size = LoadOptions::default().batch_size;
                    load(store.as_ref(), &[generated], batch_size, lock.is_some()).await?;
                }
            }
            println!(
                "bulkfhir demo: FHIR API at http://{0}/fhir, authorization off (loopback only; `bulkfhir serve` is the one for networks). Try /fhir/metadata, /fhir/Patient?_count=5, \
                 or a bulk export: curl -i -H 'Accept: application/fhir+json' -H 'Prefer: respond-async' http://{0}/fhir/$export)",
                args.listen
            );
            if !args.listen.ip().is_loopback() {
                anyhow::bail!(
                    "the demo runs without authorization, so it listens on loopback addresses only (not {}); use `bulkfhir serve` to put a server on a network",
                    args.listen
                );
            }
            let options = ServeOptions {
                data_dir: args.data_dir,
                server: ServerConfig::default(),
                export: ExportConfig::default(),
                authorization: Authorization::Off,
                export_store: None,
                database: None,
            };
            serve(options, args.listen, None).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Pull(args) => pull::run(*args).await,
        Command::Client(command) => match command {
            ClientCommand::Add { name, jwks, jwks_url, scope, store } => {
                let keys = match (&jwks, &jwks_url) {
                    (Some(path), _) => clients::KeySource::File(path),
                    (None, Some(url)) => clients::KeySource::Url(url),
                    (None, None) => anyhow::bail!("give --jwks FILE or --jwks-url URL"),
                };
                clients::add(store.open().await?.clients.as_ref(), &name, keys, &scope).await?;
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::List { store } => {
                clients::list(store.open().await?.clients.as_ref()).await
            }
            ClientCommand::Remove { id, store } => {
                clients::remove(store.open().await?.clients.as_ref(), &id).await
            }
            ClientCommand::Keygen { out, alg } => clients::keygen(&out, alg),
            ClientCommand::Token { base_url, client_id, key, kid, scope } => {
                let request = clients::TokenRequest {
                    base_url: &base_url,
                    client_id: &client_id,
                    key: &key,
                    kid: kid.as_deref(),
                    scope: &scope,
                };
                println!("{}", clients::token(&request).await?);
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Tenant(command) => match command {
            TenantCommand::Add { name, store } => {
                let tenant = TenantName::parse(&name)?;
                if store.tenants().add(&tenant).await? {
                    println!("tenant {tenant} added: its FHIR base is [server]/fhir/t/{tenant}");
                } else {
                    println!("tenant {tenant} exists already");
                }
                Ok(ExitCode::SUCCESS)
            }
            TenantCommand::List { store } => {
                for tenant in store.tenants().list().await? {
                    println!("{tenant}");
                }
                Ok(ExitCode::SUCCESS)
            }
            TenantCommand::Remove { name, force, export_store, s3_endpoint, store } => {
                let tenant = TenantName::parse(&name)?;
                let cloud =
                    bulkfhir_output::CloudOptions { s3_endpoint, gcs_service_account: None };
                let files =
                    store.tenants().remove(&tenant, force, export_store.as_deref(), &cloud).await?;
                println!("tenant {tenant} removed, with {files} export file(s)");
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Config(ConfigCommand::Check { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            match config::check::<Cli>(&text) {
                Ok(settings) => {
                    println!(
                        "{}: {} setting(s), all valid",
                        file.display(),
                        settings.variables.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for problem in problems {
                        println!("{}:{}: {}", file.display(), problem.line, problem.message);
                    }
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}

fn open_store(data_dir: &Path) -> anyhow::Result<Arc<dyn ResourceStore>> {
    let store = EmbeddedStore::open(data_dir)
        .with_context(|| format!("open the store in {}", data_dir.display()))?;
    Ok(Arc::new(store))
}

async fn serve(
    options: ServeOptions,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut app = App::open(options).await?;
    if let Some(address) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listen for metrics on {address}"))?;
        tracing::info!(%address, "serving /metrics");
        app = app.with_metrics_listener(listener);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    app.serve(listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn load(
    store: &dyn ResourceStore,
    paths: &[PathBuf],
    batch_size: usize,
    exclusive: bool,
) -> anyhow::Result<LoadReport> {
    let files = collect_files(paths)?;
    let total_bytes: u64 = files
        .iter()
        .filter(|f| f.extension().is_none_or(|e| e != "gz"))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::new(total_bytes.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = WallClock::now();
    let progress_bar = bar.clone();
    let progress = move |p: LoadProgress| {
        progress_bar.set_position(p.bytes);
        progress_bar.set_message(format!("{} resources", p.loaded));
    };
    let options = LoadOptions { batch_size, exclusive, ..LoadOptions::default() };
    let report = load_files(store, files, options, &progress).await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "loaded {} resources from {} files ({:.1} MB) in {:.2} s: {:.0} resources/s",
        report.loaded,
        report.files,
        report.bytes as f64 / 1e6,
        seconds,
        report.loaded as f64 / seconds.max(1e-9)
    );
    if report.n_rejected > 0 {
        eprintln!("rejected {} lines:", report.n_rejected);
        for rejection in &report.rejections {
            eprintln!("  {}:{}: {}", rejection.file.display(), rejection.line, rejection.reason);
        }
        if report.n_rejected > report.rejections.len() as u64 {
            eprintln!("  … and {} more", report.n_rejected - report.rejections.len() as u64);
        }
    }
    Ok(report)
}

fn generate(patients: u64, seed: u64, out: &Path) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = WallClock::now();
    let stats = generate_to_dir(&GenerateOptions { patients, seed }, out, &mut |n| {
        bar.set_message(format!("{n} resources"));
    })
    .with_context(|| format!("generate into {}", out.display()))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "generated {} resources ({:.1} MB) for {patients} patients into {} in {:.2} s: {:.0} resources/s",
        stats.resources,
        stats.bytes as f64 / 1e6,
        out.display(),
        seconds,
        stats.resources as f64 / seconds.max(1e-9)
    );
    Ok(())
}
