//! Kick-off planning: from a parsed request and a snapshot to the job's plan and units.
//!
//! Everything that depends on data is decided here, against the snapshot, so that a resumed job
//! does exactly what the first run would have: Group membership (nested Groups followed,
//! `inactive` members skipped), which patients exist, and the cursor `_since` maps to.

use std::collections::{BTreeSet, HashSet};

use bulkfhir_model::{
    ResourceId, ResourceRef, ResourceType, compartment,
    export::{ExportLevel, ExportRequest},
};
use bulkfhir_store::{ResourceStore, Snapshot};
use serde::Deserialize;

use crate::{
    ExportError,
    docs::{CompartmentScope, Note, Plan, ProvenanceScope, SupportingTypes, UnitSpec},
};

/// How deep nested Groups are followed.
const MAX_GROUP_DEPTH: usize = 16;

/// Plans `request` as of `snapshot`.
pub(crate) async fn plan(
    store: &dyn ResourceStore,
    request: &ExportRequest,
    snapshot: Snapshot,
    key_range_span: u64,
    lenient: bool,
) -> Result<(Plan, Vec<UnitSpec>), ExportError> {
    let since_seq = match request.since {
        Some(since) => store.seq_at(since).await?,
        None => 0,
    };
    let mut plan = Plan::default();
    plan.notes
        .extend(request.lenient_notes.iter().map(|n| Note::warning("not-supported", n.clone())));
    let requested = |t: ResourceType| request.types.as_ref().is_none_or(|types| types.contains(&t));
    let provenance = ResourceType::parse("Provenance").ok();
    let provenance_requested = provenance.is_some_and(requested);
    // includeAssociatedData: the least restrictive value wins (Relevant over Latest).
    let associated = &request.include_associated_data;
    let latest_only = associated.iter().any(|v| v == "LatestProvenanceResources")
        && !associated.iter().any(|v| v == "RelevantProvenanceResources");
    let explicit_provenance = !associated.is_empty();
    let mut units = Vec::new();
    let by_members = match &request.level {
        ExportLevel::System => {
            for resource_type in ResourceType::all().filter(|t| requested(*t)) {
                // Types with no version at or after `_since` have nothing to export or delete.
                let Some((low, high)) = store.seq_bounds(snapshot, resource_type).await? else {
                    continue;
                };
                if high <= since_seq {
                    continue;
                }
                let name = resource_type.as_str().to_owned();
                // With includeAssociatedData, the Provenance unit chooses the Provenance.
                if !(explicit_provenance && Some(resource_type) == provenance) {
                    let first = low.max(since_seq + 1);
                    units.extend(range_scans(&name, false, first, high, key_range_span));
                }
                if request.since.is_some() {
                    units.push(UnitSpec::Deleted {
                        resource_type: name,
                        compartment_only: false,
                        after_seq: since_seq,
                    });
                }
            }
            if explicit_provenance {
                let scope = ProvenanceScope {
                    only: type_names(request),
                    compartment: CompartmentScope::None,
                };
                units.push(UnitSpec::Provenance { latest: latest_only, scope });
            }
            return Ok((plan, units));
        }
        ExportLevel::Patient if request.patients.is_empty() => false,
        ExportLevel::Patient => {
            plan.members =
                existing_patients(store, snapshot, &request.patients, &mut plan.notes).await?;
            true
        }
        ExportLevel::Group(group_id) => {
            let members = group_members(store, snapshot, group_id, &mut plan.notes).await?;
            let members = if request.patients.is_empty() {
                members
            } else {
                let member_set: HashSet<&ResourceId> = members.iter().collect();
                let outside: Vec<String> = request
                    .patients
                    .iter()
                    .filter(|p| !member_set.contains(p))
                    .map(|p| format!("Patient/{p}"))
                    .collect();
                if !outside.is_empty() && !lenient {
                    return Err(ExportError::invalid(
                        format!("not members of Group/{group_id}: {}", outside.join(", ")),
                        Some("patient"),
                    ));
                }
                // Under handling=lenient, as at Patient level: left out, and reported.
                for patient in &outside {
                    plan.notes.push(Note::warning(
                        "not-found",
                        format!("{patient} is not a member of Group/{group_id}; it was left out"),
                    ));
                }
                request.patients.iter().filter(|p| member_set.contains(p)).cloned().collect()
            };
            plan.members = existing_patients(store, snapshot, &members, &mut plan.notes).await?;
            true
        }
    };
    if request.organize_output_by.is_some() {
        return plan_blocks(store, request, snapshot, since_seq, by_members, plan).await;
    }
    // K17: Provenance targeting anything in the compartment, not only the Patient itself.
    let provenance_unit = explicit_provenance || provenance_requested;
    for resource_type in compartment::compartment_types().into_iter().filter(|t| requested(*t)) {
        // As at system level: a type with no version after `_since` has nothing to export or
        // delete (for a Group, this saves one compartment query per member).
        let Some((low, high)) = store.seq_bounds(snapshot, resource_type).await? else {
            continue;
        };
        if high <= since_seq {
            continue;
        }
        let name = resource_type.as_str().to_owned();
        if provenance_unit && Some(resource_type) == provenance {
            if request.since.is_some() {
                units.push(if by_members {
                    UnitSpec::DeletedMembers { resource_type: name, after_seq: since_seq }
                } else {
                    UnitSpec::Deleted {
                        resource_type: name,
                        compartment_only: true,
                        after_seq: since_seq,
                    }
                });
            }
            continue;
        }
        if by_members {
            // Few versions of this type (at most 4 per member): one pass over them, keeping
            // the members', costs less than a lookup per member. The key range bounds the
            // count for free; otherwise the key index counts at most SMALL_TYPE_PROBE of them.
            // Versions, not live resources: a pass reads every version in its range.
            let few = u64::try_from(plan.members.len()).unwrap_or(u64::MAX).saturating_mul(4);
            let span = high.saturating_sub(low.max(since_seq + 1)) + 1;
            let limit = few.min(SMALL_TYPE_PROBE);
            let small = span <= few
                || store.count_versions(snapshot, resource_type, since_seq, limit + 1).await?
                    <= limit;
            if small {
                units.push(UnitSpec::Scan {
                    resource_type: name.clone(),
                    compartment_only: true,
                    after_seq: low.max(since_seq + 1) - 1,
                    part: 0,
                    before_seq: Some(high + 1),
                    members_only: true,
                    view: None,
                });
            } else {
                units.push(UnitSpec::Members {
                    resource_type: name.clone(),
                    after_seq: since_seq,
                    span: Some(span),
                    view: None,
                });
            }
            if request.since.is_some() {
                units.push(UnitSpec::DeletedMembers { resource_type: name, after_seq: since_seq });
            }
        } else {
            let first = low.max(since_seq + 1);
            units.extend(range_scans(&name, true, first, high, key_range_span));
            if request.since.is_some() {
                units.push(UnitSpec::Deleted {
                    resource_type: name,
                    compartment_only: true,
                    after_seq: since_seq,
                });
            }
        }
    }
    plan.supporting = supporting_types(request);
    if plan.supporting.is_some() {
        units.push(UnitSpec::Supporting);
    }
    if provenance_unit {
        let compartment =
            if by_members { CompartmentScope::Members } else { CompartmentScope::Any };
        let scope = ProvenanceScope { only: type_names(request), compartment };
        units.push(UnitSpec::Provenance { latest: latest_only, scope });
    }
    Ok((plan, units))
}

