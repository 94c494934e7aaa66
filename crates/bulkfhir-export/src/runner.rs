//! The job runner: claims jobs under a lease, keeps the lease alive with a heartbeat, runs the
//! units (several at once), then writes the error file and the manifest.
//!
//! Several nodes may share one job store. The node that holds a job's lease coordinates it: it
//! runs the job's units and finishes the job. Every unit is run under a lease of its own, so the
//! runners of other nodes help: each looks for units of in-progress jobs coordinated elsewhere,
//! leases one, and runs it from its last checkpoint. A unit whose runner dies is taken over by
//! another once its lease expires; the coordinator waits for units other nodes hold.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bulkfhir_model::{Instant, elements::ElementSelection, error_chain, search::SearchQuery};
use bulkfhir_model::{tabular::TabularFormat, view::ViewDefinition};
use bulkfhir_store::{JobId, JobQuery, JobRecord, JobStatus, StoreError, UnitRecord};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    ExportError,
    docs::{Checkpoint, FileEntry, FileKind, ManifestDoc, Note, Plan, StoredRequest, UnitSpec},
    error::corrupt,
    service::{Live, Shared, units_percent},
    telemetry,
    unit::{JobContext, ViewOutput, run_unit, supporting_type_names},
};

/// Claims and runs export jobs until shut down.
#[derive(Debug, Clone)]
pub struct Runner {
    shared: Arc<Shared>,
    owner: String,
    node_prefix: String,
    /// Units of other nodes' jobs this runner is running now, by (job, unit).
    helping: Arc<Mutex<HashSet<(JobId, u32)>>>,
}

impl Runner {
    pub(crate) fn new(shared: Arc<Shared>, node_id: &str) -> Self {
        let boot = uuid::Uuid::new_v4();
        Runner {
            shared,
            owner: format!("{node_id}/{boot}"),
            node_prefix: format!("{node_id}/"),
            helping: Arc::default(),
        }
    }

