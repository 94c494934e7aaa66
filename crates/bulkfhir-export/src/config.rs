use std::time::Duration;

/// Export settings.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// A file is closed after this many resources.
    pub max_resources_per_file: u64,
    /// A file is closed once it holds this many (uncompressed) bytes.
    pub max_bytes_per_file: u64,
    /// Resources read from the store per page.
    pub page_size: usize,
    /// Units of one job that run at once.
    pub unit_concurrency: usize,
    /// Jobs that run at once on this node; 0 makes a node that accepts and serves exports but
    /// runs none (another runner sharing the job store does).
    pub max_running_jobs: usize,
    /// Jobs that may be accepted or running at once; beyond it a kick-off gets 429.
    pub max_active_jobs: usize,
    /// How long a claimed job stays leased without a heartbeat.
    pub lease: Duration,
    /// How often an idle runner looks for work.
    pub poll_interval: Duration,
    /// On shutdown, how long running units may take to reach their next checkpoint (the end of
    /// the file they write) before they are stopped where they are.
    pub shutdown_grace: Duration,
    /// How long finished files are kept.
    pub retention: Duration,
    /// How often the sweeper runs.
    pub sweep_interval: Duration,
    /// gzip level for `.ndjson.gz` output (1 is fastest).
    pub gzip_level: u32,
    /// The `Retry-After` a client is told when the queue is full; polls faster than half of it
    /// (or of what a status answer told, when that is less) get 429.
    pub retry_after: Duration,
    /// The longest `Retry-After` a status answer gives. While an export runs it says the
    /// expected remaining time (at least 1 s, the header's unit), at most this.
    pub max_retry_after: Duration,
    /// Files listed per partial-manifest page (`allowPartialManifests`).
    pub files_per_manifest_page: usize,
    /// A type whose versions span more than this many sequence numbers is exported as several
    /// key ranges at once (system level), so one large type can use every core.
    pub key_range_span: u64,
    /// The longest a signed download URL is valid (it never outlives the export's files, and
    /// S3 allows at most 7 days).
    pub max_signed_url: Duration,
    /// The destinations a kick-off may name (`destination`), besides the server's own store.
    pub destinations: bulkfhir_output::DestinationPolicy,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            max_resources_per_file: 100_000,
            max_bytes_per_file: 256 * 1024 * 1024,
            page_size: 1000,
            unit_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_running_jobs: 2,
            max_active_jobs: 32,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            gzip_level: 1,
            retry_after: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(30),
            files_per_manifest_page: 500,
            key_range_span: 50_000,
            max_signed_url: Duration::from_secs(7 * 24 * 3600),
            destinations: bulkfhir_output::DestinationPolicy::default(),
        }
    }
}
