//! Running one unit: read pages from the snapshot, write NDJSON lines, close a file when it is
//! full, and checkpoint after every closed file.
//!
//! Exactly-once across crashes: a file becomes visible only when it is finished; the checkpoint
//! that records it also records the `seq` of its last resource. A resumed unit starts after that
//! `seq` and rewrites the unfinished file under the same name from the same snapshot, so it holds
//! the same lines.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bulkfhir_model::{
    Instant, ResourceId, ResourceRef, ResourceType, compartment, elements::ElementSelection,
    json::write_json_string, search::SearchQuery,
};
use bulkfhir_model::{
    tabular::{self, TabularFormat},
    view::ViewDefinition,
};
use bulkfhir_output::{Compression, FileWriter, OutputKey, OutputStore};
use bulkfhir_store::{
    JobId, JobStore, ResourceStore, ScanOptions, ScanPage, Snapshot, StoredResource,
};
use memchr::memmem;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    ExportConfig, ExportError, blocks,
    docs::{
        Checkpoint, CompartmentScope, FileEntry, FileKind, Note, Plan, ProvenanceScope, UnitSpec,
    },
    error::corrupt,
    parquet::{self, Kind},
};

/// Members whose compartments one store call may cover (it also stops at a page of resources).
const MEMBER_BATCH: usize = 256;

/// Flush the line buffer to the file writer past this many bytes.
const WRITE_CHUNK: usize = 1 << 20;

/// What every unit of one job shares. Owned, so that each unit can run as its own task (on its
/// own worker thread) with an `Arc` of it.
pub(crate) struct JobContext {
    pub(crate) store: Arc<dyn ResourceStore>,
    pub(crate) jobs: Arc<dyn JobStore>,
    pub(crate) output: OutputStore,
    pub(crate) config: ExportConfig,
    pub(crate) job_id: JobId,
    pub(crate) owner: String,
    pub(crate) snapshot: Snapshot,
    pub(crate) gzip: bool,
    pub(crate) plan: Plan,
    pub(crate) member_set: HashSet<String>,
    pub(crate) cancel: CancellationToken,
    /// Resources in the files this run of the job finished, for progress.
    pub(crate) written: Arc<AtomicU64>,
    /// `_elements`, when asked for.
    pub(crate) elements: Option<ElementSelection>,
    /// `_typeFilter` queries by type; a resource of a listed type is exported only if one of its
    /// type's queries matches.
    pub(crate) filters: HashMap<ResourceType, Vec<SearchQuery>>,
    /// The caller's narrowing queries by type (granular scopes), AND-ed with `filters`; a
    /// resource of a listed type is exported only if one of its type's queries matches.
    pub(crate) scope_filters: HashMap<ResourceType, Vec<SearchQuery>>,
    /// The types of the supporting resources the plan adds ([`supporting_type_names`]).
    pub(crate) supporting_types: HashSet<&'static str>,
    /// The export level, as a metrics label.
    pub(crate) level: &'static str,
    /// Cancelled when the node shuts down: units stop at their next checkpoint.
    pub(crate) drain: CancellationToken,
    /// `$viewdefinition-export`: the views, by unit `view` index.
    pub(crate) views: Vec<ViewOutput>,
    /// `$viewdefinition-export`: the files' format.
    pub(crate) view_format: Option<TabularFormat>,
}

/// One view of a `$viewdefinition-export`, with what every row and file of it needs, worked
/// out once per job rather than per resource.
pub(crate) struct ViewOutput {
    /// The output name (file stem, manifest name).
    pub(crate) name: String,
    pub(crate) view: ViewDefinition,
    /// The column names, in order (NDJSON keys, the CSV header).
    pub(crate) columns: Vec<String>,
    /// How each column is stored in Parquet.
    pub(crate) kinds: Vec<Kind>,
}

impl ViewOutput {
    pub(crate) fn new(name: String, view: ViewDefinition) -> Self {
        let columns = view.columns().iter().map(|c| c.name.clone()).collect();
        let kinds = view.columns().iter().map(Kind::of).collect();
        ViewOutput { name, view, columns, kinds }
    }
}

/// Whether one of `queries` matches `resource`; true when there are none.
fn any_matches(
    queries: Option<&Vec<SearchQuery>>,
    resource: &StoredResource,
) -> Result<bool, ExportError> {
    let Some(queries) = queries else { return Ok(true) };
    for query in queries {
        match query.matches(&resource.body) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(error) => {
                return Err(ExportError::Unfilterable {
                    resource: format!("{}/{}", resource.resource_type, resource.id),
                    message: error.message,
                });
            }
        }
    }
    Ok(false)
}

