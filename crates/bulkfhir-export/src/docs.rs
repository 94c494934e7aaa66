//! The JSON documents an export keeps in the job store: the request, the plan, each unit's spec
//! and checkpoint, and the manifest. The job store never reads them.

use serde::{Deserialize, Serialize};

/// The kick-off, as kept with the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRequest {
    /// `system`, `patient` or `group`.
    pub level: String,
    /// The Group's id for a Group export.
    pub group_id: Option<String>,
    /// True for `.ndjson.gz` output.
    pub gzip: bool,
    /// `_since`, as a FHIR instant.
    pub since: Option<String>,
    /// `_type`, when given.
    pub types: Option<Vec<String>>,
    /// `patient` ids, when given.
    pub patients: Vec<String>,
    /// The kick-off URL exactly as received (the manifest's `request`).
    pub request_url: String,
    /// The FHIR base URL the kick-off came to; file and status URLs are built on it.
    pub base_url: String,
    /// `_until`, as a FHIR instant (v3).
    #[serde(default)]
    pub until: Option<String>,
    /// The client asked for `Prefer: separate-export-status` (v3): status answers are 200 with
    /// the job's state in `X-Export-Status`.
    #[serde(default)]
    pub separate_status: bool,
    /// `allowPartialManifests=true` (v3): files are listed as they finish, in chained pages.
    #[serde(default)]
    pub partial_manifests: bool,
    /// `_elements` items (checked at kick-off).
    #[serde(default)]
    pub elements: Vec<String>,
    /// `_typeFilter` queries (checked at kick-off), as `Type?params`.
    #[serde(default)]
    pub type_filters: Vec<String>,
    /// `organizeOutputBy` (v3), when honoured: `Patient`.
    #[serde(default)]
    pub organize_output_by: Option<String>,
    /// The caller's narrowing queries ([`ExportBound::required`](crate::ExportBound)), as
    /// `Type?params`: AND-ed with `_typeFilter`, applied to supporting resources too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope_filters: Vec<String>,
    /// The kick-off's own destination (an allow-listed URL), when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// `$viewdefinition-export`: the views whose rows the files hold (checked at kick-off),
    /// instead of resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<StoredView>,
    /// `$viewdefinition-export`: `csv` or `ndjson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_format: Option<String>,
    /// `$viewdefinition-export`: the client's `clientTrackingId`, echoed in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tracking_id: Option<String>,
}

/// One view of a `$viewdefinition-export`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredView {
    /// The output name (`view.name`, else the ViewDefinition's `name`): its files are
    /// `{name}-{n}.csv` or `.ndjson`, listed under this name.
    pub name: String,
    /// The ViewDefinition resource.
    pub view: serde_json::Value,
}

/// What a job does, fixed at kick-off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Patients whose compartments a Patient (with `patient`) or Group export covers, sorted.
    pub(crate) members: Vec<String>,
    /// Problems found while planning (missing members, ignored parameters): error file lines.
    pub(crate) notes: Vec<Note>,
    /// Export resources referenced from compartment resources whose types are outside the
    /// compartment (Practitioner, Organization, Location…), limited to these types when set.
    pub(crate) supporting: Option<SupportingTypes>,
    /// `organizeOutputBy=Patient`: the compartment types each block holds after the Patient.
    #[serde(default)]
    pub(crate) block_types: Vec<String>,
    /// `organizeOutputBy=Patient`: whether blocks hold the Patient resource itself.
    #[serde(default)]
    pub(crate) block_patient: bool,
}

/// Which supporting (referenced, non-compartment) types to include.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SupportingTypes {
    /// None = every type outside the compartment.
    pub(crate) only: Option<Vec<String>>,
}

/// One unit of work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum UnitSpec {
    /// Every live resource of a type (system level), every one in some compartment (Patient
    /// level without `patient`), or, with `members_only`, every one in a plan member's
    /// compartment (a type with few resources in a Group or `patient` export).
    /// A large type is split into key ranges (`part` from 1, `before_seq` exclusive) that run
    /// at once; part 0 is the whole type.
    Scan {
        resource_type: String,
        compartment_only: bool,
        after_seq: u64,
        #[serde(default)]
        part: u32,
        #[serde(default)]
        before_seq: Option<u64>,
        /// Only resources in the compartment of one of the plan's members: a Group or
        /// `patient` export reads a type with few resources this way rather than once per
        /// member (a Group of every patient is in every member's compartment).
        #[serde(default)]
        members_only: bool,
        /// `$viewdefinition-export`: the index of the view whose rows this unit writes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view: Option<u32>,
    },
    /// The compartments of the plan's members, for one type.
    Members {
        resource_type: String,
        after_seq: u64,
        /// The width of the type's key range at kick-off: the largest types start first.
        /// (Missing in jobs kicked off before it existed: those run before every other unit.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        span: Option<u64>,
        /// As in `Scan`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view: Option<u32>,
    },
    /// Deletions after `_since` of one type (as `Scan`).
    Deleted { resource_type: String, compartment_only: bool, after_seq: u64 },
    /// Deletions after `_since` in the members' compartments.
    DeletedMembers { resource_type: String, after_seq: u64 },
    /// Resources outside the compartment referenced by the other units' output; runs last.
    Supporting,
    /// `organizeOutputBy=Patient`: blocks for members `first..end` (one file series per unit).
    Blocks { first: usize, end: usize, part: u32, after_seq: u64 },
    /// Provenance for the returned resources (K17 and `includeAssociatedData`); runs last.
    Provenance {
        /// Only the newest Provenance per returned resource (`LatestProvenanceResources`).
        latest: bool,
        /// Which targets count as returned.
        scope: ProvenanceScope,
    },
}