    /// Runs until `shutdown` is cancelled; running jobs then stop at their next page and give up
    /// their leases so that the next start resumes them at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = &self.shared.config;
        let slots = Arc::new(Semaphore::new(config.max_running_jobs));
        // Units of other nodes' jobs run at most this many at once (none on a node that runs
        // no jobs).
        let help_slots = if config.max_running_jobs == 0 { 0 } else { config.unit_concurrency };
        let helpers = Arc::new(Semaphore::new(help_slots));
        info!(owner = %self.owner, "export runner started");
        // Other nodes sharing the store say when they made work (a kick-off, a claimed job whose
        // units can be helped with, a released unit): looked at then, not at the next poll.
        let mut signals = self.shared.jobs.work_signals();
        loop {
            self.shared.runner_tick.store(Instant::now().as_micros(), Ordering::Relaxed);
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                let claimed = self
                    .shared
                    .jobs
                    .claim(&self.owner, &self.node_prefix, config.lease, Instant::now())
                    .await;
                match claimed {
                    Ok(Some(job)) => {
                        metrics::counter!(telemetry::LEASE_CLAIMS).increment(1);
                        if let Some(previous) = &job.taken_over_from {
                            metrics::counter!(telemetry::LEASE_TAKEOVERS).increment(1);
                            info!(job_id = %job.id, previous = %previous, "took over an export lease");
                        }
                        self.spawn_job(job, permit, &shutdown)
                    }
                    Ok(None) => break,
                    Err(error) => {
                        warn!(error = %error, "failed to claim an export job");
                        break;
                    }
                }
            }
            self.help(&helpers, &shutdown).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep(config.poll_interval) => {}
                signal = next_signal(&mut signals) => {
                    if signal.is_none() {
                        // The store stopped listening: polling goes on alone.
                        signals = None;
                    }
                }
            }
        }
        // Draining: no new kick-offs; running units stop at their next checkpoint (the end of
        // the file they write), within the grace period; after it, where they are.
        self.shared.draining.store(true, Ordering::Relaxed);
        let all = u32::try_from(config.max_running_jobs).unwrap_or(u32::MAX);
        let all_helpers = u32::try_from(help_slots).unwrap_or(u32::MAX);
        let grace = config.shutdown_grace;
        let drained = async {
            let jobs = Arc::clone(&slots).acquire_many_owned(all).await;
            let helped = Arc::clone(&helpers).acquire_many_owned(all_helpers).await;
            (jobs, helped)
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            warn!(
                seconds = grace.as_secs_f64(),
                "export units did not reach a checkpoint within the shutdown grace period; \
                 stopping them where they are (they resume from their last checkpoint)"
            );
            self.shared.stop_all();
            if tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await.is_err()
            {
                warn!("export jobs did not stop within 10 s of being told to");
            }
        }
        self.shared.runner_tick.store(0, Ordering::Relaxed);
        info!("export runner stopped");
    }

    /// Leases and runs units of in-progress jobs that other nodes coordinate, while this
    /// runner has room for more.
    async fn help(&self, helpers: &Arc<Semaphore>, shutdown: &CancellationToken) {
        if helpers.available_permits() == 0 || shutdown.is_cancelled() {
            return;
        }
        let query = JobQuery { status: Some(JobStatus::InProgress), requester: None, limit: 100 };
        let jobs = match self.shared.jobs.search(&query).await {
            Ok(jobs) => jobs,
            Err(error) => {
                debug!(error = %error, "failed to look for export units to help with");
                return;
            }
        };
        for job in jobs {
            // A job coordinated on this node runs its units itself.
            if job.lease_owner.as_deref().is_none_or(|o| o.starts_with(&self.node_prefix)) {
                continue;
            }
            let Ok(units) = self.shared.jobs.units(&job.id).await else { continue };
            let now = Instant::now();
            for unit in units {
                if unit.done || lock(&self.helping).contains(&(job.id.clone(), unit.index)) {
                    continue;
                }
                let held_elsewhere = unit.lease_owner.as_deref().is_some_and(|owner| {
                    !owner.starts_with(&self.node_prefix)
                        && unit.lease_expires.is_some_and(|until| until >= now)
                });
                let Ok(spec) = serde_json::from_str::<UnitSpec>(&unit.spec) else { continue };
                // The last units need every other unit's references: the coordinator runs them.
                if held_elsewhere || spec.runs_last() {
                    continue;
                }
                let Ok(permit) = Arc::clone(helpers).try_acquire_owned() else { return };
                let leased = self
                    .shared
                    .jobs
                    .lease_unit(
                        &job.id,
                        unit.index,
                        &self.owner,
                        &self.node_prefix,
                        self.shared.config.lease,
                        now,
                    )
                    .await;
                if matches!(leased, Ok(true)) {
                    self.spawn_help(job.clone(), unit, spec, permit, shutdown);
                }
            }
        }
    }

    /// Runs one leased unit of another node's job.
    fn spawn_help(
        &self,
        job: JobRecord,
        unit: UnitRecord,
        spec: UnitSpec,
        permit: tokio::sync::OwnedSemaphorePermit,
        shutdown: &CancellationToken,
    ) {
        let key = (job.id.clone(), unit.index);
        lock(&self.helping).insert(key.clone());
        let (shared, owner, helping) =
            (Arc::clone(&self.shared), self.owner.clone(), Arc::clone(&self.helping));
        let drain = shutdown.clone();
        let span = info_span!("export-help", job_id = %job.id, unit = unit.index);
        tokio::spawn(
            async move {
                let result = async {
                    let written = Arc::new(AtomicU64::new(0));
                    let (ctx, _) = job_context(
                        &shared,
                        &job,
                        &owner,
                        CancellationToken::new(),
                        drain,
                        written,
                    )?;
                    let checkpoint: Checkpoint = match &unit.checkpoint {
                        Some(json) => serde_json::from_str(json).map_err(corrupt)?,
                        None => Checkpoint::default(),
                    };
                    run_leased_unit(&ctx, unit.index, &spec, checkpoint, &BTreeSet::new()).await
                }
                .await;
                match result {
                    Ok(done) => {
                        info!(resources = done.written, "ran a unit of another node's export")
                    }
                    Err(error) => debug!(error = %error, "stopped a unit of another node's export"),
                }
                lock(&helping).remove(&key);
                drop(permit);
            }
            .instrument(span),
        );
    }

    fn spawn_job(
        &self,
        job: JobRecord,
        permit: tokio::sync::OwnedSemaphorePermit,
        shutdown: &CancellationToken,
    ) {
        // Not a child of `shutdown`: on shutdown units first drain to a checkpoint (`drain`);
        // this token stops them at once (cancellation, takeover, or the end of the grace).
        let cancel = CancellationToken::new();
        // The counters live in `Shared` while the job runs, for the live export page.
        let live = Arc::new(Live::default());
        self.shared.register(&job.id, cancel.clone(), Arc::clone(&live));
        let span = info_span!("export", job_id = %job.id);
        let job_id = job.id.clone();
        let run = JobRun {
            shared: Arc::clone(&self.shared),
            owner: self.owner.clone(),
            node_prefix: self.node_prefix.clone(),
            job,
            cancel,
            shutdown: shutdown.clone(),
            live,
        };
        let handle = tokio::spawn(run.run().instrument(span));
        let shared = Arc::clone(&self.shared);
        let owner = self.owner.clone();
        tokio::spawn(async move {
            if let Err(join_error) = handle.await {
                error!(job_id = %job_id, error = %join_error, "export job panicked");
                let message = "the export failed with an internal error";
                match shared.jobs.fail(&job_id, &owner, message, Instant::now()).await {
                    Ok(()) => shared.delete_files(&job_id).await,
                    Err(e) => {
                        warn!(job_id = %job_id, error = %e, "failed to mark the export failed");
                    }
                }
            }
            shared.unregister(&job_id);
            drop(permit);
        });
    }
}