/// The most versions a kick-off counts to decide that a type is small (see `plan`): bounds the
/// kick-off's time for Groups of any size.
const SMALL_TYPE_PROBE: u64 = 10_000;

/// Members per `Blocks` unit.
const MEMBERS_PER_BLOCK_UNIT: usize = 1000;

/// `organizeOutputBy=Patient`: one block per patient (its compartment, then the supporting
/// resources it references, repeated in each block that references them), in units of
/// consecutive members; deletions stay in their own `deleted` files.
async fn plan_blocks(
    store: &dyn ResourceStore,
    request: &ExportRequest,
    snapshot: Snapshot,
    since_seq: u64,
    by_members: bool,
    mut plan: Plan,
) -> Result<(Plan, Vec<UnitSpec>), ExportError> {
    let requested = |t: ResourceType| request.types.as_ref().is_none_or(|types| types.contains(&t));
    if !by_members {
        plan.members = all_patients(store, snapshot).await?;
    }
    plan.block_patient = requested(ResourceType::PATIENT);
    plan.block_types = compartment::compartment_types()
        .into_iter()
        .filter(|t| *t != ResourceType::PATIENT && requested(*t))
        .map(|t| t.as_str().to_owned())
        .collect();
    plan.supporting = supporting_types(request);
    let mut units = Vec::new();
    let n_members = plan.members.len();
    for (part, first) in (0..n_members).step_by(MEMBERS_PER_BLOCK_UNIT).enumerate() {
        let end = (first + MEMBERS_PER_BLOCK_UNIT).min(n_members);
        let part = u32::try_from(part + 1).unwrap_or(u32::MAX);
        units.push(UnitSpec::Blocks { first, end, part, after_seq: since_seq });
    }
    if request.since.is_some() {
        for resource_type in compartment::compartment_types().into_iter().filter(|t| requested(*t))
        {
            units.push(UnitSpec::DeletedMembers {
                resource_type: resource_type.as_str().to_owned(),
                after_seq: since_seq,
            });
        }
    }
    Ok((plan, units))
}

