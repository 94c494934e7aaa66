//! [`ExportService`]: what the HTTP edge calls.

use std::{
    collections::HashMap,
    ops::Range,
    sync::{Arc, Mutex},
    time::Duration,
};

use bulkfhir_model::{
    Instant, ResourceType,
    elements::ElementSelection,
    export::{ExportLevel, ExportRequest, OutputFormat},
    search::SearchQuery,
    tabular::TabularFormat,
    view::ViewDefinition,
};
use bulkfhir_output::{Compression, OutputError, OutputKey, OutputStore};
use bulkfhir_store::{
    JobId, JobQuery, JobRecord, JobStatus, JobStore, NewJob, ResourceStore, Snapshot, StoreError,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    ExportBound, ExportConfig, ExportError, FileKind, JobAccess, Runner, Sweeper,
    docs::{FileEntry, ManifestDoc, StoredRequest, StoredView},
    error::corrupt,
    plan::plan,
};

/// State shared by the service, the runner and the sweeper.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn ResourceStore>,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) output: OutputStore,
    pub(crate) config: ExportConfig,
    /// Destinations named by kick-offs, opened once each.
    opened: Mutex<HashMap<String, OutputStore>>,
    /// Jobs running in this process: the token that stops each, and its live counters.
    running: Mutex<HashMap<JobId, (CancellationToken, Arc<Live>)>>,
    pub(crate) wake: Notify,
    /// When the runner's loop last went round (µs since the epoch; 0 before it started, or
    /// after it stopped), for readiness.
    pub(crate) runner_tick: std::sync::atomic::AtomicI64,
    /// Set once the runner is shutting down: kick-offs are refused (503), units stop at their
    /// next checkpoint.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

/// A running job's counters, updated by its units.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) written: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) units_done: std::sync::atomic::AtomicUsize,
    pub(crate) units_total: std::sync::atomic::AtomicUsize,
    /// `(µs since the epoch, resources written)` once a second, the last [`LIVE_SAMPLES`].
    samples: Mutex<std::collections::VecDeque<(i64, u64)>>,
}

/// How many once-a-second samples of a running job are kept (two minutes).
pub const LIVE_SAMPLES: usize = 120;

/// A progress percentage from units done: never 100 before the job has completed.
pub(crate) fn units_percent(done: usize, total: usize) -> u8 {
    u8::try_from((done * 100 / total.max(1)).min(99)).unwrap_or(99)
}

impl Live {
    /// Samples `written` once a second, for ever (the caller drops it with the job).
    pub(crate) async fn sample_every_second(&self) {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let sample = (
                Instant::now().as_micros(),
                self.written.load(std::sync::atomic::Ordering::Relaxed),
            );
            let mut samples =
                self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if samples.len() == LIVE_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }
}

/// Where a job running in this process is, now (its stored progress lags by a heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveProgress {
    /// Once-a-second samples of `(time, resources written)`, oldest first (at most
    /// [`LIVE_SAMPLES`]).
    pub samples: Vec<(Instant, u64)>,
    /// Resources written by this run of the job.
    pub resources: u64,
    /// Units (types, key ranges, member batches) finished, including earlier runs'.
    pub units_done: usize,
    /// Units in the plan.
    pub units_total: usize,
}

impl LiveProgress {
    /// Percent of the units done (at most 99 while it runs).
    pub fn percent(&self) -> u8 {
        units_percent(self.units_done, self.units_total)
    }
}

impl Shared {
    pub(crate) fn register(&self, id: &JobId, token: CancellationToken, live: Arc<Live>) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), (token, live));
    }

    /// Stops every job running in this process at its next page.
    pub(crate) fn stop_all(&self) {
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (token, _) in running.values() {
            token.cancel();
        }
    }

    pub(crate) fn unregister(&self, id: &JobId) {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    fn running_token(&self, id: &JobId) -> Option<CancellationToken> {
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.get(id).map(|(token, _)| token.clone())
    }

    pub(crate) fn is_running(&self, id: &JobId) -> bool {
        self.running_token(id).is_some()
    }

    /// Where a job's files are: its own destination, or the server's store.
    pub(crate) fn output_for(&self, destination: Option<&str>) -> Result<OutputStore, ExportError> {
        let Some(url) = destination else { return Ok(self.output.clone()) };
        let mut opened = self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(output) = opened.get(url) {
            return Ok(output.clone());
        }
        // Checked again: the allow-list may have shrunk since the kick-off.
        let destinations = &self.config.destinations;
        let output = destinations.check(url)?.open(&destinations.options)?;
        opened.insert(url.to_owned(), output.clone());
        Ok(output)
    }

    /// The output store of job `id`.
    pub(crate) async fn output_of(&self, id: &JobId) -> Result<OutputStore, ExportError> {
        let record = self.jobs.get(id).await?;
        let request: StoredRequest = serde_json::from_str(&record.request).map_err(corrupt)?;
        self.output_for(request.destination.as_deref())
    }

    pub(crate) fn job_prefix(&self, id: &JobId) -> Result<OutputKey, ExportError> {
        Ok(OutputKey::parse(&format!("jobs/{id}"))?)
    }

    /// Deletes a job's files and records it; failures are logged (the sweeper retries).
    pub(crate) async fn delete_files(&self, id: &JobId) {
        let result = async {
            let output = self.output_of(id).await?;
            let deleted = output.delete_prefix(&self.job_prefix(id)?).await?;
            self.jobs.mark_files_deleted(id).await?;
            Ok::<u64, ExportError>(deleted)
        }
        .await;
        match result {
            Ok(n) => info!(job_id = %id, files = n, "deleted export files"),
            Err(error) => {
                warn!(job_id = %id, error = %error, "failed to delete export files; will retry")
            }
        }
    }
}