impl JobContext {
    /// Whether `resource` passes `_typeFilter` (resources of types without a filter always do)
    /// and the caller's narrowing queries ([`Self::passes_scope`]).
    /// A resource the evaluator cannot read is an error, never "no match": leaving it out
    /// silently would make the export inexact.
    pub(crate) fn passes_filters(&self, resource: &StoredResource) -> Result<bool, ExportError> {
        Ok(any_matches(self.filters.get(&resource.resource_type), resource)?
            && self.passes_scope(resource)?)
    }

    /// Whether `resource` is within the caller's narrowing queries: what every exported
    /// resource must pass, supporting ones included.
    pub(crate) fn passes_scope(&self, resource: &StoredResource) -> Result<bool, ExportError> {
        any_matches(self.scope_filters.get(&resource.resource_type), resource)
    }

    /// After a checkpoint: stop here if the node is shutting down (the job resumes from this
    /// checkpoint on the next start).
    pub(crate) fn check_draining(&self) -> Result<(), ExportError> {
        if self.drain.is_cancelled() { Err(ExportError::Stopped("shutdown")) } else { Ok(()) }
    }

    pub(crate) fn check_cancelled(&self) -> Result<(), ExportError> {
        if self.cancel.is_cancelled() { Err(ExportError::Stopped("cancelled")) } else { Ok(()) }
    }

    pub(crate) fn key(&self, name: &str) -> Result<OutputKey, ExportError> {
        OutputKey::parse(&format!("jobs/{}/{name}", self.job_id)).map_err(ExportError::from)
    }

    pub(crate) fn extension(&self) -> &'static str {
        match self.view_format {
            Some(TabularFormat::Csv) => ".csv",
            Some(TabularFormat::Parquet) => ".parquet",
            Some(_) => ".ndjson",
            None if self.gzip => ".ndjson.gz",
            None => ".ndjson",
        }
    }

    /// Records a finished file in the metrics and the log.
    pub(crate) fn file_finished(&self, name: &str, resources: u64, bytes: u64) {
        let format = match self.view_format {
            Some(TabularFormat::Csv) => "view-csv",
            Some(TabularFormat::Parquet) => "view-parquet",
            Some(_) => "view-ndjson",
            None if self.gzip => "ndjson-gzip",
            None => "ndjson",
        };
        crate::telemetry::file_written(self.level, format, resources, bytes);
        info!(file = name, resources, bytes, "export file finished");
    }

    pub(crate) fn compression(&self) -> Compression {
        if self.gzip {
            Compression::Gzip { level: self.config.gzip_level }
        } else {
            Compression::None
        }
    }
}