/// Which resources a Provenance unit treats as returned by the export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProvenanceScope {
    /// Only resources of these types (None: every type), as `_type` asked.
    pub(crate) only: Option<Vec<String>>,
    /// Which compartments count.
    pub(crate) compartment: CompartmentScope,
}

/// The compartment condition of a [`ProvenanceScope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum CompartmentScope {
    /// Any live resource (system export).
    None,
    /// Resources in any patient's compartment (Patient export).
    Any,
    /// Resources in the compartment of one of the plan's members (Group, or `patient`).
    Members,
}

impl UnitSpec {
    /// How much a unit reads, roughly, for running the largest first so that no large unit is
    /// left running alone at the end: the width of a scan's or a `Members` unit's key range
    /// (a Group's largest type, read member by member, took the longest and had started
    /// last); deletions last.
    pub(crate) fn size_hint(&self) -> u64 {
        match self {
            UnitSpec::Members { span, .. } => span.unwrap_or(u64::MAX),
            UnitSpec::Scan { after_seq, before_seq: Some(before), .. } => {
                before.saturating_sub(*after_seq)
            }
            _ => 0,
        }
    }

    /// True for units that must wait for all others.
    pub(crate) fn runs_last(&self) -> bool {
        matches!(self, UnitSpec::Supporting | UnitSpec::Provenance { .. })
    }
}

/// A unit's progress, saved each time it completes a file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// The `seq` of the last resource in the last completed file (scan cursor).
    pub(crate) cursor: u64,
    /// For member units: the member being read at `cursor`.
    pub(crate) member_idx: usize,
    /// Files completed so far.
    pub(crate) files: Vec<FileEntry>,
    /// Supporting resources referenced by what this unit wrote (`Type/id`).
    pub(crate) references: Vec<String>,
    /// Problems to report in the error file.
    pub(crate) issues: Vec<Note>,
    /// Resources written in completed files.
    pub(crate) written: u64,
}

/// One line of the error file: an OperationOutcome issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Note {
    /// `error`, `warning` or `information`.
    pub(crate) severity: String,
    /// The issue-type code.
    pub(crate) code: String,
    /// What happened.
    pub(crate) diagnostics: String,
}

impl Note {
    pub(crate) fn warning(code: &str, diagnostics: impl Into<String>) -> Self {
        Note { severity: "warning".into(), code: code.into(), diagnostics: diagnostics.into() }
    }

    pub(crate) fn error(code: &str, diagnostics: impl Into<String>) -> Self {
        Note { severity: "error".into(), code: code.into(), diagnostics: diagnostics.into() }
    }
}

/// Which manifest array a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// `output`.
    Output,
    /// `deleted`.
    Deleted,
    /// `error`.
    Error,
}

/// One finished file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name inside the job's folder (the last URL segment).
    pub name: String,
    /// The manifest `type`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Lines in the file.
    pub count: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Which manifest array lists it.
    pub kind: FileKind,
    /// `organizeOutputBy`: the file that continues this file's last block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues_in: Option<String>,
}

/// The finished export, as stored; the HTTP edge renders URLs from `base_url` and file names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestDoc {
    /// The snapshot's time.
    pub transaction_time: String,
    /// The kick-off URL.
    pub request: String,
    /// Whether downloads need the access token.
    pub requires_access_token: bool,
    /// Every file, in manifest order.
    pub files: Vec<FileEntry>,
    /// `organizeOutputBy`, when honoured (`outputOrganizedBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organized_by: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::UnitSpec;

    /// The runner starts units by `size_hint`, largest first: a Group's largest type must not
    /// wait behind smaller ones, and a unit stored before `span` existed still comes first.
    #[test]
    fn members_units_start_largest_first() {
        let members = |resource_type: &str, span| UnitSpec::Members {
            resource_type: resource_type.into(),
            after_seq: 0,
            span,
            view: None,
        };
        let mut units = [
            members("Condition", Some(17_643)),
            members("Observation", Some(427_160)),
            UnitSpec::Scan {
                resource_type: "Location".into(),
                compartment_only: true,
                after_seq: 99,
                part: 0,
                before_seq: Some(234),
                members_only: true,
                view: None,
            },
            members("Claim", Some(169_056)),
        ];
        units.sort_by_key(|u| std::cmp::Reverse(u.size_hint()));
        let order: Vec<&str> = units
            .iter()
            .map(|u| match u {
                UnitSpec::Members { resource_type, .. } | UnitSpec::Scan { resource_type, .. } => {
                    resource_type.as_str()
                }
                _ => "",
            })
            .collect();
        assert_eq!(order, ["Observation", "Claim", "Condition", "Location"]);
        let stored: UnitSpec =
            serde_json::from_str(r#"{"kind":"members","resource_type":"Claim","after_seq":0}"#)
                .unwrap();
        assert_eq!(stored.size_hint(), u64::MAX);
        let json = serde_json::to_string(&members("Claim", Some(5))).unwrap();
        assert!(json.contains(r#""span":5"#), "{json}");
    }
}