/// How long a job keeps resuming after transient failures of its export store.
const OUTPUT_RETRY_BUDGET: Duration = Duration::from_secs(60);

struct JobRun {
    shared: Arc<Shared>,
    owner: String,
    node_prefix: String,
    job: JobRecord,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    live: Arc<Live>,
}

impl JobRun {
    async fn run(self) {
        let started = std::time::Instant::now();
        let live = &self.live;
        let (written, units_done, units_total) =
            (&live.written, &live.units_done, &live.units_total);
        let heartbeat = self.heartbeat(written, units_done, units_total);
        let result = tokio::select! {
            result = self.execute_retrying(written, units_done, units_total) => result,
            () = heartbeat => Err(ExportError::Stopped("lease lost")),
            () = live.sample_every_second() => Err(ExportError::Stopped("sampler ended")),
        };
        let jobs = &self.shared.jobs;
        let ended = |outcome: &'static str| {
            metrics::counter!(telemetry::JOBS_ENDED, "outcome" => outcome).increment(1);
        };
        match result {
            Ok(()) => {
                ended("completed");
                let resources = written.load(Ordering::Relaxed);
                let seconds = started.elapsed().as_secs_f64();
                info!(
                    resources,
                    seconds,
                    resources_per_second = (resources as f64 / seconds.max(1e-9)).round(),
                    "export completed"
                );
            }
            Err(error) => {
                let status = jobs.get(&self.job.id).await.map(|j| j.status);
                if matches!(status, Ok(JobStatus::Cancelled)) {
                    ended("cancelled");
                    info!("export cancelled; deleting its files");
                    self.shared.delete_files(&self.job.id).await;
                } else if self.shutdown.is_cancelled() {
                    ended("paused");
                    info!(
                        "export paused for shutdown; it resumes from its checkpoints on the next start"
                    );
                    if let Err(e) = jobs.release(&self.job.id, &self.owner).await {
                        warn!(error = %e, "failed to release the export lease");
                    }
                } else if matches!(
                    error,
                    ExportError::Store(StoreError::LeaseLost { .. }) | ExportError::Stopped(_)
                ) {
                    warn!(error = %error, "export stopped: another runner holds it now");
                } else {
                    ended("failed");
                    error!(error = %error_chain(&error), "export failed");
                    let message = match &error {
                        // Name the store: with several destinations, which one failed matters.
                        ExportError::Output(_) => {
                            let request: Option<StoredRequest> =
                                serde_json::from_str(&self.job.request).ok();
                            let store = request
                                .and_then(|r| self.shared.output_for(r.destination.as_deref()).ok())
                                .map_or_else(
                                    || "the export store".to_owned(),
                                    |o| o.label().to_owned(),
                                );
                            format!("export failed writing to {store}: {}", error.describe())
                        }
                        _ => format!("export failed: {}", error.describe()),
                    };
                    match jobs.fail(&self.job.id, &self.owner, &message, Instant::now()).await {
                        // Its manifest is gone: free its space now (a full disk would otherwise
                        // fail every later export until the sweeper's next round). Only when
                        // this runner still held the job: another may be writing its files.
                        Ok(()) => self.shared.delete_files(&self.job.id).await,
                        Err(e) => warn!(error = %e, "failed to mark the export failed"),
                    }
                }
            }
        }
    }

    /// Renews the lease and records progress until the lease is lost; returns only then.
    async fn heartbeat(
        &self,
        written: &AtomicU64,
        units_done: &AtomicUsize,
        units_total: &AtomicUsize,
    ) {
        let config = &self.shared.config;
        let every = (config.lease / 3).min(Duration::from_secs(2)).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let jobs = &self.shared.jobs;
            if let Err(error) =
                jobs.renew(&self.job.id, &self.owner, config.lease, Instant::now()).await
            {
                metrics::counter!(telemetry::HEARTBEAT_FAILURES).increment(1);
                if matches!(error, StoreError::LeaseLost { .. }) {
                    self.cancel.cancel();
                    return;
                }
                warn!(error = %error, "failed to renew the export lease");
                continue;
            }
            let (done, total) =
                (units_done.load(Ordering::Relaxed), units_total.load(Ordering::Relaxed).max(1));
            let percent = units_percent(done, total);
            let text = format!(
                "{percent}% exporting: {} resources written, {done} of {total} parts done",
                written.load(Ordering::Relaxed)
            );
            if let Err(error) = jobs.set_progress(&self.job.id, &self.owner, percent, &text).await
                && !matches!(error, StoreError::LeaseLost { .. })
            {
                warn!(error = %error, "failed to record export progress");
            }
        }
    }

    /// Runs the job; when the export store fails in a way it recovers from (a bucket
    /// restarting, a network blip), runs it again from its checkpoints after a backoff, for at
    /// most [`OUTPUT_RETRY_BUDGET`]; then the error stands and the job fails.
    async fn execute_retrying(
        &self,
        written: &Arc<AtomicU64>,
        units_done: &AtomicUsize,
        units_total: &AtomicUsize,
    ) -> Result<(), ExportError> {
        let mut first_failure: Option<std::time::Instant> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.execute(written, units_done, units_total).await {
                Err(ExportError::Output(error))
                    if error.is_transient()
                        && first_failure.is_none_or(|at| at.elapsed() < OUTPUT_RETRY_BUDGET)
                        && !self.cancel.is_cancelled()
                        && !self.shutdown.is_cancelled() =>
                {
                    first_failure.get_or_insert_with(std::time::Instant::now);
                    warn!(error = %error, retry_in_s = backoff.as_secs(), "the export store failed; resuming from the checkpoints");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.cancel.cancelled() => return Err(ExportError::Stopped("cancelled")),
                        () = self.shutdown.cancelled() => return Err(ExportError::Stopped("shutdown")),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                }
                other => return other,
            }
        }
    }

    async fn execute(
        &self,
        written: &Arc<AtomicU64>,
        units_done: &AtomicUsize,
        units_total: &AtomicUsize,
    ) -> Result<(), ExportError> {
        let shared = &self.shared;
        let job = &self.job;
        let (ctx, request) = job_context(
            shared,
            job,
            &self.owner,
            self.cancel.clone(),
            self.shutdown.clone(),
            Arc::clone(written),
        )?;
        let records = shared.jobs.units(&job.id).await?;
        // Staged uploads a crash left behind are removed before resuming, unless a runner of
        // another node is writing one of this job's units now (its staged file is in use).
        let now = Instant::now();
        let others_writing = records.iter().any(|u| {
            !u.done
                && u.lease_owner.as_deref().is_some_and(|o| !o.starts_with(&self.node_prefix))
                && u.lease_expires.is_some_and(|until| until >= now)
        });
        if !others_writing {
            ctx.output.remove_incomplete(&shared.job_prefix(&job.id)?).await?;
        }
        let mut units = Vec::new();
        for unit in &records {
            let spec: UnitSpec = serde_json::from_str(&unit.spec).map_err(corrupt)?;
            let checkpoint: Checkpoint = match &unit.checkpoint {
                Some(json) => serde_json::from_str(json).map_err(corrupt)?,
                None => Checkpoint::default(),
            };
            units.push((unit.index, spec, checkpoint, unit.done));
        }
        units_total.store(units.len(), Ordering::Relaxed);
        units_done.store(units.iter().filter(|u| u.3).count(), Ordering::Relaxed);
        if units.iter().any(|u| u.2.cursor > 0 || u.3) {
            info!(
                done = units_done.load(Ordering::Relaxed),
                total = units.len(),
                "resuming export from checkpoints"
            );
        }
        // Each unit runs as its own task, so units (types, key ranges) use every core: a unit
        // copies every byte it writes, and one task polling them all kept the export on one
        // core. The set is dropped (its tasks aborted) when this future is.
        let no_refs = Arc::new(BTreeSet::new());
        let mut finished: HashMap<u32, Checkpoint> = HashMap::new();
        let mut pending: VecDeque<(u32, UnitSpec)> = VecDeque::new();
        for (index, spec, checkpoint, done) in units.iter().filter(|u| !u.1.runs_last()) {
            if *done {
                finished.insert(*index, checkpoint.clone());
            } else {
                pending.push_back((*index, spec.clone()));
            }
        }
        pending.make_contiguous().sort_by_key(|(_, spec)| std::cmp::Reverse(spec.size_hint()));
        run_units(&ctx, &self.node_prefix, pending, &no_refs, units_done, &mut finished).await?;
        let references: Arc<BTreeSet<String>> =
            Arc::new(finished.values().flat_map(|c| c.references.iter().cloned()).collect());
        let mut last: VecDeque<(u32, UnitSpec)> = VecDeque::new();
        for (index, spec, checkpoint, done) in units.iter().filter(|u| u.1.runs_last()) {
            if *done {
                finished.insert(*index, checkpoint.clone());
            } else {
                last.push_back((*index, spec.clone()));
            }
        }
        run_units(&ctx, &self.node_prefix, last, &references, units_done, &mut finished).await?;

        // Every unit is done: no runner writes this job's files any more. Staged uploads left
        // by a runner that died (on another node, while this one could not clean up) go now.
        ctx.output.remove_incomplete(&shared.job_prefix(&job.id)?).await?;
        let mut files: Vec<FileEntry> = Vec::new();
        let mut notes: Vec<Note> = ctx.plan.notes.clone();
        for (index, ..) in &units {
            if let Some(checkpoint) = finished.get(index) {
                files.extend(checkpoint.files.iter().cloned());
                notes.extend(checkpoint.issues.iter().cloned());
            }
        }
        // Manifest order: output, then deleted, then error; types in plan order.
        files.sort_by_key(|f| match f.kind {
            FileKind::Output => 0,
            FileKind::Deleted => 1,
            FileKind::Error => 2,
        });
        if !notes.is_empty() {
            files.push(write_error_file(&ctx, &notes).await?);
        }
        let manifest = ManifestDoc {
            transaction_time: job.snapshot.time.to_fhir(),
            request: request.request_url.clone(),
            requires_access_token: false,
            files,
            organized_by: request.organize_output_by.clone(),
        };
        let json = serde_json::to_string(&manifest).map_err(corrupt)?;
        let now = Instant::now();
        let retention = i64::try_from(shared.config.retention.as_micros()).unwrap_or(i64::MAX);
        let expires = Instant::from_micros(now.as_micros().saturating_add(retention));
        shared.jobs.complete(&job.id, &self.owner, &json, now, expires).await?;
        Ok(())
    }
}