/// Every live Patient id as of the snapshot, sorted.
async fn all_patients(
    store: &dyn ResourceStore,
    snapshot: Snapshot,
) -> Result<Vec<String>, ExportError> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .scan(snapshot, ResourceType::PATIENT, bulkfhir_store::ScanOptions::live(after, 5000))
            .await?;
        ids.extend(page.resources.iter().map(|r| r.id.to_string()));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    ids.sort();
    Ok(ids)
}

/// `Scan` units reading `resource_type` over the key range `first..=last` in parts of at most
/// `span` sequence numbers ([`key_ranges`]).
fn range_scans(
    resource_type: &str,
    compartment_only: bool,
    first: u64,
    last: u64,
    span: u64,
) -> impl Iterator<Item = UnitSpec> + '_ {
    key_ranges(first, last, span).into_iter().map(move |(part, after_seq, before_seq)| {
        UnitSpec::Scan {
            resource_type: resource_type.to_owned(),
            compartment_only,
            after_seq,
            part,
            before_seq,
            members_only: false,
            view: None,
        }
    })
}

/// A `$viewdefinition-export` plan from the plan of a resource export of the views' types:
/// each unit that reads resources of a type becomes one unit per view over that type (a view
/// writes its own files); deletions, supporting resources and Provenance have no place in a
/// view's rows and go.
pub(crate) fn for_views(units: Vec<UnitSpec>, view_types: &[ResourceType]) -> Vec<UnitSpec> {
    let mut out = Vec::new();
    for unit in units {
        let resource_type = match &unit {
            UnitSpec::Scan { resource_type, .. } | UnitSpec::Members { resource_type, .. } => {
                resource_type.clone()
            }
            _ => continue,
        };
        for (index, view_type) in view_types.iter().enumerate() {
            if view_type.as_str() != resource_type {
                continue;
            }
            let index = u32::try_from(index).ok();
            let mut copy = unit.clone();
            match &mut copy {
                UnitSpec::Scan { view, .. } | UnitSpec::Members { view, .. } => *view = index,
                _ => {}
            }
            out.push(copy);
        }
    }
    out
}

/// Splits the key range `first..=last` into parts of at most `span` sequence numbers (at most
/// 256 parts: a wider range gets wider parts):
/// `(part, after_seq, before_seq)` with parts numbered from 1, or one part 0 when no split is
/// needed. The parts are disjoint and cover the range, so each resource is read by one unit;
/// every part has an end, which also tells the runner how large it is.
fn key_ranges(first: u64, last: u64, span: u64) -> Vec<(u32, u64, Option<u64>)> {
    let width = last.saturating_sub(first) + 1;
    let span = span.max(1);
    let n_parts = width.div_ceil(span).min(256);
    if n_parts <= 1 {
        return vec![(0, first - 1, Some(last + 1))];
    }
    let step = width.div_ceil(n_parts);
    (0..n_parts)
        .map(|idx| {
            let start = first + idx * step;
            let end = (start + step).min(last + 1);
            (u32::try_from(idx + 1).unwrap_or(u32::MAX), start - 1, Some(end))
        })
        .filter(|(_, after, end)| end.is_some_and(|end| end > after + 1))
        .collect()
}

/// The supporting (referenced, outside the compartment) types a Patient or Group export adds:
/// all when `_type` is absent, else those of `_type` outside the compartment, or none.
fn supporting_types(request: &ExportRequest) -> Option<SupportingTypes> {
    match &request.types {
        None => Some(SupportingTypes { only: None }),
        Some(types) => {
            let outside: Vec<String> = types
                .iter()
                .filter(|t| !compartment::is_compartment_type(**t))
                .map(|t| t.as_str().to_owned())
                .collect();
            (!outside.is_empty()).then_some(SupportingTypes { only: Some(outside) })
        }
    }
}