/// The state of a job as a client polling its status sees it.
#[derive(Debug)]
pub enum StatusView {
    /// Accepted or running.
    InProgress {
        /// 0-99.
        percent: u8,
        /// A short phase text.
        text: String,
        /// When to poll again: the expected remaining time, within bounds.
        retry_after: Duration,
    },
    /// Finished.
    Completed {
        /// The manifest.
        manifest: Box<ManifestDoc>,
        /// The kick-off's request document (base URL for file links).
        request: Box<StoredRequest>,
        /// When the files expire.
        expires_at: Option<Instant>,
    },
    /// Failed.
    Failed {
        /// Why.
        message: String,
    },
    /// One page of a partial manifest (`allowPartialManifests`): files finished so far that no
    /// earlier page lists. A page never changes, except that `next` appears once the following
    /// page exists.
    Partial {
        /// The page (its `files` are this page's).
        page: Box<ManifestDoc>,
        /// The kick-off's request document.
        request: Box<StoredRequest>,
        /// The next page's number, when there is one.
        next: Option<u32>,
        /// True once the export is complete (no more pages will appear after the last).
        complete: bool,
        /// Progress, while running.
        percent: u8,
        /// Phase text, while running.
        text: String,
        /// When to poll again, while running.
        retry_after: Duration,
        /// When the files expire (completed jobs).
        expires_at: Option<Instant>,
    },
    /// Finished, and the files have expired.
    Expired {
        /// When.
        at: Option<Instant>,
    },
}

/// A job with its documents, for the job resource API.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The stored record.
    pub record: JobRecord,
    /// Its request.
    pub request: StoredRequest,
    /// Its manifest, once completed.
    pub manifest: Option<ManifestDoc>,
}