/// Locks a mutex, recovering from poisoning (the guarded set stays consistent: every change is
/// one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What every unit of `job` shares, and the job's request.
fn job_context(
    shared: &Arc<Shared>,
    job: &JobRecord,
    owner: &str,
    cancel: CancellationToken,
    drain: CancellationToken,
    written: Arc<AtomicU64>,
) -> Result<(Arc<JobContext>, StoredRequest), ExportError> {
    let request: StoredRequest = serde_json::from_str(&job.request).map_err(corrupt)?;
    let plan: Plan = serde_json::from_str(&job.plan).map_err(corrupt)?;
    let output = shared.output_for(request.destination.as_deref())?;
    let elements = if request.elements.is_empty() {
        None
    } else {
        Some(
            ElementSelection::parse(&request.elements)
                .map_err(|e| ExportError::Corrupt(e.to_string()))?,
        )
    };
    let mut filters: HashMap<bulkfhir_model::ResourceType, Vec<SearchQuery>> = HashMap::new();
    for text in &request.type_filters {
        let query = SearchQuery::parse_type_filter(text, job.request_time)
            .map_err(|e| ExportError::Corrupt(format!("_typeFilter '{text}': {e}")))?;
        filters.entry(query.resource_type()).or_default().push(query);
    }
    let mut scope_filters: HashMap<bulkfhir_model::ResourceType, Vec<SearchQuery>> = HashMap::new();
    for text in &request.scope_filters {
        let query = SearchQuery::parse_type_filter(text, job.request_time)
            .map_err(|e| ExportError::Corrupt(format!("scope query '{text}': {e}")))?;
        scope_filters.entry(query.resource_type()).or_default().push(query);
    }
    let mut views = Vec::new();
    for stored in &request.views {
        let view = ViewDefinition::parse(&stored.view)
            .map_err(|e| ExportError::Corrupt(format!("view '{}': {e}", stored.name)))?;
        views.push(ViewOutput::new(stored.name.clone(), view));
    }
    let view_format = match request.view_format.as_deref() {
        None => None,
        Some(code) => Some(
            TabularFormat::parse(code)
                .ok_or_else(|| ExportError::Corrupt(format!("view format '{code}'")))?,
        ),
    };
    let ctx = Arc::new(JobContext {
        store: Arc::clone(&shared.store),
        jobs: Arc::clone(&shared.jobs),
        output,
        config: shared.config.clone(),
        job_id: job.id.clone(),
        owner: owner.to_owned(),
        snapshot: job.snapshot,
        gzip: request.gzip,
        member_set: plan.members.iter().cloned().collect(),
        supporting_types: supporting_type_names(&plan),
        level: telemetry::level_label(&request.level),
        drain,
        plan,
        cancel,
        written,
        elements,
        filters,
        scope_filters,
        views,
        view_format,
    });
    Ok((ctx, request))
}