/// `_type` as names, when given.
fn type_names(request: &ExportRequest) -> Option<Vec<String>> {
    request.types.as_ref().map(|types| types.iter().map(|t| t.as_str().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::key_ranges;

    #[test]
    fn key_ranges_cover_the_range_once() {
        assert_eq!(key_ranges(5, 10, 100), [(0, 4, Some(11))]);
        let parts = key_ranges(1, 1000, 300);
        assert_eq!(parts.len(), 4);
        let mut covered = Vec::new();
        for (part, after, before) in &parts {
            assert!(*part >= 1);
            covered.extend(after + 1..before.unwrap());
        }
        assert_eq!(covered, (1..=1000).collect::<Vec<u64>>());
        let one = key_ranges(7, 7, 1);
        assert_eq!(one, [(0, 6, Some(8))]);
    }
}

#[derive(Deserialize)]
struct GroupDoc {
    #[serde(default)]
    member: Vec<GroupMember>,
}

#[derive(Deserialize)]
struct GroupMember {
    entity: Option<ReferenceDoc>,
    #[serde(default)]
    inactive: bool,
}

#[derive(Deserialize)]
struct ReferenceDoc {
    reference: Option<String>,
}

/// The patient members of `Group/{group_id}` as of `snapshot`, nested Groups included (inactive
/// members and members that are neither Patients nor Groups left out), sorted and unique: the
/// members a Group-level export covers, for other readers of the server's data (`$run`).
pub async fn group_patients(
    store: &dyn ResourceStore,
    snapshot: Snapshot,
    group_id: &ResourceId,
) -> Result<Vec<ResourceId>, ExportError> {
    group_members(store, snapshot, group_id, &mut Vec::new()).await
}

/// The Group's patient members as of `snapshot`, nested Groups included, sorted and unique.
async fn group_members(
    store: &dyn ResourceStore,
    snapshot: Snapshot,
    group_id: &ResourceId,
    notes: &mut Vec<Note>,
) -> Result<Vec<ResourceId>, ExportError> {
    let mut patients = BTreeSet::new();
    let mut visited = HashSet::new();
    let mut pending = vec![(group_id.clone(), 0usize)];
    while let Some((id, depth)) = pending.pop() {
        if !visited.insert(id.clone()) {
            continue;
        }
        let found =
            store.read_many_at(snapshot, ResourceType::GROUP, std::slice::from_ref(&id)).await?;
        let Some(group) = found.into_iter().next() else {
            if &id == group_id {
                return Err(ExportError::NotFound(format!("Group/{id} not found")));
            }
            notes.push(Note::warning(
                "not-found",
                format!("nested Group/{id} not found; its members are not exported"),
            ));
            continue;
        };
        let doc: GroupDoc = serde_json::from_slice(&group.body).map_err(|e| {
            ExportError::invalid(format!("Group/{id} cannot be read as a Group: {e}"), None)
        })?;
        for member in doc.member {
            if member.inactive {
                continue;
            }
            let Some(reference) = member.entity.and_then(|e| e.reference) else { continue };
            match ResourceRef::parse(&reference) {
                Some(target) if target.resource_type == ResourceType::PATIENT => {
                    patients.insert(target.id);
                }
                Some(target) if target.resource_type == ResourceType::GROUP => {
                    if depth + 1 > MAX_GROUP_DEPTH {
                        notes.push(Note::warning(
                            "too-costly",
                            format!("Group/{} is nested too deeply; skipped", target.id),
                        ));
                    } else {
                        pending.push((target.id, depth + 1));
                    }
                }
                _ => notes.push(Note::warning(
                    "not-supported",
                    format!("Group/{id} member '{reference}' is not a Patient or Group; skipped"),
                )),
            }
        }
    }
    Ok(patients.into_iter().collect())
}

/// Keeps the patients that exist as of the snapshot; each missing one becomes an error note.
async fn existing_patients(
    store: &dyn ResourceStore,
    snapshot: Snapshot,
    candidates: &[ResourceId],
    notes: &mut Vec<Note>,
) -> Result<Vec<String>, ExportError> {
    let mut wanted: Vec<ResourceId> = candidates.to_vec();
    wanted.sort();
    wanted.dedup();
    let mut existing = BTreeSet::new();
    for chunk in wanted.chunks(500) {
        for found in store.read_many_at(snapshot, ResourceType::PATIENT, chunk).await? {
            existing.insert(found.id.to_string());
        }
    }
    for missing in wanted.iter().filter(|p| !existing.contains(p.as_str())) {
        notes.push(Note::error(
            "not-found",
            format!("Patient/{missing} does not exist; nothing exported for it"),
        ));
    }
    Ok(existing.into_iter().collect())
}
