//! Durable export jobs: the [`JobStore`] seam.
//!
//! A job's request, plan, unit checkpoints and manifest are JSON written and read by the export
//! engine; the store keeps them durable and arbitrates who runs what through leases. Backends
//! never interpret the JSON.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use bulkfhir_model::Instant;

use crate::{Snapshot, StoreError};

/// A job id: a UUID (v7, so ids sort by creation time).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

impl JobId {
    /// A fresh id.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7().to_string())
    }

    /// Parses an id taken from a URL; anything but a UUID is refused.
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::try_parse(text).ok().map(|uuid| JobId(uuid.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The job state machine: `accepted → in-progress → completed | error`, and `cancelled` from
/// any state before the end. The names are the BulkDataExport status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Queued, not yet claimed by a runner.
    Accepted,
    /// Claimed by a runner at least once.
    InProgress,
    /// Finished; the manifest is set.
    Completed,
    /// Failed; the error message is set.
    Error,
    /// Cancelled by the client.
    Cancelled,
}

impl JobStatus {
    /// The status code.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Accepted => "accepted",
            JobStatus::InProgress => "in-progress",
            JobStatus::Completed => "completed",
            JobStatus::Error => "error",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Reads a status code.
    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "accepted" => JobStatus::Accepted,
            "in-progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            "error" => JobStatus::Error,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// True for `accepted` and `in-progress`.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Accepted | JobStatus::InProgress)
    }
}

/// A job as kicked off.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id.
    pub id: JobId,
    /// The authenticated client that asked, if any.
    pub requester: Option<String>,
    /// The engine's request JSON (parameters, kick-off URL, base URL).
    pub request: String,
    /// The engine's plan JSON (units, members): planned at kick-off.
    pub plan: String,
    /// One spec JSON per work unit, in unit order.
    pub units: Vec<String>,
    /// When the kick-off arrived.
    pub request_time: Instant,
    /// The snapshot the export reads (its time is the manifest's `transactionTime`).
    pub snapshot: Snapshot,
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its state.
    pub status: JobStatus,
    /// The requesting client.
    pub requester: Option<String>,
    /// Request JSON.
    pub request: String,
    /// Plan JSON.
    pub plan: String,
    /// When the kick-off arrived.
    pub request_time: Instant,
    /// The export's snapshot.
    pub snapshot: Snapshot,
    /// Progress, 0 to 100.
    pub progress_percent: u8,
    /// A short phase text for `X-Progress`.
    pub progress_text: String,
    /// Manifest JSON once completed.
    pub manifest: Option<String>,
    /// Why it failed, once failed.
    pub error_message: Option<String>,
    /// When it completed, failed or was cancelled.
    pub finished_at: Option<Instant>,
    /// When its files expire (completed jobs).
    pub expires_at: Option<Instant>,
    /// True once its files were removed (expiry or cancellation).
    pub files_deleted: bool,
    /// The runner holding the lease, if any.
    pub lease_owner: Option<String>,
    /// Set only in what [`JobStore::claim`] returns: the runner whose lease (expired, or of an
    /// earlier run of this node) the claim took over; `None` for a job nobody held.
    pub taken_over_from: Option<String>,
}

/// One work unit of a job.
#[derive(Debug, Clone)]
pub struct UnitRecord {
    /// Its position in the plan.
    pub index: u32,
    /// Spec JSON.
    pub spec: String,
    /// Last checkpoint JSON (None before the first).
    pub checkpoint: Option<String>,
    /// True once the unit finished.
    pub done: bool,
    /// The runner that holds (or, once done, held) the unit's lease.
    pub lease_owner: Option<String>,
    /// When that lease ends.
    pub lease_expires: Option<Instant>,
}

/// What to search for among jobs.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub status: Option<JobStatus>,
    /// Only jobs of this requester.
    pub requester: Option<String>,
    /// At most this many (newest first).
    pub limit: usize,
}

/// Durable jobs with leases.
///
/// # Contract
/// - **Leases.** [`claim`](Self::claim) hands an active job to one runner (its coordinator)
///   until its lease expires; [`renew`](Self::renew) extends it. The coordinator's writes about
///   the job (`set_progress`, `complete`, `fail`) are *fenced*: they succeed only while that
///   runner holds the job's lease and the job is active, and fail with `StoreError::LeaseLost`
///   otherwise (another runner took over, or the client cancelled). A runner that sees
///   `LeaseLost` must stop working on the job at once.
/// - **Unit leases.** The units of an in-progress job are run by any runner, on any node, that
///   leases them with [`lease_unit`](Self::lease_unit): one runner per unit at a time, until the
///   lease expires ([`renew_unit`](Self::renew_unit) extends it). A unit's
///   [`checkpoint`](Self::checkpoint) is fenced by the unit's lease and the job being in
///   progress, so a unit's files and checkpoints come from one runner at a time, and a unit
///   whose runner died is resumed by another from its last checkpoint.
/// - **Queue limit.** [`create`](Self::create) refuses with `StoreError::TooManyJobs` when
///   `max_active` jobs are already accepted or in progress; the check and the insert are atomic.
/// - **Cancel** makes the job `cancelled` at once, whoever holds the lease; `get` still returns
///   it (the engine answers 404 for cancelled jobs).
/// - Times are passed in (`now`), so leases can be tested without waiting.
#[async_trait]
pub trait JobStore: Send + Sync + fmt::Debug {
    /// Wake-ups for a runner when another node, sharing this store, may have made work for it:
    /// a job created, or claimed (its units can then be helped with), or a unit released. Each
    /// message is only a hint to look now rather than at the next poll; a runner still polls,
    /// and a missed or coalesced message costs only that wait. `None` (the default) when no
    /// other node writes to the store: the runner's own wake-ups suffice.
    fn work_signals(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        None
    }