/// Runs one unit this runner leased, from `checkpoint` to its end, renewing the unit's lease;
/// a unit whose lease is lost stops. A unit stopped for a shutdown gives its lease up, so that
/// another node need not wait for it to expire.
async fn run_leased_unit(
    ctx: &Arc<JobContext>,
    index: u32,
    spec: &UnitSpec,
    checkpoint: Checkpoint,
    supporting_refs: &BTreeSet<String>,
) -> Result<Checkpoint, ExportError> {
    let lease = ctx.config.lease;
    let every = (lease / 3).min(Duration::from_secs(2)).max(Duration::from_millis(50));
    let renew = async {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match ctx.jobs.renew_unit(&ctx.job_id, index, &ctx.owner, lease, Instant::now()).await {
                Ok(()) => {}
                Err(StoreError::LeaseLost { .. }) => return,
                Err(error) => {
                    metrics::counter!(telemetry::HEARTBEAT_FAILURES).increment(1);
                    warn!(error = %error, unit = index, "failed to renew an export unit lease");
                }
            }
        }
    };
    let result = tokio::select! {
        result = run_unit(ctx, index, spec, checkpoint, supporting_refs) => result,
        () = renew => Err(ExportError::Stopped("unit lease lost")),
    };
    if matches!(result, Err(ExportError::Stopped("shutdown")))
        && let Err(error) = ctx.jobs.release_unit(&ctx.job_id, index, &ctx.owner).await
    {
        debug!(error = %error, unit = index, "failed to release an export unit lease");
    }
    result
}