/// Runs one unit from its checkpoint to the end and returns the final checkpoint (saved as done).
pub(crate) async fn run_unit(
    ctx: &JobContext,
    index: u32,
    spec: &UnitSpec,
    checkpoint: Checkpoint,
    supporting_refs: &BTreeSet<String>,
) -> Result<Checkpoint, ExportError> {
    if let UnitSpec::Blocks { first, end, part, after_seq } = spec {
        return blocks::run_blocks(ctx, index, checkpoint, (*first, *end), *part, *after_seq).await;
    }
    let mut roller = Roller::new(ctx, index, checkpoint);
    match spec {
        UnitSpec::Blocks { .. } => {}
        UnitSpec::Scan { resource_type, compartment_only, after_seq, .. }
        | UnitSpec::Deleted { resource_type, compartment_only, after_seq } => {
            let deleted = matches!(spec, UnitSpec::Deleted { .. });
            let resource_type = parse_type(resource_type)?;
            let (part, before_seq, members_only) = match spec {
                UnitSpec::Scan { part, before_seq, members_only, .. } => {
                    (*part, *before_seq, *members_only)
                }
                _ => (0, None, false),
            };
            let keep = |r: &StoredResource| !members_only || owner(r, &ctx.member_set).is_some();
            roller.set_file(resource_type, deleted);
            roller.part = part;
            if let UnitSpec::Scan { view: Some(view), .. } = spec {
                roller.set_view(*view)?;
            }
            let options = |after_seq| ScanOptions {
                after_seq,
                limit: ctx.config.page_size,
                deleted,
                in_any_compartment: *compartment_only,
                with_patients: members_only,
                before_seq: before_seq.unwrap_or(u64::MAX),
            };
            let start = (*after_seq).max(roller.checkpoint.cursor);
            let mut page = ctx.store.scan(ctx.snapshot, resource_type, options(start)).await?;
            loop {
                ctx.check_cancelled()?;
                let Some(next) = page.next else {
                    roller.write_page(&page, 0, keep).await?;
                    break;
                };
                // Read the next page while this one is written: the store and the file
                // writer work on different threads.
                let (next_page, written) = tokio::join!(
                    ctx.store.scan(ctx.snapshot, resource_type, options(next)),
                    roller.write_page(&page, 0, keep)
                );
                written?;
                page = next_page?;
            }
        }
        UnitSpec::Members { resource_type, after_seq, .. }
        | UnitSpec::DeletedMembers { resource_type, after_seq } => {
            let deleted = matches!(spec, UnitSpec::DeletedMembers { .. });
            let resource_type = parse_type(resource_type)?;
            roller.set_file(resource_type, deleted);
            if let UnitSpec::Members { view: Some(view), .. } = spec {
                roller.set_view(*view)?;
            }
            let members = &ctx.plan.members;
            let options = |after_seq| ScanOptions {
                after_seq,
                limit: ctx.config.page_size,
                deleted,
                in_any_compartment: true,
                with_patients: true,
                before_seq: u64::MAX,
            };
            // Members are read in batches (one store call covers up to a page of resources
            // over many members); a batch's pages are written while the next batch is read.
            let fetch = |first: usize, after: u64| async move {
                let end = (first + MEMBER_BATCH).min(members.len());
                let ids = members[first..end]
                    .iter()
                    .map(|m| ResourceId::parse(m))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ExportError::Corrupt(e.to_string()))?;
                let pages = ctx
                    .store
                    .scan_compartments(
                        ctx.snapshot,
                        &ids,
                        resource_type,
                        options(after),
                        *after_seq,
                    )
                    .await?;
                if pages.is_empty() {
                    return Err(ExportError::Corrupt(
                        "a compartment batch returned no page".into(),
                    ));
                }
                Ok::<(usize, Vec<ScanPage>), ExportError>((first, pages))
            };
            let mut owners = OwnerCache::default();
            let start_member = roller.checkpoint.member_idx;
            let mut current = if start_member < members.len() {
                Some(fetch(start_member, (*after_seq).max(roller.checkpoint.cursor)).await?)
            } else {
                None
            };
            while let Some((first, pages)) = current.take() {
                ctx.check_cancelled()?;
                // Where the next batch starts: inside the last member when its page was cut
                // short, else at the member after it.
                let last_idx = first + pages.len() - 1;
                let next = match pages.last().and_then(|p| p.next) {
                    Some(after) => Some((last_idx, after)),
                    None if last_idx + 1 < members.len() => Some((last_idx + 1, *after_seq)),
                    None => None,
                };
                let write_batch = async {
                    for (offset, page) in pages.iter().enumerate() {
                        let member_idx = first + offset;
                        let patient = members[member_idx].as_str();
                        let owned = |r: &StoredResource| owners.owns(r, patient, &ctx.member_set);
                        roller.write_page(page, member_idx, owned).await?;
                    }
                    Ok::<(), ExportError>(())
                };
                match next {
                    Some((next_member, after)) => {
                        let (next_batch, written) =
                            tokio::join!(fetch(next_member, after), write_batch);
                        written?;
                        current = Some(next_batch?);
                    }
                    None => write_batch.await?,
                }
            }
        }
        UnitSpec::Provenance { latest, scope } => {
            // Restarting from scratch is exact: the snapshot gives the same Provenance again.
            roller.checkpoint = Checkpoint::default();
            let provenance = parse_type("Provenance")?;
            roller.set_file(provenance, false);
            // Latest: a first pass finds the newest Provenance of each returned resource, a
            // second pass writes the winners in storage order.
            let mut newest: HashMap<String, (Instant, u64)> = HashMap::new();
            let passes = if *latest { 2 } else { 1 };
            for pass in 0..passes {
                let winners: HashSet<u64> = newest.values().map(|(_, seq)| *seq).collect();
                let mut after = 0;
                loop {
                    ctx.check_cancelled()?;
                    let options = ScanOptions::live(after, ctx.config.page_size);
                    let page = ctx.store.scan(ctx.snapshot, provenance, options).await?;
                    if *latest && pass == 1 {
                        roller.write_page(&page, 0, |r| winners.contains(&r.seq)).await?;
                    } else {
                        let docs: Vec<ProvenanceDoc> =
                            page.resources.iter().map(ProvenanceDoc::read).collect();
                        let returned = returned_targets(ctx, scope, &docs).await?;
                        if *latest {
                            for doc in &docs {
                                for target in doc.targets.iter().filter(|t| returned.contains(*t)) {
                                    let entry = newest
                                        .entry(target.clone())
                                        .or_insert((doc.recorded, doc.seq));
                                    if (doc.recorded, doc.seq) > *entry {
                                        *entry = (doc.recorded, doc.seq);
                                    }
                                }
                            }
                        } else {
                            let keep: HashSet<u64> = docs
                                .iter()
                                .filter(|d| d.targets.iter().any(|t| returned.contains(t)))
                                .map(|d| d.seq)
                                .collect();
                            roller.write_page(&page, 0, |r| keep.contains(&r.seq)).await?;
                        }
                    }
                    match page.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
            }
        }
        UnitSpec::Supporting => {
            // Restarting from scratch is exact: the same references give the same files.
            roller.checkpoint = Checkpoint::default();
            roller.apply_filters = false;
            let mut by_type: BTreeMap<ResourceType, Vec<ResourceId>> = BTreeMap::new();
            for reference in supporting_refs {
                if let Some(target) = ResourceRef::parse(reference) {
                    by_type.entry(target.resource_type).or_default().push(target.id);
                }
            }
            for (resource_type, ids) in by_type {
                roller.set_file(resource_type, false);
                for chunk in ids.chunks(ctx.config.page_size.max(1)) {
                    ctx.check_cancelled()?;
                    let mut found =
                        ctx.store.read_many_at(ctx.snapshot, resource_type, chunk).await?;
                    found.sort_by_key(|r| r.seq);
                    let found_ids: HashSet<&str> = found.iter().map(|r| r.id.as_str()).collect();
                    for missing in chunk.iter().filter(|id| !found_ids.contains(id.as_str())) {
                        roller.note(Note::warning(
                            "not-found",
                            format!("referenced {resource_type}/{missing} does not exist at transactionTime"),
                        ));
                    }
                    let page = ScanPage { resources: found, next: None };
                    roller.write_page(&page, 0, |_| true).await?;
                }
                roller.end_file().await?;
            }
        }
    }
    roller.finish().await
}