    /// Stores a new `accepted` job with its units.
    async fn create(&self, job: NewJob, max_active: usize) -> Result<(), StoreError>;

    /// One job (`NotFound` if unknown).
    async fn get(&self, id: &JobId) -> Result<JobRecord, StoreError>;

    /// How many jobs are in each state (states with none are left out).
    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError>;

    /// Jobs matching `query`, newest first.
    async fn search(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError>;

    /// Takes the oldest active job whose lease is free or expired (or held by a previous run of
    /// `owner`'s node, `reclaim_prefix`), marks it `in-progress`, and leases it to `owner`.
    async fn claim(
        &self,
        owner: &str,
        reclaim_prefix: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<Option<JobRecord>, StoreError>;

    /// Extends `owner`'s lease (fenced).
    async fn renew(
        &self,
        id: &JobId,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<(), StoreError>;

    /// Gives the lease up (shutdown) so another runner can take the job at once.
    async fn release(&self, id: &JobId, owner: &str) -> Result<(), StoreError>;

    /// The job's units, in order.
    async fn units(&self, id: &JobId) -> Result<Vec<UnitRecord>, StoreError>;

    /// Leases unit `unit` of job `id` to `owner` until `now + lease`, if the job is in
    /// progress, the unit is not done, and its lease is free, expired, already `owner`'s, or
    /// held by an earlier run of `owner`'s node (`reclaim_prefix`). Whether it was leased.
    async fn lease_unit(
        &self,
        id: &JobId,
        unit: u32,
        owner: &str,
        reclaim_prefix: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<bool, StoreError>;

    /// Extends `owner`'s lease of a unit (fenced: `LeaseLost` unless `owner` holds it and the
    /// job is in progress).
    async fn renew_unit(
        &self,
        id: &JobId,
        unit: u32,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<(), StoreError>;

    /// Gives a unit's lease up (shutdown), so another runner can take it at once.
    async fn release_unit(&self, id: &JobId, unit: u32, owner: &str) -> Result<(), StoreError>;

    /// Records a unit's checkpoint and progress (fenced by the unit's lease: `owner` must hold
    /// it and the job be in progress).
    async fn checkpoint(
        &self,
        id: &JobId,
        owner: &str,
        unit: u32,
        checkpoint: &str,
        done: bool,
    ) -> Result<(), StoreError>;

    /// Records progress (fenced).
    async fn set_progress(
        &self,
        id: &JobId,
        owner: &str,
        percent: u8,
        text: &str,
    ) -> Result<(), StoreError>;

    /// Marks the job completed with its manifest (fenced); it expires at `expires_at`.
    async fn complete(
        &self,
        id: &JobId,
        owner: &str,
        manifest: &str,
        now: Instant,
        expires_at: Instant,
    ) -> Result<(), StoreError>;

    /// Marks the job failed (fenced).
    async fn fail(
        &self,
        id: &JobId,
        owner: &str,
        message: &str,
        now: Instant,
    ) -> Result<(), StoreError>;

    /// Cancels an active or completed job (`NotFound` if unknown or already cancelled).
    async fn cancel(&self, id: &JobId, now: Instant) -> Result<JobRecord, StoreError>;

    /// Jobs whose files should go: completed and expired before `now`, or cancelled or failed,
    /// with files not yet deleted.
    async fn files_to_delete(&self, now: Instant, limit: usize) -> Result<Vec<JobId>, StoreError>;

    /// Records that a job's files are gone.
    async fn mark_files_deleted(&self, id: &JobId) -> Result<(), StoreError>;

    /// The frozen partial-manifest pages of a job, in order (page 1 first).
    async fn manifest_pages(&self, id: &JobId) -> Result<Vec<String>, StoreError>;

    /// Freezes page `page` (from 1) of a job's partial manifests unless it exists already;
    /// returns the pages after the call. Pages never change once written, so concurrent
    /// pollers agree on them.
    async fn freeze_manifest_page(
        &self,
        id: &JobId,
        page: u32,
        page_json: &str,
    ) -> Result<Vec<String>, StoreError>;
}