/// Runs `units` (indexes and specs) to the end: each one this runner can lease runs as a task,
/// at most `unit_concurrency` at once, from the unit's latest checkpoint; units another node
/// holds are waited for (and taken over if that node's lease expires). Records each final
/// checkpoint in `finished`. The first failure aborts the others and is returned.
async fn run_units(
    ctx: &Arc<JobContext>,
    node_prefix: &str,
    mut waiting: VecDeque<(u32, UnitSpec)>,
    supporting_refs: &Arc<BTreeSet<String>>,
    units_done: &AtomicUsize,
    finished: &mut HashMap<u32, Checkpoint>,
) -> Result<(), ExportError> {
    let limit = ctx.config.unit_concurrency.max(1);
    let look_again =
        (ctx.config.lease / 6).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut running = JoinSet::new();
    let mut drained = false;
    loop {
        if running.len() < limit && !waiting.is_empty() && !ctx.drain.is_cancelled() {
            let records = ctx.jobs.units(&ctx.job_id).await?;
            let mut still = VecDeque::new();
            while let Some((index, spec)) = waiting.pop_front() {
                let record = records.iter().find(|u| u.index == index);
                let checkpoint: Checkpoint = match record.and_then(|u| u.checkpoint.as_deref()) {
                    Some(json) => serde_json::from_str(json).map_err(corrupt)?,
                    None => Checkpoint::default(),
                };
                if record.is_some_and(|u| u.done) {
                    // Another node ran it to the end.
                    units_done.fetch_add(1, Ordering::Relaxed);
                    finished.insert(index, checkpoint);
                    continue;
                }
                let leased = running.len() < limit
                    && !ctx.drain.is_cancelled()
                    && ctx
                        .jobs
                        .lease_unit(
                            &ctx.job_id,
                            index,
                            &ctx.owner,
                            node_prefix,
                            ctx.config.lease,
                            Instant::now(),
                        )
                        .await?;
                if !leased {
                    still.push_back((index, spec));
                    continue;
                }
                let (ctx, refs) = (Arc::clone(ctx), Arc::clone(supporting_refs));
                let span = tracing::Span::current();
                running.spawn(
                    async move {
                        let started = std::time::Instant::now();
                        let result = run_leased_unit(&ctx, index, &spec, checkpoint, &refs).await;
                        let outcome = if result.is_ok() { "done" } else { "stopped" };
                        metrics::histogram!(telemetry::UNIT_SECONDS, "outcome" => outcome)
                            .record(started.elapsed().as_secs_f64());
                        if let Ok(done) = &result {
                            debug!(
                                unit = index,
                                spec = ?spec,
                                resources = done.written,
                                seconds = started.elapsed().as_secs_f64(),
                                "export unit finished"
                            );
                        }
                        result.map(|c| (index, c))
                    }
                    .instrument(span),
                );
            }
            waiting = still;
        }
        if running.is_empty() {
            if waiting.is_empty() && !drained {
                return Ok(());
            }
            if ctx.drain.is_cancelled() {
                // Units stopped at a checkpoint or not started go on at the next start.
                return Err(ExportError::Stopped("shutdown"));
            }
            // Every unit left is held by a runner of another node: look again shortly.
            tokio::select! {
                () = tokio::time::sleep(look_again) => continue,
                () = ctx.cancel.cancelled() => return Err(ExportError::Stopped("cancelled")),
            }
        }
        let joined = if waiting.is_empty() || ctx.drain.is_cancelled() {
            running.join_next().await
        } else {
            tokio::select! {
                joined = running.join_next() => joined,
                () = tokio::time::sleep(look_again) => continue,
            }
        };
        let Some(joined) = joined else { continue };
        let result = joined.map_err(|e| {
            if e.is_panic() {
                ExportError::Panicked(format!("an export unit panicked: {e}"))
            } else {
                ExportError::Stopped("cancelled")
            }
        })?;
        match result {
            Ok((index, checkpoint)) => {
                units_done.fetch_add(1, Ordering::Relaxed);
                finished.insert(index, checkpoint);
            }
            // One unit reached its checkpoint for a shutdown: let the others reach theirs
            // (returning now would drop the set and abort them mid-file).
            Err(ExportError::Stopped("shutdown")) if ctx.drain.is_cancelled() => drained = true,
            Err(error) => return Err(error),
        }
    }
}

/// Writes the OperationOutcome file of the manifest's `error` array.
async fn write_error_file(ctx: &JobContext, notes: &[Note]) -> Result<FileEntry, ExportError> {
    let name = format!("OperationOutcome-1{}", ctx.extension());
    let mut writer = ctx.output.create(&ctx.key(&name)?, ctx.compression()).await?;
    let mut buffer = Vec::new();
    for note in notes {
        let outcome = serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": note.severity, "code": note.code, "diagnostics": note.diagnostics}]
        });
        serde_json::to_writer(&mut buffer, &outcome).map_err(corrupt)?;
        buffer.push(b'\n');
    }
    writer.write(&buffer).await?;
    let finished = writer.finish().await?;
    Ok(FileEntry {
        name,
        resource_type: "OperationOutcome".to_owned(),
        count: notes.len() as u64,
        bytes: finished.stored_bytes,
        kind: FileKind::Error,
        continues_in: None,
    })
}

/// The next wake-up from the store's other nodes; pending for ever when there are none.
async fn next_signal(signals: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match signals {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}