/// A file ready to stream.
pub struct FileDownload {
    /// The bytes, as stored.
    pub body: BoxStream<'static, Result<Bytes, OutputError>>,
    /// The stored object's size.
    pub total_size: u64,
    /// True when the stored file is gzip-compressed.
    pub gzip: bool,
    /// The resource type of an output or deleted file of one type (`None` for error files and
    /// files that mix types), so that the edge can check the caller may still read it.
    pub resource_type: Option<String>,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDownload")
            .field("total_size", &self.total_size)
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// How a kick-off arrived, beside its parameters.
#[derive(Debug, Clone, Default)]
pub struct KickoffContext {
    /// `Prefer: handling=lenient`.
    pub lenient: bool,
    /// `Prefer: separate-export-status` (v3).
    pub separate_status: bool,
    /// The kick-off URL exactly as received.
    pub request_url: String,
    /// The FHIR base URL.
    pub base_url: String,
    /// The authenticated client, if any: the job's owner.
    pub requester: Option<String>,
    /// What the client may export ([`ExportBound::everything`] without authorization).
    pub bound: ExportBound,
}

/// The views of a `$viewdefinition-export`: the files hold their rows instead of resources.
#[derive(Debug, Clone)]
pub struct ViewExport {
    /// (output name, ViewDefinition resource), in request order.
    pub views: Vec<(String, serde_json::Value)>,
    /// CSV or NDJSON.
    pub format: TabularFormat,
    /// The client's `clientTrackingId`, echoed in the result.
    pub client_tracking_id: Option<String>,
}

/// A status answer: the job's state and how the client asked to receive it.
#[derive(Debug)]
pub struct StatusReport {
    /// The state.
    pub view: StatusView,
    /// Answer with 200 and `X-Export-Status` (v3 `separate-export-status`).
    pub separate_status: bool,
}

/// The export service.
#[derive(Debug, Clone)]
pub struct ExportService {
    shared: Arc<Shared>,
}

impl ExportService {
    /// Whether this process's runner is running and went round its loop recently (it goes round
    /// at least every `poll_interval`).
    pub fn runner_alive(&self) -> bool {
        let tick = self.shared.runner_tick.load(std::sync::atomic::Ordering::Relaxed);
        let window = i64::try_from(self.shared.config.poll_interval.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_mul(3)
            .max(5_000_000);
        tick > 0 && Instant::now().as_micros().saturating_sub(tick) <= window
    }

    /// Writes, reads back and deletes a small object in the output store: whether export files
    /// can be written now.
    pub async fn probe_output(&self) -> Result<(), ExportError> {
        // A key of its own per probe: concurrent probes must not delete each other's upload.
        let prefix = OutputKey::parse(&format!("health/{}", uuid::Uuid::new_v4()))?;
        let key = prefix.join("probe")?;
        let mut writer = self.shared.output.create(&key, Compression::None).await?;
        writer.write(b"ok\n").await?;
        writer.finish().await?;
        let size = self.shared.output.size(&key).await?;
        self.shared.output.delete_prefix(&prefix).await?;
        if size == 3 {
            Ok(())
        } else {
            Err(ExportError::Corrupt(format!("the output probe read back {size} bytes, not 3")))
        }
    }

    /// The live counters of a job running in this process.
    pub fn live_progress(&self, id: &JobId) -> Option<LiveProgress> {
        use std::sync::atomic::Ordering::Relaxed;
        let running = self.shared.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.get(id).map(|(_, l)| LiveProgress {
            samples: l
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(t, n)| (Instant::from_micros(*t), *n))
                .collect(),
            resources: l.written.load(Relaxed),
            units_done: l.units_done.load(Relaxed),
            units_total: l.units_total.load(Relaxed),
        })
    }

    /// How many jobs are in each state, for metrics.
    pub async fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>, ExportError> {
        Ok(self.shared.jobs.count_by_status().await?)
    }

