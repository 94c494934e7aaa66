//! [`ExportService`]: what the HTTP edge calls.

use std::{
    collections::HashMap,
    ops::Range,
    sync::{Arc, Mutex},
};

use bulkfhir_model::{
    Instant,
    export::{ExportLevel, ExportRequest, OutputFormat},
};
use bulkfhir_output::{OutputError, OutputKey, OutputStore};
use bulkfhir_store::{
    JobId, JobQuery, JobRecord, JobStatus, JobStore, NewJob, ResourceStore, Snapshot, StoreError,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    ExportConfig, ExportError, Runner, Sweeper,
    docs::{ManifestDoc, StoredRequest},
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
    /// Jobs running in this process, with the token that stops each.
    running: Mutex<HashMap<JobId, CancellationToken>>,
    pub(crate) wake: Notify,
}

impl Shared {
    pub(crate) fn register(&self, id: &JobId, token: CancellationToken) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), token);
    }

    pub(crate) fn unregister(&self, id: &JobId) {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    fn running_token(&self, id: &JobId) -> Option<CancellationToken> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }

    pub(crate) fn is_running(&self, id: &JobId) -> bool {
        self.running_token(id).is_some()
    }

    pub(crate) fn job_prefix(&self, id: &JobId) -> Result<OutputKey, ExportError> {
        Ok(OutputKey::parse(&format!("jobs/{id}"))?)
    }

    /// Deletes a job's files and records it; failures are logged (the sweeper retries).
    pub(crate) async fn delete_files(&self, id: &JobId) {
        let result = async {
            let deleted = self.output.delete_prefix(&self.job_prefix(id)?).await?;
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
    /// The authenticated client, if any.
    pub requester: Option<String>,
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
                running: Mutex::new(HashMap::new()),
                wake: Notify::new(),
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
        mut request: ExportRequest,
        context: KickoffContext,
    ) -> Result<JobId, ExportError> {
        refuse_unsupported(&mut request, context.lenient)?;
        let shared = &self.shared;
        let mut snapshot = shared.store.snapshot().await?;
        if let Some(until) = request.until
            && until < snapshot.time
        {
            snapshot = Snapshot { seq: shared.store.seq_at(until).await?, time: until };
        }
        let (plan, units) = plan(shared.store.as_ref(), &request, snapshot).await?;
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
        shared.wake.notify_one();
        Ok(id)
    }

    /// What a status poll answers.
    pub async fn status(&self, id: &JobId) -> Result<StatusReport, ExportError> {
        let record = self.record(id).await?;
        let request: StoredRequest = serde_json::from_str(&record.request).map_err(corrupt)?;
        let view = match record.status {
            JobStatus::Cancelled => return Err(not_found(id)),
            JobStatus::Accepted => StatusView::InProgress { percent: 0, text: "queued".to_owned() },
            JobStatus::InProgress => StatusView::InProgress {
                percent: record.progress_percent,
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
        Ok(StatusReport { view, separate_status: request.separate_status })
    }

    /// Cancels an export and deletes its files (`NotFound` when unknown or already cancelled).
    pub async fn cancel(&self, id: &JobId) -> Result<(), ExportError> {
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
    ) -> Result<FileDownload, ExportError> {
        let record = self.record(id).await?;
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
        let key = OutputKey::parse(&format!("jobs/{id}/{name}"))?;
        let (body, total_size) = self.shared.output.read(&key, range).await?;
        Ok(FileDownload { body, total_size, gzip: name.ends_with(".gz") })
    }

    /// One job with its documents (cancelled ones included).
    pub async fn job(&self, id: &JobId) -> Result<JobView, ExportError> {
        let record = self.record(id).await?;
        self.view(record)
    }

    /// Jobs, newest first.
    pub async fn search(
        &self,
        status: Option<JobStatus>,
        requester: Option<String>,
        limit: usize,
    ) -> Result<Vec<JobView>, ExportError> {
        let records = self.shared.jobs.search(&JobQuery { status, requester, limit }).await?;
        records.into_iter().map(|r| self.view(r)).collect()
    }

    async fn record(&self, id: &JobId) -> Result<JobRecord, ExportError> {
        self.shared.jobs.get(id).await.map_err(|e| match e {
            StoreError::JobNotFound { .. } => not_found(id),
            other => other.into(),
        })
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

fn not_found(id: &JobId) -> ExportError {
    ExportError::NotFound(format!("no export job {id}"))
}

/// Parameters the engine does not implement yet: an error, or a note under lenient handling.
fn refuse_unsupported(request: &mut ExportRequest, lenient: bool) -> Result<(), ExportError> {
    let mut unsupported: Vec<&'static str> = Vec::new();
    if !request.type_filters.is_empty() {
        unsupported.push("_typeFilter");
    }
    if !request.elements.is_empty() {
        unsupported.push("_elements");
    }
    if !request.include_associated_data.is_empty() {
        unsupported.push("includeAssociatedData");
    }
    if request.organize_output_by.is_some() {
        unsupported.push("organizeOutputBy");
    }
    if request.allow_partial_manifests {
        unsupported.push("allowPartialManifests");
    }
    let Some(first) = unsupported.first() else { return Ok(()) };
    if !lenient {
        return Err(ExportError::invalid(
            format!(
                "{first} is not supported by this server yet (send Prefer: handling=lenient to have it ignored)"
            ),
            Some(first),
        ));
    }
    for name in unsupported {
        request
            .lenient_notes
            .push(format!("{name} is not supported by this server yet and was ignored"));
    }
    request.type_filters.clear();
    request.elements.clear();
    request.include_associated_data.clear();
    request.organize_output_by = None;
    request.allow_partial_manifests = false;
    Ok(())
}