/// Appends a resource's line (projected when `_elements` applies), without the newline.
pub(crate) fn append_resource(
    ctx: &JobContext,
    out: &mut Vec<u8>,
    resource: &StoredResource,
    checkpoint: &mut Checkpoint,
) {
    let start = out.len();
    match ctx.elements.as_ref().filter(|e| e.applies_to(resource.resource_type)) {
        Some(elements) => {
            if let Err(error) = elements.project_into(resource.resource_type, &resource.body, out) {
                out.truncate(start);
                out.extend_from_slice(&resource.body);
                if checkpoint.issues.len() < 1000 {
                    checkpoint.issues.push(Note::warning(
                        "processing",
                        format!(
                            "{}/{} exported whole: {error}",
                            resource.resource_type, resource.id
                        ),
                    ));
                }
            }
        }
        None => out.extend_from_slice(&resource.body),
    }
}

/// The type names whose references [`collect_supporting`] keeps: outside the compartment, not
/// Group, and allowed by `_type`; empty when the plan adds no supporting resources.
pub(crate) fn supporting_type_names(plan: &Plan) -> HashSet<&'static str> {
    let Some(supporting) = &plan.supporting else { return HashSet::new() };
    ResourceType::all()
        .filter(|t| !compartment::is_compartment_type(*t) && *t != ResourceType::GROUP)
        .filter(|t| {
            supporting.only.as_ref().is_none_or(|only| only.iter().any(|o| o == t.as_str()))
        })
        .map(ResourceType::as_str)
        .collect()
}

/// Adds every `"reference":"Type/id"` in `body` whose target is a supporting resource the plan
/// includes (outside the compartment, allowed by `_type`).
///
/// On the hot path of Patient and Group exports (a Claim has a dozen references): the type is
/// checked against [`JobContext::supporting_types`] and the text against `out` before anything
/// is parsed or allocated.
pub(crate) fn collect_supporting(
    ctx: &JobContext,
    finder: &memmem::Finder<'_>,
    body: &[u8],
    out: &mut BTreeSet<String>,
) {
    if ctx.supporting_types.is_empty() {
        return;
    }
    for start in finder.find_iter(body) {
        let value_start = start + br#""reference":""#.len();
        let Some(len) = memchr::memchr(b'"', &body[value_start..]) else { continue };
        let Ok(text) = std::str::from_utf8(&body[value_start..value_start + len]) else { continue };
        if !text.contains("/_history/") {
            // `[base/]Type/id`: the type is the segment before the last one.
            let mut segments = text.rsplit('/');
            let type_name = segments.nth(1).unwrap_or("");
            if !ctx.supporting_types.contains(type_name) || out.contains(text) {
                continue;
            }
        }
        let Some(target) = ResourceRef::parse(text) else { continue };
        if ctx.supporting_types.contains(target.resource_type.as_str()) {
            out.insert(format!("{}/{}", target.resource_type, target.id));
        }
    }
}