    /// A service over these backends.
    pub fn new(
        store: Arc<dyn ResourceStore>,
        jobs: Arc<dyn JobStore>,
        output: OutputStore,
        config: ExportConfig,
    ) -> Self {
        ExportService {
            shared: Arc::new(Shared {
                store,
                jobs,
                output,
                config,
                opened: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                runner_tick: std::sync::atomic::AtomicI64::new(0),
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// A runner for this node; `node_id` must be stable across restarts of the same node and
    /// unique among nodes sharing the job store.
    pub fn runner(&self, node_id: &str) -> Runner {
        Runner::new(Arc::clone(&self.shared), node_id)
    }

    /// The file sweeper.
    pub fn sweeper(&self) -> Sweeper {
        Sweeper::new(Arc::clone(&self.shared))
    }

    /// Settings.
    pub fn config(&self) -> &ExportConfig {
        &self.shared.config
    }

    /// Accepts an export: takes the snapshot (its time is `transactionTime`), plans the work, and
    /// queues the job.
    ///
    /// With `_until` in the past, the export reads the store as of `_until` instead: every
    /// resource in the version current at that instant, and `transactionTime` is `_until`.
    pub async fn kickoff(
        &self,
        request: ExportRequest,
        context: KickoffContext,
    ) -> Result<JobId, ExportError> {
        self.kickoff_with(request, None, context).await
    }

    /// Starts a `$viewdefinition-export`: the export of `request` (level, `patient`, `_since`)
    /// with the rows of `views` in its files. Every view is checked here; an invalid one is
    /// refused before any job exists.
    pub async fn kickoff_views(
        &self,
        request: ExportRequest,
        views: ViewExport,
        context: KickoffContext,
    ) -> Result<JobId, ExportError> {
        self.kickoff_with(request, Some(views), context).await
    }

    async fn kickoff_with(
        &self,
        mut request: ExportRequest,
        views: Option<ViewExport>,
        context: KickoffContext,
    ) -> Result<JobId, ExportError> {
        let view_types = match &views {
            Some(views) => {
                let types = check_views(views)?;
                let mut distinct: Vec<ResourceType> = Vec::new();
                for t in &types {
                    if !distinct.contains(t) {
                        distinct.push(*t);
                    }
                }
                request.types = Some(distinct);
                types
            }
            None => Vec::new(),
        };
        check_parameters(&mut request, context.lenient)?;
        apply_bound(&mut request, &context.bound, context.lenient)?;
        if let Some(destination) = &request.destination {
            // Refused before any job exists, and before any request to the destination.
            self.shared
                .config
                .destinations
                .check(destination)
                .map_err(|e| ExportError::invalid(e.to_string(), Some("destination")))?;
        }
        let started = std::time::Instant::now();
        let shared = &self.shared;
        if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ExportError::ShuttingDown);
        }
        let mut snapshot = shared.store.snapshot().await?;
        if let Some(until) = request.until
            && until < snapshot.time
        {
            snapshot = Snapshot { seq: shared.store.seq_at(until).await?, time: until };
        }
        let snapshot_taken = started.elapsed();
        let (mut plan, mut units) = plan(
            shared.store.as_ref(),
            &request,
            snapshot,
            shared.config.key_range_span,
            context.lenient,
        )
        .await?;
        if views.is_some() {
            units = crate::plan::for_views(units, &view_types);
            plan.supporting = None;
        }
        let planned = started.elapsed();
        let (level, group_id) = match &request.level {
            ExportLevel::System => ("system", None),
            ExportLevel::Patient => ("patient", None),
            ExportLevel::Group(id) => ("group", Some(id.to_string())),
        };
        let stored = StoredRequest {
            level: level.to_owned(),
            group_id,
            gzip: request.output_format == OutputFormat::NdjsonGzip,
            since: request.since.map(Instant::to_fhir),
            types: request
                .types
                .as_ref()
                .map(|t| t.iter().map(|t| t.as_str().to_owned()).collect()),
            patients: request.patients.iter().map(|p| p.to_string()).collect(),
            request_url: context.request_url,
            base_url: context.base_url,
            until: request.until.map(Instant::to_fhir),
            separate_status: context.separate_status,
            partial_manifests: request.allow_partial_manifests,
            elements: request.elements.clone(),
            type_filters: request.type_filters.clone(),
            organize_output_by: request.organize_output_by.clone(),
            scope_filters: context.bound.required.clone(),
            destination: request.destination.clone(),
            views: views
                .as_ref()
                .map(|v| {
                    v.views
                        .iter()
                        .map(|(name, view)| StoredView { name: name.clone(), view: view.clone() })
                        .collect()
                })
                .unwrap_or_default(),
            view_format: views.as_ref().map(|v| v.format.code().to_owned()),
            client_tracking_id: views.as_ref().and_then(|v| v.client_tracking_id.clone()),
        };
        let id = JobId::new();
        let job = NewJob {
            id: id.clone(),
            requester: context.requester,
            request: serde_json::to_string(&stored).map_err(corrupt)?,
            plan: serde_json::to_string(&plan).map_err(corrupt)?,
            units: units
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()
                .map_err(corrupt)?,
            request_time: Instant::now(),
            snapshot,
        };
        let n_units = job.units.len();
        shared.jobs.create(job, shared.config.max_active_jobs).await?;
        info!(job_id = %id, level, units = n_units, transaction_time = %snapshot.time, "export accepted");
        debug!(
            job_id = %id,
            snapshot_ms = snapshot_taken.as_secs_f64() * 1e3,
            plan_ms = (planned - snapshot_taken).as_secs_f64() * 1e3,
            queue_ms = (started.elapsed() - planned).as_secs_f64() * 1e3,
            "kick-off timings"
        );
        shared.wake.notify_one();
        Ok(id)
    }

    /// What a status poll answers; `page` is a partial-manifest page number (from 1).
    pub async fn status(
        &self,
        id: &JobId,
        page: Option<u32>,
        access: &JobAccess,
    ) -> Result<StatusReport, ExportError> {
        let record = self.record(id, access).await?;
        let request: StoredRequest = serde_json::from_str(&record.request).map_err(corrupt)?;
        let separate_status = request.separate_status;
        if page.is_some() && !request.partial_manifests {
            return Err(ExportError::NotFound(format!("export {id} has no manifest pages")));
        }
        let partial_state = matches!(record.status, JobStatus::Accepted | JobStatus::InProgress)
            || (record.status == JobStatus::Completed && !record.files_deleted);
        if request.partial_manifests && partial_state {
            let view = self.partial(record, request, page.unwrap_or(1)).await?;
            return Ok(StatusReport { view, separate_status });
        }
        let view = match record.status {
            JobStatus::Cancelled => return Err(not_found(id)),
            JobStatus::Accepted => StatusView::InProgress {
                percent: 0,
                text: "queued".to_owned(),
                retry_after: self.retry_after(&record),
            },
            JobStatus::InProgress => StatusView::InProgress {
                percent: record.progress_percent,
                retry_after: self.retry_after(&record),
                text: record.progress_text,
            },
            JobStatus::Error => StatusView::Failed {
                message: record.error_message.unwrap_or_else(|| "the export failed".to_owned()),
            },
            JobStatus::Completed if record.files_deleted => {
                StatusView::Expired { at: record.expires_at }
            }
            JobStatus::Completed => {
                let view = self.view(record)?;
                let manifest = view
                    .manifest
                    .ok_or_else(|| ExportError::Corrupt("completed job without manifest".into()))?;
                StatusView::Completed {
                    manifest: Box::new(manifest),
                    request: Box::new(view.request),
                    expires_at: view.record.expires_at,
                }
            }
        };
        Ok(StatusReport { view, separate_status })
    }

    /// Page `page_no` of a partial manifest, freezing new pages as files become available.
    async fn partial(
        &self,
        record: JobRecord,
        request: StoredRequest,
        page_no: u32,
    ) -> Result<StatusView, ExportError> {
        let jobs = &self.shared.jobs;
        let complete = record.status == JobStatus::Completed;
        let available: Vec<FileEntry> = if complete {
            let view = self.view(record.clone())?;
            view.manifest.map(|m| m.files).unwrap_or_default()
        } else {
            let mut files = Vec::new();
            for unit in jobs.units(&record.id).await? {
                if let Some(json) = unit.checkpoint {
                    let checkpoint: crate::docs::Checkpoint =
                        serde_json::from_str(&json).map_err(corrupt)?;
                    files.extend(checkpoint.files);
                }
            }
            files
        };
        let parse = |pages: Vec<String>| -> Result<Vec<Vec<FileEntry>>, ExportError> {
            pages.iter().map(|p| serde_json::from_str(p).map_err(corrupt)).collect()
        };
        let mut pages = parse(jobs.manifest_pages(&record.id).await?)?;
        let fresh = |pages: &[Vec<FileEntry>]| -> Vec<FileEntry> {
            let listed: std::collections::HashSet<&str> =
                pages.iter().flatten().map(|f| f.name.as_str()).collect();
            available
                .iter()
                .filter(|f| !listed.contains(f.name.as_str()))
                .take(self.shared.config.files_per_manifest_page.max(1))
                .cloned()
                .collect()
        };
        let index = usize::try_from(page_no).unwrap_or(usize::MAX).saturating_sub(1);
        // Freeze pages up to the one asked for, and the one after it, when files allow.
        while pages.len() <= index + 1 {
            let next_files = fresh(&pages);
            let first_page_of_empty_export = pages.is_empty() && complete;
            if next_files.is_empty() && !first_page_of_empty_export {
                break;
            }
            let number = u32::try_from(pages.len() + 1).unwrap_or(u32::MAX);
            let json = serde_json::to_string(&next_files).map_err(corrupt)?;
            pages = parse(jobs.freeze_manifest_page(&record.id, number, &json).await?)?;
        }
        let Some(files) = pages.get(index).cloned() else {
            if index == 0 && !complete {
                // Nothing finished yet: a plain progress answer.
                return Ok(StatusView::InProgress {
                    percent: record.progress_percent,
                    retry_after: self.retry_after(&record),
                    text: record.progress_text,
                });
            }
            return Err(ExportError::NotFound(format!(
                "export {} has no manifest page {page_no}",
                record.id
            )));
        };
        let next = (pages.len() > index + 1).then(|| page_no.saturating_add(1));
        let page = ManifestDoc {
            transaction_time: record.snapshot.time.to_fhir(),
            request: request.request_url.clone(),
            requires_access_token: false,
            files,
            organized_by: request.organize_output_by.clone(),
        };
        Ok(StatusView::Partial {
            page: Box::new(page),
            request: Box::new(request),
            next,
            complete,
            retry_after: self.retry_after(&record),
            percent: record.progress_percent,
            text: record.progress_text,
            expires_at: record.expires_at,
        })
    }

    /// When a client should poll a running export again: its expected remaining time. The
    /// share done is the live unit count when this process runs the job, else the stored
    /// percent; the time so far is counted from the kick-off. With nothing done yet the answer
    /// is the time so far (so polls back off while a job waits), and it is always between 1 s
    /// (the header's unit) and [`ExportConfig::max_retry_after`]. A small export is done
    /// within the first second, so its client waits 1 s, not a fixed poll interval.
    fn retry_after(&self, record: &JobRecord) -> Duration {
        let elapsed_us = (Instant::now().as_micros() - record.request_time.as_micros()).max(0);
        let elapsed = Duration::from_micros(u64::try_from(elapsed_us).unwrap_or(0));
        let done = match self.live_progress(&record.id) {
            Some(live) if live.units_total > 0 => live.units_done as f64 / live.units_total as f64,
            _ => f64::from(record.progress_percent) / 100.0,
        };
        poll_again_after(elapsed, done, self.shared.config.max_retry_after)
    }

    /// Cancels an export and deletes its files (`NotFound` when unknown or already cancelled).
    pub async fn cancel(&self, id: &JobId, access: &JobAccess) -> Result<(), ExportError> {
        self.record(id, access).await?;
        let shared = &self.shared;
        shared.jobs.cancel(id, Instant::now()).await.map_err(|e| match e {
            StoreError::JobNotFound { .. } => not_found(id),
            other => other.into(),
        })?;
        info!(job_id = %id, "export cancelled by the client");
        match shared.running_token(id) {
            // The runner stops at its next page and deletes the files itself.
            Some(token) => token.cancel(),
            None => shared.delete_files(id).await,
        }
        Ok(())
    }

    /// Opens one file of a completed export (`NotFound` for unknown jobs and names).
    pub async fn open_file(
        &self,
        id: &JobId,
        name: &str,
        range: Option<Range<u64>>,
        access: &JobAccess,
    ) -> Result<FileDownload, ExportError> {
        let record = self.record(id, access).await?;
        if record.status != JobStatus::Completed {
            return Err(ExportError::NotFound(format!(
                "export {id} has no files (status {})",
                record.status.as_str()
            )));
        }
        if record.files_deleted {
            return Err(ExportError::Gone(format!("the files of export {id} have expired")));
        }
        let view = self.view(record)?;
        let listed = view.manifest.as_ref().is_some_and(|m| m.files.iter().any(|f| f.name == name));
        if !listed {
            return Err(ExportError::NotFound(format!("export {id} has no file '{name}'")));
        }
        let resource_type = view
            .manifest
            .as_ref()
            .and_then(|m| m.files.iter().find(|f| f.name == name))
            .filter(|f| match f.kind {
                FileKind::Error => false,
                FileKind::Output => view.request.organize_output_by.is_none(),
                FileKind::Deleted => true,
            })
            .map(|f| f.resource_type.clone());
        let key = OutputKey::parse(&format!("jobs/{id}/{name}"))?;
        let output = self.shared.output_for(view.request.destination.as_deref())?;
        let (body, total_size) = output.read(&key, range).await?;
        Ok(FileDownload { body, total_size, gzip: name.ends_with(".gz"), resource_type })
    }

    /// Download URLs for files of job `id` signed by the bucket they are in (no token needed),
    /// valid until the job's files expire (at most 7 days, S3's limit); `None` when that store
    /// cannot sign (local disk).
    pub async fn signed_file_urls(
        &self,
        id: &JobId,
        request: &StoredRequest,
        names: &[&str],
        expires_at: Option<Instant>,
    ) -> Result<Option<HashMap<String, String>>, ExportError> {
        let output = self.shared.output_for(request.destination.as_deref())?;
        if !output.signs_urls() {
            return Ok(None);
        }
        let now = Instant::now();
        let left = expires_at.map_or(self.shared.config.retention, |at| {
            std::time::Duration::from_micros(
                u64::try_from(at.as_micros().saturating_sub(now.as_micros())).unwrap_or(0),
            )
        });
        let max = self.shared.config.max_signed_url.min(MAX_SIGNED_URL);
        let valid = left
            .clamp(std::time::Duration::from_secs(1), max.max(std::time::Duration::from_secs(1)));
        let mut urls = HashMap::with_capacity(names.len());
        for name in names {
            let key = OutputKey::parse(&format!("jobs/{id}/{name}"))?;
            if let Some(url) = output.signed_url(&key, valid).await? {
                urls.insert((*name).to_owned(), url);
            }
        }
        Ok(Some(urls))
    }

    /// One job with its documents (cancelled ones included).
    pub async fn job(&self, id: &JobId, access: &JobAccess) -> Result<JobView, ExportError> {
        let record = self.record(id, access).await?;
        self.view(record)
    }

    /// The jobs `access` sees, newest first.
    pub async fn search(
        &self,
        status: Option<JobStatus>,
        access: &JobAccess,
        limit: usize,
    ) -> Result<Vec<JobView>, ExportError> {
        let query = JobQuery { status, requester: access.requester(), limit };
        let records = self.shared.jobs.search(&query).await?;
        records.into_iter().map(|r| self.view(r)).collect()
    }

    /// A job's record, when `access` sees it: another client's job is "not found", exactly as
    /// an unknown one.
    async fn record(&self, id: &JobId, access: &JobAccess) -> Result<JobRecord, ExportError> {
        let record = self.shared.jobs.get(id).await.map_err(|e| match e {
            StoreError::JobNotFound { .. } => not_found(id),
            other => other.into(),
        })?;
        if !access.sees(record.requester.as_deref()) {
            return Err(not_found(id));
        }
        Ok(record)
    }

    fn view(&self, record: JobRecord) -> Result<JobView, ExportError> {
        let request: StoredRequest = serde_json::from_str(&record.request).map_err(corrupt)?;
        let manifest = match &record.manifest {
            Some(json) => Some(serde_json::from_str(json).map_err(corrupt)?),
            None => None,
        };
        Ok(JobView { record, request, manifest })
    }
}

/// The longest a signed URL is valid (S3 presigned URLs allow at most 7 days).
const MAX_SIGNED_URL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

fn not_found(id: &JobId) -> ExportError {
    ExportError::NotFound(format!("no export job {id}"))
}

/// Bounds the request by what the caller may export: no `_type` becomes the permitted types; a
/// `_type` naming a type outside them is refused (403), or under lenient handling dropped with
/// a note; so is `includeAssociatedData` without access to Provenance.
fn apply_bound(
    request: &mut ExportRequest,
    bound: &ExportBound,
    lenient: bool,
) -> Result<(), ExportError> {
    bound.check()?;
    let Some(allowed) = &bound.types else { return Ok(()) };
    let refuse =
        |message: String| -> Result<(), ExportError> { Err(ExportError::Forbidden(message)) };
    match request.types.as_mut() {
        None => request.types = Some(allowed.iter().copied().collect()),
        Some(types) => {
            let denied: Vec<&str> =
                types.iter().filter(|t| !allowed.contains(t)).map(|t| t.as_str()).collect();
            if !denied.is_empty() {
                let listed = denied.join(", ");
                if !lenient {
                    return refuse(format!(
                        "_type names {listed}, which this client's scopes do not allow it to export"
                    ));
                }
                request.lenient_notes.push(format!(
                    "_type {listed} was left out: this client's scopes do not allow it to export it"
                ));
                types.retain(|t| allowed.contains(t));
            }
        }
    }
    if request.types.as_ref().is_some_and(Vec::is_empty) {
        return refuse(
            "this client's scopes allow it to export none of the types asked for".into(),
        );
    }
    let provenance = ResourceType::parse("Provenance").ok();
    if !request.include_associated_data.is_empty()
        && !provenance.is_some_and(|p| allowed.contains(&p))
    {
        if !lenient {
            return refuse(
                "includeAssociatedData needs access to Provenance, which this client's scopes do not allow"
                    .into(),
            );
        }
        request.lenient_notes.push(
            "includeAssociatedData was ignored: this client's scopes do not allow Provenance"
                .into(),
        );
        request.include_associated_data.clear();
    }
    if request.since.is_some() {
        for resource_type in request.types.iter().flatten().filter(|t| bound.narrows(**t)) {
            request.lenient_notes.push(format!(
                "deleted {resource_type} resources are not listed: this client's scopes cover only some {resource_type} resources, and a deleted one can no longer be matched against them"
            ));
        }
    }
    Ok(())
}

/// Checks the parameters the model parser cannot check alone (`_typeFilter` queries, `_elements`
/// names, `includeAssociatedData` codes, `organizeOutputBy`): an error, or under lenient handling
/// the offending part dropped with a note for the manifest's error file.
fn check_parameters(request: &mut ExportRequest, lenient: bool) -> Result<(), ExportError> {
    let now = Instant::now();
    let filters = std::mem::take(&mut request.type_filters);
    for filter in filters {
        match SearchQuery::parse_type_filter(&filter, now) {
            Ok(_) => request.type_filters.push(filter),
            Err(error) if lenient => {
                request.lenient_notes.push(format!("_typeFilter '{filter}' was ignored: {error}"));
            }
            Err(error) => {
                return Err(ExportError::invalid(
                    format!("_typeFilter '{filter}': {error}"),
                    Some("_typeFilter"),
                ));
            }
        }
    }
    if !request.elements.is_empty() && ElementSelection::parse(&request.elements).is_err() {
        if !lenient {
            let error = ElementSelection::parse(&request.elements)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(ExportError::invalid(error, Some("_elements")));
        }
        let items = std::mem::take(&mut request.elements);
        for item in items {
            match ElementSelection::parse(std::slice::from_ref(&item)) {
                Ok(_) => request.elements.push(item),
                Err(error) => request.lenient_notes.push(format!("{error}; ignored")),
            }
        }
    }
    // includeAssociatedData: the two Provenance sets of the IG; other values are unsupported.
    const KNOWN_ASSOCIATED: [&str; 2] =
        ["LatestProvenanceResources", "RelevantProvenanceResources"];
    if let Some(unknown) =
        request.include_associated_data.iter().find(|v| !KNOWN_ASSOCIATED.contains(&v.as_str()))
    {
        if !lenient {
            return Err(ExportError::invalid(
                format!(
                    "includeAssociatedData '{unknown}' is not supported; this server supports LatestProvenanceResources and RelevantProvenanceResources"
                ),
                Some("includeAssociatedData"),
            ));
        }
        let ignored: Vec<String> = request
            .include_associated_data
            .iter()
            .filter(|v| !KNOWN_ASSOCIATED.contains(&v.as_str()))
            .cloned()
            .collect();
        for value in ignored {
            request
                .lenient_notes
                .push(format!("includeAssociatedData '{value}' is not supported and was ignored"));
        }
        request.include_associated_data.retain(|v| KNOWN_ASSOCIATED.contains(&v.as_str()));
    }
    if let Some(organize) = request.organize_output_by.clone() {
        let problem = if organize != "Patient" {
            Some(format!(
                "organizeOutputBy={organize} is not supported; this server organizes by Patient"
            ))
        } else if request.level == ExportLevel::System {
            Some(
                "organizeOutputBy is supported for Patient and Group exports, not system exports"
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(problem) = problem {
            if !lenient {
                return Err(ExportError::invalid(problem, Some("organizeOutputBy")));
            }
            request.lenient_notes.push(format!("{problem}; ignored"));
            request.organize_output_by = None;
        }
    }
    Ok(())
}

/// The expected remaining time of an export `done` (0..1) after `elapsed`, in whole seconds
/// rounded up, between 1 s and `max`; the time so far when nothing is done yet.
pub(crate) fn poll_again_after(elapsed: Duration, done: f64, max: Duration) -> Duration {
    let remaining = if done > 0.0 && done.is_finite() {
        elapsed.mul_f64(((1.0 - done.min(1.0)) / done).min(1e6))
    } else {
        elapsed
    };
    let max = max.max(Duration::from_secs(1));
    // Whole seconds, rounded up: the header has no fractions.
    let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    Duration::from_secs(seconds).clamp(Duration::from_secs(1), max)
}

/// Checks the views of a `$viewdefinition-export`: at least one, each a valid ViewDefinition
/// over an R4 type, with a distinct output name of `[A-Za-z0-9_]` (a file name stem). Returns
/// each view's type, in order.
fn check_views(views: &ViewExport) -> Result<Vec<ResourceType>, ExportError> {
    if views.views.is_empty() {
        return Err(ExportError::invalid("give at least one view", Some("view")));
    }
    if views.format == TabularFormat::Json {
        return Err(ExportError::invalid(
            "_format json is not a file format here: use ndjson, csv or parquet",
            Some("_format"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut types = Vec::new();
    for (name, resource) in &views.views {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(ExportError::invalid(
                format!("the output name '{name}' is not 1-64 characters of A-Z, a-z, 0-9 and _"),
                Some("view.name"),
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(ExportError::invalid(
                format!("two views are named '{name}'"),
                Some("view.name"),
            ));
        }
        let view = ViewDefinition::parse(resource).map_err(|e| {
            ExportError::invalid(format!("view '{name}' is not valid: {e}"), Some("view"))
        })?;
        let resource_type = ResourceType::parse(view.resource())
            .map_err(|e| ExportError::invalid(format!("view '{name}': {e}"), Some("view")))?;
        types.push(resource_type);
    }
    Ok(types)
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_expected_remaining_time_within_bounds() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let max = s(30);
        // A small export: nothing or little done after a few milliseconds: 1 s, the floor.
        assert_eq!(poll_again_after(ms(5), 0.0, max), s(1));
        assert_eq!(poll_again_after(ms(40), 0.5, max), s(1));
        // A quarter done after 3 s: 9 s to go.
        assert_eq!(poll_again_after(s(3), 0.25, max), s(9));
        // Rounded up to whole seconds.
        assert_eq!(poll_again_after(ms(1500), 0.5, max), s(2));
        // Nothing done after 4 s (queued, or a first unit still running): wait as long again.
        assert_eq!(poll_again_after(s(4), 0.0, max), s(4));
        // Never above the bound, never below 1 s, whatever the input.
        assert_eq!(poll_again_after(s(600), 0.01, max), max);
        assert_eq!(poll_again_after(s(600), f64::NAN, max), max);
        assert_eq!(poll_again_after(s(5), 1.0, max), s(1));
        assert_eq!(poll_again_after(s(5), 0.1, Duration::ZERO), s(1));
    }
}