/// What the Provenance unit needs of a Provenance: its targets and when it was recorded.
struct ProvenanceDoc {
    seq: u64,
    /// `Type/id` of each literal target.
    targets: Vec<String>,
    /// `recorded`, or `meta.lastUpdated` when that is missing or unreadable.
    recorded: Instant,
}

impl ProvenanceDoc {
    fn read(resource: &StoredResource) -> Self {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(default)]
            target: Vec<Target>,
            recorded: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Target {
            reference: Option<String>,
        }
        let doc: Option<Doc> = serde_json::from_slice(&resource.body).ok();
        let recorded = doc
            .as_ref()
            .and_then(|d| d.recorded.as_deref())
            .and_then(|r| Instant::parse_fhir(r).ok())
            .unwrap_or(resource.last_updated);
        let targets = doc
            .map(|d| d.target)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| ResourceRef::parse(t.reference.as_deref()?))
            .map(|r| format!("{}/{}", r.resource_type, r.id))
            .collect();
        ProvenanceDoc { seq: resource.seq, targets, recorded }
    }
}

/// Which of the targets of `docs` the export returns (as `Type/id`).
async fn returned_targets(
    ctx: &JobContext,
    scope: &ProvenanceScope,
    docs: &[ProvenanceDoc],
) -> Result<HashSet<String>, ExportError> {
    let mut by_type: BTreeMap<ResourceType, BTreeSet<ResourceId>> = BTreeMap::new();
    for target in docs.iter().flat_map(|d| d.targets.iter()) {
        if let Some(r) = ResourceRef::parse(target) {
            let allowed = scope
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|t| t == r.resource_type.as_str()));
            if allowed {
                by_type.entry(r.resource_type).or_default().insert(r.id);
            }
        }
    }
    let mut returned = HashSet::new();
    for (resource_type, ids) in by_type {
        let ids: Vec<ResourceId> = ids.into_iter().collect();
        for chunk in ids.chunks(ctx.config.page_size.max(1)) {
            for found in ctx.store.read_many_at(ctx.snapshot, resource_type, chunk).await? {
                let in_scope = match scope.compartment {
                    CompartmentScope::None => true,
                    CompartmentScope::Any => found.patients.is_some(),
                    CompartmentScope::Members => owner(&found, &ctx.member_set).is_some(),
                };
                if in_scope {
                    returned.insert(format!("{resource_type}/{}", found.id));
                }
            }
        }
    }
    Ok(returned)
}

pub(crate) fn parse_type(name: &str) -> Result<ResourceType, ExportError> {
    ResourceType::parse(name).map_err(|e| ExportError::Corrupt(e.to_string()))
}

/// The first member (in plan order, which is sorted) whose compartment holds `resource`.
pub(crate) fn owner<'m>(
    resource: &StoredResource,
    members: &'m HashSet<String>,
) -> Option<&'m str> {
    resource
        .patients
        .as_deref()?
        .split(' ')
        .filter_map(|p| members.get(p).map(String::as_str))
        .min()
}

/// Which member writes a resource that is in several members' compartments: the first of them
/// in plan order, so it is written once. Remembered per resource, because such a resource (a
/// Group of every patient, say) comes back once per member and its patient list can be long.
#[derive(Default)]
struct OwnerCache {
    owners: HashMap<u64, Option<String>>,
}

impl OwnerCache {
    /// Entries kept before the cache starts over (it is only a shortcut).
    const MAX_ENTRIES: usize = 100_000;

    /// Whether `patient`, whose compartment page holds `resource`, writes it.
    fn owns(
        &mut self,
        resource: &StoredResource,
        patient: &str,
        members: &HashSet<String>,
    ) -> bool {
        match resource.patients.as_deref() {
            // In one compartment only: the one being read.
            Some(patients) if patients.contains(' ') => {}
            _ => return true,
        }
        if self.owners.len() >= Self::MAX_ENTRIES {
            self.owners.clear();
        }
        self.owners
            .entry(resource.seq)
            .or_insert_with(|| owner(resource, members).map(str::to_owned))
            .as_deref()
            .is_none_or(|o| o == patient)
    }
}

/// Writes lines into numbered files, closing each when full.
struct Roller<'c> {
    ctx: &'c JobContext,
    unit_index: u32,
    checkpoint: Checkpoint,
    resource_type: Option<ResourceType>,
    deleted: bool,
    writer: Option<FileWriter>,
    file_name: String,
    lines_in_file: u64,
    bytes_in_file: u64,
    buffer: Vec<u8>,
    /// References found in the current (unfinished) file.
    pending_refs: BTreeSet<String>,
    pending_notes: Vec<Note>,
    last_seq: u64,
    last_member: usize,
    reference_finder: memmem::Finder<'static>,
    /// `_typeFilter` applies (not to supporting resources, which are there for context).
    apply_filters: bool,
    /// The key-range part of a split type (files `Type-p{part}-{n}` from part 2 on).
    part: u32,
    /// `$viewdefinition-export`: the view whose rows this unit writes (index in `ctx.views`).
    view: Option<usize>,
    /// Parquet: the current file's rows, encoded when the file closes (a Parquet file is
    /// written whole).
    parquet_rows: Option<parquet::Rows>,
}

impl<'c> Roller<'c> {
    fn new(ctx: &'c JobContext, unit_index: u32, checkpoint: Checkpoint) -> Self {
        Roller {
            ctx,
            unit_index,
            last_seq: checkpoint.cursor,
            last_member: checkpoint.member_idx,
            checkpoint,
            resource_type: None,
            deleted: false,
            writer: None,
            file_name: String::new(),
            lines_in_file: 0,
            bytes_in_file: 0,
            buffer: Vec::with_capacity(WRITE_CHUNK + 64 * 1024),
            pending_refs: BTreeSet::new(),
            pending_notes: Vec::new(),
            reference_finder: memmem::Finder::new(br#""reference":""#),
            apply_filters: true,
            part: 0,
            view: None,
            parquet_rows: None,
        }
    }

    /// The unit writes the rows of view `index` instead of resources.
    fn set_view(&mut self, index: u32) -> Result<(), ExportError> {
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        if index >= self.ctx.views.len() {
            return Err(ExportError::Corrupt(format!(
                "a unit names view {index}, which the job lacks"
            )));
        }
        self.view = Some(index);
        Ok(())
    }

    /// The name files and the manifest use for this unit's output.
    fn output_name(&self) -> &str {
        match self.view.and_then(|i| self.ctx.views.get(i)) {
            Some(output) => &output.name,
            None => self.resource_type.map_or("unknown", ResourceType::as_str),
        }
    }

    fn set_file(&mut self, resource_type: ResourceType, deleted: bool) {
        self.resource_type = Some(resource_type);
        self.deleted = deleted;
    }

    fn stem(&self) -> String {
        let name = self.output_name();
        match (self.deleted, self.part) {
            (true, _) => format!("{name}-deleted"),
            (false, 0 | 1) => name.to_owned(),
            (false, part) => format!("{name}-p{part}"),
        }
    }

    fn note(&mut self, note: Note) {
        if self.checkpoint.issues.len() + self.pending_notes.len() < 1000 {
            self.pending_notes.push(note);
        }
    }

    /// Writes the resources of `page` that `keep` accepts.
    async fn write_page(
        &mut self,
        page: &ScanPage,
        member_idx: usize,
        mut keep: impl FnMut(&StoredResource) -> bool,
    ) -> Result<(), ExportError> {
        let collect_refs = !self.ctx.supporting_types.is_empty() && !self.deleted;
        let project = self
            .ctx
            .elements
            .as_ref()
            .filter(|e| self.resource_type.is_some_and(|t| e.applies_to(t)) && !self.deleted);
        // A deleted resource has no body to match against narrowing queries: a type they
        // narrow lists no deletions (the kick-off says so in the error file).
        let narrowed = self.resource_type.is_some_and(|t| self.ctx.scope_filters.contains_key(&t));
        if self.deleted && narrowed {
            return Ok(());
        }
        for resource in page.resources.iter() {
            if !keep(resource) {
                continue;
            }
            let passes = match (self.deleted, self.apply_filters) {
                (true, _) => true,
                (false, true) => self.ctx.passes_filters(resource)?,
                (false, false) => self.ctx.passes_scope(resource)?,
            };
            if !passes {
                continue;
            }
            let before = self.buffer.len();
            // Bytes the line(s) take that are not in the buffer (Parquet rows, held as cells).
            let mut held = 0;
            let lines = if let Some(index) = self.view {
                let (rows, bytes) = self.view_rows(index, resource)?;
                held = bytes;
                rows
            } else if self.deleted {
                write_deletion_line(&mut self.buffer, resource);
                1
            } else {
                let line_start = self.buffer.len();
                match project {
                    Some(elements) => {
                        if let Err(error) = elements.project_into(
                            resource.resource_type,
                            &resource.body,
                            &mut self.buffer,
                        ) {
                            // Never lose a resource: export it whole and say why.
                            self.buffer.truncate(line_start);
                            self.buffer.extend_from_slice(&resource.body);
                            self.note(Note::warning(
                                "processing",
                                format!(
                                    "{}/{} exported whole: {error}",
                                    resource.resource_type, resource.id
                                ),
                            ));
                        }
                    }
                    None => self.buffer.extend_from_slice(&resource.body),
                }
                self.buffer.push(b'\n');
                if collect_refs {
                    self.collect_references(&resource.body);
                }
                1
            };
            if lines == 0 {
                // A view that gives no row for this resource.
                continue;
            }
            self.lines_in_file += lines;
            self.bytes_in_file +=
                if self.deleted { 0 } else { (self.buffer.len() - before) as u64 + held };
            self.last_seq = resource.seq;
            self.last_member = member_idx;
            if self.lines_in_file >= self.ctx.config.max_resources_per_file
                || self.bytes_in_file >= self.ctx.config.max_bytes_per_file
            {
                self.end_file().await?;
            } else if self.buffer.len() >= WRITE_CHUNK {
                self.flush().await?;
            }
        }
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Appends the rows of view `index` for `resource` to the buffer (or, for Parquet, to the
    /// file's rows); how many rows, and the bytes held outside the buffer.
    fn view_rows(
        &mut self,
        index: usize,
        resource: &StoredResource,
    ) -> Result<(u64, u64), ExportError> {
        let Some(output) = self.ctx.views.get(index) else {
            return Err(ExportError::Corrupt(format!("no view {index}")));
        };
        // Only the elements the view can read are built: the rows are the same.
        let value = output.view.parse_resource(&resource.body).map_err(|e| {
            ExportError::Corrupt(format!(
                "{}/{} is not readable JSON: {e}",
                resource.resource_type, resource.id
            ))
        })?;
        // A view that cannot run on a stored resource fails the export with the reason: leaving
        // the resource out would make the rows inexact.
        let failed = |message: String| ExportError::View {
            view: output.name.clone(),
            resource: format!("{}/{}", resource.resource_type, resource.id),
            message,
        };
        let rows = output.view.rows_borrowed(&value).map_err(|e| failed(e.to_string()))?;
        let count = rows.len() as u64;
        match self.ctx.view_format {
            Some(TabularFormat::Parquet) => {
                let mut held = 0;
                let file =
                    self.parquet_rows.get_or_insert_with(|| parquet::Rows::new(&output.kinds));
                for row in &rows {
                    held += file.push(row).map_err(|(index, message)| {
                        let column = output.columns.get(index).map_or("?", String::as_str);
                        failed(format!("column {column}: {message}"))
                    })?;
                }
                Ok((count, held))
            }
            Some(TabularFormat::Csv) => {
                rows.iter().for_each(|row| tabular::csv_row(row, &mut self.buffer));
                Ok((count, 0))
            }
            _ => {
                rows.iter()
                    .for_each(|row| tabular::ndjson_row(&output.columns, row, &mut self.buffer));
                Ok((count, 0))
            }
        }
    }

    /// Records the supporting resources `body` references.
    fn collect_references(&mut self, body: &[u8]) {
        collect_supporting(self.ctx, &self.reference_finder, body, &mut self.pending_refs);
    }

    async fn flush(&mut self) -> Result<(), ExportError> {
        if self.writer.is_none() {
            let number = 1 + self
                .checkpoint
                .files
                .iter()
                .filter(|f| file_stem(&f.name) == self.stem())
                .count();
            self.file_name = format!("{}-{number}{}", self.stem(), self.ctx.extension());
            let key = self.ctx.key(&self.file_name)?;
            let mut writer = self.ctx.output.create(&key, self.ctx.compression()).await?;
            // Every CSV file of a view starts with the header line.
            if let (Some(index), Some(TabularFormat::Csv)) = (self.view, self.ctx.view_format)
                && let Some(output) = self.ctx.views.get(index)
            {
                let mut header = Vec::new();
                tabular::csv_header(&output.columns, &mut header);
                writer.write(&header).await?;
            }
            self.writer = Some(writer);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.write(&self.buffer).await?;
        }
        self.buffer.clear();
        Ok(())
    }

    /// Closes the current file (if it has lines) and checkpoints; then stops the unit if the
    /// node is shutting down.
    async fn end_file(&mut self) -> Result<(), ExportError> {
        self.close_file().await?;
        self.ctx.check_draining()
    }

    /// Closes the current file (if it has lines) and checkpoints.
    async fn close_file(&mut self) -> Result<(), ExportError> {
        if self.lines_in_file == 0 {
            return Ok(());
        }
        if let Some(output) = self.view.and_then(|i| self.ctx.views.get(i))
            && self.ctx.view_format == Some(TabularFormat::Parquet)
        {
            // The whole file, encoded at once, off the async threads; nothing else is ever in
            // the buffer of a Parquet unit, so the encoded bytes become the buffer (no copy).
            let rows =
                self.parquet_rows.take().unwrap_or_else(|| parquet::Rows::new(&output.kinds));
            let (names, kinds) = (output.columns.clone(), output.kinds.clone());
            let encoded =
                tokio::task::spawn_blocking(move || parquet::encode(&names, &kinds, rows))
                    .await
                    .map_err(|e| {
                        ExportError::Corrupt(format!("the Parquet encoder stopped: {e}"))
                    })?;
            self.buffer = encoded
                .map_err(|e| ExportError::Corrupt(format!("a Parquet file of a view: {e}")))?;
        }
        self.flush().await?;
        let Some(writer) = self.writer.take() else { return Ok(()) };
        let finished = writer.finish().await?;
        self.ctx.file_finished(&self.file_name, self.lines_in_file, finished.stored_bytes);
        // Progress counts the resources in finished files: a file of 1 or of 100,000.
        self.ctx.written.fetch_add(self.lines_in_file, Ordering::Relaxed);
        self.checkpoint.files.push(FileEntry {
            name: std::mem::take(&mut self.file_name),
            resource_type: if self.deleted {
                "Bundle".to_owned()
            } else {
                self.output_name().to_owned()
            },
            count: self.lines_in_file,
            bytes: finished.stored_bytes,
            kind: if self.deleted { FileKind::Deleted } else { FileKind::Output },
            continues_in: None,
        });
        self.checkpoint.written += self.lines_in_file;
        self.checkpoint.cursor = self.last_seq;
        self.checkpoint.member_idx = self.last_member;
        let refs = std::mem::take(&mut self.pending_refs);
        merge_sorted(&mut self.checkpoint.references, refs);
        self.checkpoint.issues.append(&mut self.pending_notes);
        self.lines_in_file = 0;
        self.bytes_in_file = 0;
        save(self.ctx, self.unit_index, &self.checkpoint, false).await
    }

    async fn finish(mut self) -> Result<Checkpoint, ExportError> {
        self.close_file().await?;
        self.checkpoint.issues.append(&mut self.pending_notes);
        let refs = std::mem::take(&mut self.pending_refs);
        merge_sorted(&mut self.checkpoint.references, refs);
        save(self.ctx, self.unit_index, &self.checkpoint, true).await?;
        Ok(self.checkpoint)
    }
}

/// Saves a checkpoint (fenced by the lease). A free function: the roller holds a file writer
/// that is `Send` but not `Sync`, so no `&Roller` may live across an await.
pub(crate) async fn save(
    ctx: &JobContext,
    unit_index: u32,
    checkpoint: &Checkpoint,
    done: bool,
) -> Result<(), ExportError> {
    let json = serde_json::to_string(checkpoint).map_err(corrupt)?;
    ctx.jobs.checkpoint(&ctx.job_id, &ctx.owner, unit_index, &json, done).await?;
    Ok(())
}

/// `Observation-deleted-3.ndjson` → `Observation-deleted`.
fn file_stem(name: &str) -> &str {
    let base = name.split('.').next().unwrap_or(name);
    base.rsplit_once('-').map_or(base, |(stem, _)| stem)
}

fn merge_sorted(into: &mut Vec<String>, more: BTreeSet<String>) {
    if more.is_empty() {
        return;
    }
    let mut all: BTreeSet<String> = std::mem::take(into).into_iter().collect();
    all.extend(more);
    *into = all.into_iter().collect();
}

/// One line of a `deleted` file: a transaction Bundle with one DELETE entry (spec X4).
fn write_deletion_line(out: &mut Vec<u8>, resource: &StoredResource) {
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"#);
    write_json_string(out, &format!("{}/{}", resource.resource_type, resource.id));
    out.extend_from_slice(b"}}]}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_strip_the_number_and_extension() {
        assert_eq!(file_stem("Observation-12.ndjson"), "Observation");
        assert_eq!(file_stem("Observation-deleted-3.ndjson.gz"), "Observation-deleted");
    }
}
