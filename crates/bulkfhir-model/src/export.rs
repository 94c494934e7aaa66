//! The Bulk Data `$export` kick-off request, parsed into a checked [`ExportRequest`].
//!
//! [`parse_kickoff`] reads the kick-off parameters from the query string of a GET (K6) or from the
//! FHIR `Parameters` body of a POST (K7). It returns either an [`ExportRequest`] that every later
//! layer trusts as it is ("parse, don't validate"), or a [`KickoffError`] that names the offending
//! parameter; the HTTP layer turns that into a 4XX response with an `OperationOutcome` (K22).
//!
//! Rule ids (K…, C…, E…) refer to the requirements checklist, `docs/spec.md`.
//!
//! # Parameters (spec §2.4)
//!
//! | parameter | card. | GET value | POST `value[x]` | result |
//! |---|---|---|---|---|
//! | `_outputFormat` | 0..1 | media type | `valueString` | [`OutputFormat`]; default NDJSON |
//! | `_since`, `_until` | 0..1 | FHIR instant | `valueInstant` | [`Instant`] |
//! | `_type` | 0..* | comma list | `valueString` | known R4 types, deduplicated |
//! | `_elements` | 0..* | comma list | `valueString` | `element` or `Type.element` |
//! | `patient` | 0..* | not allowed (K9) | `valueReference` | `Patient/<id>` ids |
//! | `includeAssociatedData` | 0..* | comma list | `valueCode` or `valueString` | codes |
//! | `_typeFilter` | 0..* | `Type?query` list | `valueString` | queries, verbatim |
//! | `organizeOutputBy` | 0..1 | type name | `valueString` or `valueCode` | a known R4 type |
//! | `destination` (extension) | 0..1 | URL | `valueUri` or `valueString` | checked by the export layer |
//! | `allowPartialManifests` | 0..1 | `true`/`false` | `valueBoolean` | bool |
//!
//! * Parameters that take comma lists may also be repeated, and the repeats are merged into one
//!   list (K8). Parameters with cardinality 0..1 may not be repeated.
//! * `patient` is accepted only in a POST body and only at Patient and Group level (K9, C6).
//! * A POST kick-off takes its parameters from the body; a query string on a POST is refused. The
//!   spec has no explicit rule, but K7 defines POST as carrying a `Parameters` body and K10 says
//!   the URL of a POST carries no parameters.
//! * In a POST body each entry has a `name` and exactly one `value[x]` of the type its
//!   OperationDefinition gives, strictly: `_since` and `_until` take `valueInstant` only (not
//!   `valueDateTime`, even with a full instant). `part`, `resource` and `modifierExtension` are
//!   refused; `id` and `extension` are ignored.
//! * In a query string, a space in `_outputFormat`, `_since` or `_until` is read as `+`: form
//!   decoding turns an unencoded `+` (`application/fhir+ndjson`, `…T00:00:00+01:00`) into a space,
//!   and none of these values can hold a space. The result is then parsed as strictly as ever.
//! * Parameter names are case-sensitive. Any other name (`_count`, `_format`, …) is unknown.
//! * `_since` later than the server's `now` is refused: the spec is silent, but the BDT checker
//!   requires a rejection (§13.5). `_until` earlier than `_since` is refused.
//! * At Patient level, a `_type` list that names only types outside the Patient compartment is
//!   refused (§2.4 `_type`: "SHOULD return … an error"). Group level is not checked, because a
//!   Group may hold non-patients (C2).
//! * `_typeFilter` values are split on a comma only where the next part starts with `Type?`, so
//!   both the v2 comma list and the v3 one-query-per-value forms are read, and commas inside
//!   search values survive. Each query must be `Type?name=value[&…]` for a known type, and must not
//!   use search-result parameters such as `_include` or `_sort` (§2.4 `_typeFilter`: SHALL NOT).
//!
//! # Lenient handling (K13, K14, E4)
//!
//! Under `Prefer: handling=lenient` the parser drops, instead of refusing, what the server cannot
//! honour: unknown parameter names, names that are not R4 resource types (in `_type`, in the type
//! prefix of `_elements` and `_typeFilter`, and in `organizeOutputBy`), query parameters sent with
//! a POST, and a Patient-level `_type` outside the compartment. Each drop leaves one message in
//! [`ExportRequest::lenient_notes`], which the export reports as an `OperationOutcome` in the
//! manifest's `error` files (E4). The message starts with the parameter name.
//!
//! Lenient handling never changes what a valid parameter means, so these are refused even then:
//! an unsupported `_outputFormat`, malformed values (instants, booleans, list items, references,
//! `_elements` and `_typeFilter` syntax), repeated single-valued parameters, a `_type` left with no
//! type at all, and `patient` where it is not allowed (ignoring it would break C6's SHALL NOT).
//!
//! # Bounded work
//!
//! The parser allocates at most in proportion to its input and refuses absurd inputs: more than
//! [`MAX_PARAMETERS`] parameters, more than [`MAX_LIST_ITEMS`] items for one list parameter, or
//! more than [`MAX_PATIENTS`] patients. After [`MAX_LENIENT_NOTES`] notes, further drops are
//! summed up in one last note.

use std::{borrow::Cow, collections::HashSet};

use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue;

use crate::{
    Instant, ResourceId, ResourceType, compartment, json::RawMembers,
    resource_type::truncate_for_message,
};

/// The most parameters one kick-off may carry (query pairs plus `Parameters.parameter` entries).
pub const MAX_PARAMETERS: usize = 20_000;
/// The most items one list parameter (`_type`, `_elements`, `_typeFilter`,
/// `includeAssociatedData`) may carry, counting repeats, duplicates and dropped items.
pub const MAX_LIST_ITEMS: usize = 1_000;
/// The most `patient` references one kick-off may carry, counting duplicates.
pub const MAX_PATIENTS: usize = 10_000;
/// The most individual lenient notes kept; further drops are counted in one summary note.
pub const MAX_LENIENT_NOTES: usize = 100;

/// Which `$export` operation was invoked (K2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLevel {
    /// `[base]/$export`: every resource the client may read.
    System,
    /// `[base]/Patient/$export`: the compartments of all patients (C1).
    Patient,
    /// `[base]/Group/[id]/$export`: the compartments of the Group's members (C2); holds the
    /// Group's id.
    Group(ResourceId),
}

/// The format of the exported files, from `_outputFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Newline-delimited FHIR JSON, the default and the format every server SHALL support.
    Ndjson,
    /// The same NDJSON, stored as a gzip-compressed file.
    NdjsonGzip,
}

/// `_outputFormat` values meaning plain NDJSON; the first three SHALL be accepted (§2.4).
const NDJSON_FORMATS: &[&str] =
    &["application/fhir+ndjson", "application/ndjson", "ndjson", "application/ndjson+fhir"];

/// `_outputFormat` values meaning gzip-compressed NDJSON files.
const NDJSON_GZIP_FORMATS: &[&str] = &[
    "application/fhir+ndjson+gzip",
    "application/fhir+gzip+ndjson",
    "application/ndjson+fhir+gzip",
    "application/ndjson+gzip+fhir",
    "application/gzip+fhir+ndjson",
    "application/gzip+ndjson+fhir",
];

impl OutputFormat {
    /// The `Content-Type` of a file in this format: `application/fhir+ndjson` for both, since a
    /// gzip file is the same content compressed (F6).
    pub fn content_type(self) -> &'static str {
        "application/fhir+ndjson"
    }

    /// The file name extension: `.ndjson` or `.ndjson.gz`.
    pub fn file_extension(self) -> &'static str {
        match self {
            OutputFormat::Ndjson => ".ndjson",
            OutputFormat::NdjsonGzip => ".ndjson.gz",
        }
    }

    /// Reads an `_outputFormat` value. Media types compare ASCII case-insensitively (RFC 6838);
    /// anything outside the two known lists is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let matches = |list: &[&str]| list.iter().any(|known| known.eq_ignore_ascii_case(value));
        if matches(NDJSON_FORMATS) {
            Some(OutputFormat::Ndjson)
        } else if matches(NDJSON_GZIP_FORMATS) {
            Some(OutputFormat::NdjsonGzip)
        } else {
            None
        }
    }
}

/// A checked `$export` kick-off: what to export, at which level, in which format.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRequest {
    /// The operation invoked.
    pub level: ExportLevel,
    /// The file format (`_outputFormat`, default [`OutputFormat::Ndjson`]).
    pub output_format: OutputFormat,
    /// Only resources changed after this instant (`_since`); never later than the kick-off's `now`.
    pub since: Option<Instant>,
    /// Only resources changed before this instant (v3 `_until`); never earlier than `since`.
    pub until: Option<Instant>,
    /// The resource types to export (`_type`): `None` means all supported types. When `Some`, the
    /// list is non-empty, deduplicated, and in order of first mention.
    pub types: Option<Vec<ResourceType>>,
    /// The patients to limit the export to (`patient`, POST only), deduplicated, in order of first
    /// mention. Always empty at System level.
    pub patients: Vec<ResourceId>,
    /// `_typeFilter` queries, one per entry, each `Type?params` for a known type, kept verbatim
    /// (search values are still as the client encoded them).
    pub type_filters: Vec<String>,
    /// `_elements` items, each `element` or `Type.element` (known type, top-level element name),
    /// deduplicated, in order of first mention.
    pub elements: Vec<String>,
    /// `includeAssociatedData` codes as given (non-empty, trimmed, deduplicated); the code set is
    /// checked by the export layer.
    pub include_associated_data: Vec<String>,
    /// `organizeOutputBy` (v3): the name of a known R4 resource type.
    pub organize_output_by: Option<String>,
    /// `allowPartialManifests` (v3); `false` when absent.
    pub allow_partial_manifests: bool,
    /// `destination` (this server's extension): where the files go, as a URL such as
    /// `s3://partner-bucket/nightly`, checked against the operator's allow-list by the export
    /// layer; `None`: the server's own export store.
    pub destination: Option<String>,
    /// Messages for parameters ignored under `Prefer: handling=lenient` (unknown types, unknown
    /// parameters); the export reports each as an OperationOutcome in the manifest's `error` files
    /// (spec E4). Each message starts with the parameter's name.
    pub lenient_notes: Vec<String>,
}

impl ExportRequest {
    /// An export of everything at `level`, as NDJSON, with no other parameter.
    pub fn at(level: ExportLevel) -> Self {
        ExportRequest {
            level,
            output_format: OutputFormat::Ndjson,
            since: None,
            until: None,
            types: None,
            patients: Vec::new(),
            type_filters: Vec::new(),
            elements: Vec::new(),
            include_associated_data: Vec::new(),
            organize_output_by: None,
            allow_partial_manifests: false,
            destination: None,
            lenient_notes: Vec::new(),
        }
    }
}

/// Why a kick-off was refused; the HTTP layer answers 400 with an `OperationOutcome`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KickoffError {
    /// What is wrong, for `OperationOutcome.issue.diagnostics`.
    pub message: String,
    /// The offending parameter's name, for `OperationOutcome.issue.expression`; `None` when the
    /// problem is the POST body as a whole.
    pub parameter: Option<String>,
}

impl KickoffError {
    fn new(parameter: Option<&str>, message: impl Into<String>) -> Self {
        KickoffError { message: message.into(), parameter: parameter.map(truncate_for_message) }
    }
}

/// Everything [`parse_kickoff`] reads from one kick-off request.
#[derive(Debug, Clone)]
pub struct KickoffInput<'a> {
    /// The operation invoked, from the URL path.
    pub level: ExportLevel,
    /// The decoded query pairs, in order.
    pub query: &'a [(String, String)],
    /// The POST body (a FHIR `Parameters` resource), or `None` for a GET.
    pub body: Option<&'a [u8]>,
    /// Whether the request sent `Prefer: handling=lenient` (K13).
    pub lenient: bool,
    /// The server's current time, which `_since` may not exceed.
    pub now: Instant,
}

/// Parses a `$export` kick-off into an [`ExportRequest`], or refuses it with the reason.
///
/// A GET (`body` is `None`) takes its parameters from `query`; a POST takes them from the
/// `Parameters` body, and its query must then be empty (or is ignored with notes when lenient).
/// See the module documentation for the rules.
pub fn parse_kickoff(input: &KickoffInput<'_>) -> Result<ExportRequest, KickoffError> {
    if input.query.len() > MAX_PARAMETERS {
        return Err(KickoffError::new(
            None,
            format!("too many query parameters: at most {MAX_PARAMETERS} are accepted"),
        ));
    }
    let mut builder = Builder::new(input);
    match input.body {
        None => {
            for (name, value) in input.query {
                match Param::from_name(name) {
                    Some(param) => builder.accept(param, value, Source::Query)?,
                    None => builder.unknown_param(name)?,
                }
            }
        }
        Some(body) => {
            for (name, _) in input.query {
                let message = format!(
                    "query parameter '{}' is not accepted with a POST kick-off: send parameters in the Parameters body",
                    truncate_for_message(name)
                );
                builder.drop_or_refuse(name, message)?;
            }
            builder.read_body(body)?;
        }
    }
    builder.finish()
}

/// The kick-off parameters this server knows (§2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    OutputFormat,
    Since,
    Until,
    Type,
    Elements,
    Patient,
    IncludeAssociatedData,
    TypeFilter,
    OrganizeOutputBy,
    AllowPartialManifests,
    Destination,
}

const ALL_PARAMS: [Param; 11] = [
    Param::OutputFormat,
    Param::Since,
    Param::Until,
    Param::Type,
    Param::Elements,
    Param::Patient,
    Param::IncludeAssociatedData,
    Param::TypeFilter,
    Param::OrganizeOutputBy,
    Param::AllowPartialManifests,
    Param::Destination,
];

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::OutputFormat => "_outputFormat",
            Param::Since => "_since",
            Param::Until => "_until",
            Param::Type => "_type",
            Param::Elements => "_elements",
            Param::Patient => "patient",
            Param::IncludeAssociatedData => "includeAssociatedData",
            Param::TypeFilter => "_typeFilter",
            Param::OrganizeOutputBy => "organizeOutputBy",
            Param::AllowPartialManifests => "allowPartialManifests",
            Param::Destination => "destination",
        }
    }

    /// Exact, case-sensitive lookup.
    fn from_name(name: &str) -> Option<Param> {
        ALL_PARAMS.into_iter().find(|p| p.name() == name)
    }

    /// The `value[x]` types a POST body may use for this parameter (the OperationDefinitions'
    /// types; `valueCode` is also taken for the two code-like strings).
    fn value_kinds(self) -> &'static [ValueKind] {
        match self {
            Param::OutputFormat | Param::Type | Param::Elements | Param::TypeFilter => {
                &[ValueKind::String]
            }
            Param::Since | Param::Until => &[ValueKind::Instant],
            Param::Patient => &[ValueKind::Reference],
            Param::IncludeAssociatedData => &[ValueKind::Code, ValueKind::String],
            Param::OrganizeOutputBy => &[ValueKind::String, ValueKind::Code],
            Param::AllowPartialManifests => &[ValueKind::Boolean],
            Param::Destination => &[ValueKind::Uri, ValueKind::String],
        }
    }

    fn item_limit(self) -> usize {
        if self == Param::Patient { MAX_PATIENTS } else { MAX_LIST_ITEMS }
    }

    fn error(self, message: impl Into<String>) -> KickoffError {
        KickoffError::new(Some(self.name()), message)
    }
}

/// Where a parameter value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Query,
    Body,
}

/// The `value[x]` elements a `Parameters.parameter` entry may carry here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    String,
    Code,
    Instant,
    /// Never accepted (`_since` and `_until` are `instant`), known only to explain the refusal.
    DateTime,
    Boolean,
    Reference,
    Uri,
}

impl ValueKind {
    fn element(self) -> &'static str {
        match self {
            ValueKind::String => "valueString",
            ValueKind::Code => "valueCode",
            ValueKind::Instant => "valueInstant",
            ValueKind::DateTime => "valueDateTime",
            ValueKind::Boolean => "valueBoolean",
            ValueKind::Reference => "valueReference",
            ValueKind::Uri => "valueUri",
        }
    }
}

/// Search-result parameters, which `_typeFilter` queries SHALL NOT use (§2.4; v3 names all of
/// them, v2 names `_include` and `_sort`).
const SEARCH_RESULT_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_sort",
    "_count",
    "_summary",
    "_total",
    "_elements",
    "_contained",
    "_containedType",
];

/// The parameter values read so far.
struct Builder<'i> {
    level: &'i ExportLevel,
    lenient: bool,
    now: Instant,
    /// Bit `param as u16` is set once a parameter has been seen.
    seen: u16,
    /// Items read per parameter, counting duplicates and dropped items.
    n_items: [usize; ALL_PARAMS.len()],
    output_format: Option<OutputFormat>,
    since: Option<Instant>,
    until: Option<Instant>,
    types: Vec<ResourceType>,
    patients: Vec<ResourceId>,
    patient_set: HashSet<ResourceId>,
    type_filters: Vec<String>,
    elements: Vec<String>,
    include_associated_data: Vec<String>,
    organize_output_by: Option<String>,
    allow_partial_manifests: Option<bool>,
    destination: Option<String>,
    notes: Vec<String>,
    n_unlisted_notes: usize,
}

impl<'i> Builder<'i> {
    fn new(input: &'i KickoffInput<'_>) -> Self {
        Builder {
            level: &input.level,
            lenient: input.lenient,
            now: input.now,
            seen: 0,
            n_items: [0; ALL_PARAMS.len()],
            output_format: None,
            since: None,
            until: None,
            types: Vec::new(),
            patients: Vec::new(),
            patient_set: HashSet::new(),
            type_filters: Vec::new(),
            elements: Vec::new(),
            include_associated_data: Vec::new(),
            organize_output_by: None,
            allow_partial_manifests: None,
            destination: None,
            notes: Vec::new(),
            n_unlisted_notes: 0,
        }
    }

    fn has_seen(&self, param: Param) -> bool {
        self.seen & (1 << param as u16) != 0
    }

    /// Marks `param` as seen, refusing a second occurrence of a 0..1 parameter.
    fn mark_seen(&mut self, param: Param, single: bool) -> Result<(), KickoffError> {
        if single && self.has_seen(param) {
            return Err(param.error(format!("{} may be given only once", param.name())));
        }
        self.seen |= 1 << param as u16;
        Ok(())
    }

    /// Counts one more item of a list parameter, refusing past its limit.
    fn count_item(&mut self, param: Param) -> Result<(), KickoffError> {
        let count = &mut self.n_items[param as usize];
        *count += 1;
        if *count > param.item_limit() {
            return Err(param.error(format!(
                "too many {} items: at most {} are accepted",
                param.name(),
                param.item_limit()
            )));
        }
        Ok(())
    }

    /// Under lenient handling, records `message` as a note; otherwise refuses with it.
    fn drop_or_refuse(&mut self, parameter: &str, message: String) -> Result<(), KickoffError> {
        if !self.lenient {
            return Err(KickoffError::new(Some(parameter), message));
        }
        if self.notes.len() < MAX_LENIENT_NOTES {
            let parameter = truncate_for_message(parameter);
            self.notes.push(format!("{parameter}: {message} (ignored: Prefer handling=lenient)"));
        } else {
            self.n_unlisted_notes += 1;
        }
        Ok(())
    }

    fn unknown_param(&mut self, name: &str) -> Result<(), KickoffError> {
        let shown = truncate_for_message(name);
        let hint = match ALL_PARAMS.into_iter().find(|p| p.name().eq_ignore_ascii_case(name)) {
            Some(param) => {
                format!(" (parameter names are case-sensitive: did you mean '{}'?)", param.name())
            }
            None => String::new(),
        };
        self.drop_or_refuse(name, format!("unknown $export parameter '{shown}'{hint}"))
    }

    fn unknown_type(&mut self, param: Param, name: &str, what: &str) -> Result<(), KickoffError> {
        let message = format!(
            "'{}' in {} is not a FHIR R4 resource type{what}",
            truncate_for_message(name),
            param.name()
        );
        self.drop_or_refuse(param.name(), message)
    }

    /// Takes one occurrence of `param`, with its value as text.
    fn accept(&mut self, param: Param, value: &str, source: Source) -> Result<(), KickoffError> {
        match param {
            Param::OutputFormat => {
                self.mark_seen(param, true)?;
                let value = plus_decoded_as_space(value, source);
                let format = OutputFormat::parse(&value).ok_or_else(|| {
                    param.error(format!(
                        "unsupported _outputFormat '{}': use application/fhir+ndjson (or application/ndjson, ndjson), or a gzip form such as application/fhir+ndjson+gzip",
                        truncate_for_message(&value)
                    ))
                })?;
                self.output_format = Some(format);
            }
            Param::Since | Param::Until => {
                self.mark_seen(param, true)?;
                let value = plus_decoded_as_space(value, source);
                let instant = Instant::parse_fhir(&value)
                    .map_err(|e| param.error(format!("invalid {}: {e}", param.name())))?;
                if param == Param::Since {
                    if instant > self.now {
                        return Err(param.error(format!(
                            "_since {} is in the future (the server's time is {})",
                            instant.to_fhir(),
                            self.now.to_fhir()
                        )));
                    }
                    self.since = Some(instant);
                } else {
                    self.until = Some(instant);
                }
            }
            Param::Type => {
                self.mark_seen(param, false)?;
                for_each_item(param, value, |item| self.add_type(item))?;
            }
            Param::Elements => {
                self.mark_seen(param, false)?;
                for_each_item(param, value, |item| self.add_element(item))?;
            }
            Param::IncludeAssociatedData => {
                self.mark_seen(param, false)?;
                for_each_item(param, value, |item| {
                    self.count_item(param)?;
                    push_unique(&mut self.include_associated_data, item);
                    Ok(())
                })?;
            }
            Param::TypeFilter => {
                self.mark_seen(param, false)?;
                if value.trim().is_empty() {
                    return Err(param.error("_typeFilter is empty"));
                }
                for_each_type_filter(value, |query| self.add_type_filter(query))?;
            }
            Param::Patient => {
                self.mark_seen(param, false)?;
                self.add_patient(value, source)?;
            }
            Param::OrganizeOutputBy => {
                self.mark_seen(param, true)?;
                match ResourceType::parse(value) {
                    Ok(resource_type) => {
                        self.organize_output_by = Some(resource_type.as_str().to_owned());
                    }
                    Err(_) => self.unknown_type(param, value, "")?,
                }
            }
            Param::AllowPartialManifests => {
                self.mark_seen(param, true)?;
                let flag = match value {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(param.error(format!(
                            "invalid allowPartialManifests '{}': expected true or false",
                            truncate_for_message(other)
                        )));
                    }
                };
                self.allow_partial_manifests = Some(flag);
            }
            Param::Destination => {
                self.mark_seen(param, true)?;
                if value.is_empty() || value.len() > 1024 {
                    return Err(param.error("destination must be a URL of at most 1024 characters"));
                }
                self.destination = Some(value.to_owned());
            }
        }
        Ok(())
    }

    fn add_type(&mut self, name: &str) -> Result<(), KickoffError> {
        self.count_item(Param::Type)?;
        match ResourceType::parse(name) {
            Ok(resource_type) => {
                if !self.types.contains(&resource_type) {
                    self.types.push(resource_type);
                }
                Ok(())
            }
            Err(_) => self.unknown_type(Param::Type, name, ""),
        }
    }

    fn add_element(&mut self, item: &str) -> Result<(), KickoffError> {
        let param = Param::Elements;
        self.count_item(param)?;
        let (type_name, element) = match item.split_once('.') {
            Some((type_name, element)) => (Some(type_name), element),
            None => (None, item),
        };
        if type_name == Some("") || !is_element_name(element) {
            return Err(param.error(format!(
                "invalid _elements item '{}': expected 'element' or 'Type.element', naming a top-level element such as id or Patient.name",
                truncate_for_message(item)
            )));
        }
        if let Some(type_name) = type_name
            && ResourceType::parse(type_name).is_err()
        {
            let what = format!(" (in _elements item '{}')", truncate_for_message(item));
            return self.unknown_type(param, type_name, &what);
        }
        push_unique(&mut self.elements, item);
        Ok(())
    }

    fn add_type_filter(&mut self, query: &str) -> Result<(), KickoffError> {
        let param = Param::TypeFilter;
        self.count_item(param)?;
        let shown = truncate_for_message(query);
        let Some((type_name, search)) = query.split_once('?').filter(|(t, _)| !t.is_empty()) else {
            return Err(param.error(format!(
                "invalid _typeFilter '{shown}': expected a search query of the form Type?name=value"
            )));
        };
        if search.is_empty() {
            return Err(param.error(format!("invalid _typeFilter '{shown}': the query is empty")));
        }
        for part in search.split('&') {
            let name = match part.split_once('=') {
                Some((name, _)) if !name.is_empty() => name,
                _ => {
                    return Err(param.error(format!(
                        "invalid _typeFilter '{shown}': '{}' is not a name=value search parameter",
                        truncate_for_message(part)
                    )));
                }
            };
            let base = name.split([':', '.']).next().unwrap_or(name);
            if SEARCH_RESULT_PARAMS.contains(&base) {
                return Err(param.error(format!(
                    "invalid _typeFilter '{shown}': search result parameter '{base}' is not allowed in _typeFilter"
                )));
            }
        }
        if ResourceType::parse(type_name).is_err() {
            let what = format!(" (in _typeFilter '{shown}')");
            return self.unknown_type(param, type_name, &what);
        }
        self.type_filters.push(query.to_owned());
        Ok(())
    }

    fn add_patient(&mut self, value: &str, source: Source) -> Result<(), KickoffError> {
        let param = Param::Patient;
        if *self.level == ExportLevel::System {
            return Err(param.error(
                "the patient parameter is not allowed at system level: use Patient/$export or Group/[id]/$export",
            ));
        }
        if source == Source::Query {
            return Err(param.error(
                "the patient parameter is accepted only in the Parameters body of a POST kick-off",
            ));
        }
        self.count_item(param)?;
        let id = parse_patient_reference(value).ok_or_else(|| {
            param.error(format!(
                "invalid patient reference '{}': expected a relative reference 'Patient/<id>'",
                truncate_for_message(value)
            ))
        })?;
        if self.patient_set.insert(id.clone()) {
            self.patients.push(id);
        }
        Ok(())
    }

    /// Reads a POST body: a JSON `Parameters` resource.
    fn read_body(&mut self, body: &[u8]) -> Result<(), KickoffError> {
        const NOT_PARAMETERS: &str = "the POST body must be a FHIR Parameters resource (a JSON object with resourceType 'Parameters')";
        let text = std::str::from_utf8(body)
            .map_err(|_| KickoffError::new(None, "the POST body is not UTF-8 text"))?;
        if !text.trim_start().starts_with('{') {
            return Err(KickoffError::new(None, NOT_PARAMETERS));
        }
        let parsed: ParametersBody<'_> = serde_json::from_str(text).map_err(|e| {
            KickoffError::new(
                None,
                format!("the POST body is not a valid Parameters resource: {e}"),
            )
        })?;
        let resource_type = parsed.resource_type.map(json_string);
        match resource_type {
            Some(Some(name)) if name == "Parameters" => {}
            Some(Some(name)) => {
                return Err(KickoffError::new(
                    None,
                    format!("{NOT_PARAMETERS}, not '{}'", truncate_for_message(&name)),
                ));
            }
            _ => return Err(KickoffError::new(None, NOT_PARAMETERS)),
        }
        let entries = parsed.parameter.unwrap_or_default();
        if entries.len() > MAX_PARAMETERS {
            return Err(KickoffError::new(
                None,
                format!("too many parameters: at most {MAX_PARAMETERS} are accepted"),
            ));
        }
        for (idx, raw) in entries.into_iter().enumerate() {
            self.read_body_entry(idx, raw)?;
        }
        Ok(())
    }

    /// Reads `Parameters.parameter[idx]`.
    fn read_body_entry(&mut self, idx: usize, raw: &RawValue) -> Result<(), KickoffError> {
        let location = format!("Parameters.parameter[{idx}]");
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(KickoffError::new(None, format!("{location} must be a JSON object")));
        }
        let entry: ParameterEntry<'_> =
            serde_json::from_str(text).map_err(|e| entry_error(&location, text, &e))?;
        let name = match entry.name.map(json_string) {
            Some(Some(name)) => name,
            Some(None) => {
                return Err(KickoffError::new(None, format!("{location}.name must be a string")));
            }
            None => return Err(KickoffError::new(None, format!("{location} has no name"))),
        };
        let Some(param) = Param::from_name(&name) else {
            return self.unknown_param(&name);
        };
        let expected = expected_values(param);
        let mut values = entry.values();
        let (kind, raw_value) = match (values.next(), values.next()) {
            (Some(value), None) => value,
            (None, _) => {
                return Err(param.error(format!(
                    "parameter '{name}' ({location}) has no value: expected {expected}"
                )));
            }
            (Some(_), Some(_)) => {
                return Err(param.error(format!(
                    "parameter '{name}' ({location}) has more than one value[x]: expected only {expected}"
                )));
            }
        };
        if !param.value_kinds().contains(&kind) {
            return Err(param.error(format!(
                "parameter '{name}' ({location}) takes {expected}, not {}",
                kind.element()
            )));
        }
        let value: Cow<'_, str> = match kind {
            ValueKind::Boolean => match raw_value.get() {
                "true" => Cow::Borrowed("true"),
                "false" => Cow::Borrowed("false"),
                _ => {
                    return Err(param.error(format!(
                        "parameter '{name}' ({location}) valueBoolean must be true or false"
                    )));
                }
            },
            ValueKind::Reference => Cow::Owned(reference_of(param, &location, raw_value)?),
            ValueKind::String
            | ValueKind::Code
            | ValueKind::Instant
            | ValueKind::DateTime
            | ValueKind::Uri => match json_string(raw_value) {
                Some(text) => Cow::Owned(text),
                None => {
                    return Err(param.error(format!(
                        "parameter '{name}' ({location}) {} must be a JSON string",
                        kind.element()
                    )));
                }
            },
        };
        self.accept(param, &value, Source::Body)
    }

    fn finish(self) -> Result<ExportRequest, KickoffError> {
        let mut builder = self;
        if let (Some(since), Some(until)) = (builder.since, builder.until)
            && until < since
        {
            return Err(Param::Until.error(format!(
                "_until {} is earlier than _since {}",
                until.to_fhir(),
                since.to_fhir()
            )));
        }
        let types = if builder.has_seen(Param::Type) {
            if builder.types.is_empty() {
                return Err(Param::Type
                    .error("_type names no FHIR R4 resource type: there is nothing to export"));
            }
            if *builder.level == ExportLevel::Patient
                && !builder.types.iter().any(|t| compartment::is_compartment_type(*t))
            {
                builder.drop_or_refuse(
                    Param::Type.name(),
                    "_type names only resource types outside the Patient compartment, which a Patient-level export does not cover".to_owned(),
                )?;
            }
            Some(std::mem::take(&mut builder.types))
        } else {
            None
        };
        if builder.n_unlisted_notes > 0 {
            builder.notes.push(format!(
                "{} more parameters or values were ignored (Prefer handling=lenient)",
                builder.n_unlisted_notes
            ));
        }
        Ok(ExportRequest {
            level: builder.level.clone(),
            output_format: builder.output_format.unwrap_or(OutputFormat::Ndjson),
            since: builder.since,
            until: builder.until,
            types,
            patients: builder.patients,
            type_filters: builder.type_filters,
            elements: builder.elements,
            include_associated_data: builder.include_associated_data,
            organize_output_by: builder.organize_output_by,
            allow_partial_manifests: builder.allow_partial_manifests.unwrap_or(false),
            destination: builder.destination,
            lenient_notes: builder.notes,
        })
    }
}

/// The top of a POST body; other members (`id`, `meta`, …) are ignored.
#[derive(Deserialize)]
struct ParametersBody<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<&'a RawValue>,
    /// Read entry by entry, so that each error names its entry.
    #[serde(borrow, default)]
    parameter: Option<Vec<&'a RawValue>>,
}

/// One `Parameters.parameter` entry. Any member not listed (another `value[x]`, `part`,
/// `resource`, `modifierExtension`, …) is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParameterEntry<'a> {
    #[serde(default, rename = "id")]
    _id: Option<IgnoredAny>,
    #[serde(default, rename = "extension")]
    _extension: Option<IgnoredAny>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(rename = "valueString", borrow, default)]
    value_string: Option<&'a RawValue>,
    #[serde(rename = "valueCode", borrow, default)]
    value_code: Option<&'a RawValue>,
    #[serde(rename = "valueInstant", borrow, default)]
    value_instant: Option<&'a RawValue>,
    #[serde(rename = "valueDateTime", borrow, default)]
    value_date_time: Option<&'a RawValue>,
    #[serde(rename = "valueBoolean", borrow, default)]
    value_boolean: Option<&'a RawValue>,
    #[serde(rename = "valueReference", borrow, default)]
    value_reference: Option<&'a RawValue>,
    #[serde(rename = "valueUri", borrow, default)]
    value_uri: Option<&'a RawValue>,
}

/// The members [`ParameterEntry`] accepts.
const ENTRY_MEMBERS: &[&str] = &[
    "id",
    "extension",
    "name",
    "valueString",
    "valueCode",
    "valueInstant",
    "valueDateTime",
    "valueBoolean",
    "valueReference",
    "valueUri",
];

impl<'a> ParameterEntry<'a> {
    /// The `value[x]` members present (JSON `null` counts as absent).
    fn values(&self) -> impl Iterator<Item = (ValueKind, &'a RawValue)> {
        [
            (ValueKind::String, self.value_string),
            (ValueKind::Code, self.value_code),
            (ValueKind::Instant, self.value_instant),
            (ValueKind::DateTime, self.value_date_time),
            (ValueKind::Boolean, self.value_boolean),
            (ValueKind::Reference, self.value_reference),
            (ValueKind::Uri, self.value_uri),
        ]
        .into_iter()
        .filter_map(|(kind, raw)| raw.map(|raw| (kind, raw)))
    }
}

/// A `valueReference`; only `reference` is read, other members (`type`, `display`) are ignored.
#[derive(Deserialize)]
struct ReferenceValue<'a> {
    #[serde(borrow, default)]
    reference: Option<&'a RawValue>,
}

/// `valueString`, `valueCode`… as in the entry's `value_kinds`, for messages.
fn expected_values(param: Param) -> String {
    let names: Vec<&str> = param.value_kinds().iter().map(|k| k.element()).collect();
    names.join(" or ")
}

/// Explains why `Parameters.parameter` entry `text` did not deserialize.
fn entry_error(location: &str, text: &str, error: &serde_json::Error) -> KickoffError {
    #[derive(Deserialize)]
    struct NameOnly {
        name: Option<String>,
    }
    let name = serde_json::from_str::<NameOnly>(text).ok().and_then(|n| n.name);
    let label = match &name {
        Some(name) => format!("parameter '{}' ({location})", truncate_for_message(name)),
        None => location.to_owned(),
    };
    let unexpected = RawMembers::parse(text).ok().and_then(|members| {
        members.0.into_iter().map(|(key, _)| key).find(|key| !ENTRY_MEMBERS.contains(&key.as_ref()))
    });
    let message = match (unexpected, name.as_deref().and_then(Param::from_name)) {
        (Some(key), Some(param)) if key.starts_with("value") => {
            format!("{label} takes {}, not {}", expected_values(param), truncate_for_message(&key))
        }
        (Some(key), _) if key == "part" || key == "resource" => {
            format!("{label} must carry a single value[x], not '{key}'")
        }
        (Some(key), _) => {
            format!("{label} has an unsupported member '{}'", truncate_for_message(&key))
        }
        (None, _) => format!("{label} is malformed: {}", serde_message(error)),
    };
    KickoffError::new(name.as_deref(), message)
}

/// A serde_json error's message without its position, which is relative to an entry's text.
fn serde_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    match full.rfind(" at line ") {
        Some(cut) if error.line() > 0 => full[..cut].to_owned(),
        _ => full,
    }
}

/// A JSON string value's text, or `None` when `raw` is not a string.
fn json_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

/// The `reference` text of a `valueReference`.
fn reference_of(param: Param, location: &str, raw: &RawValue) -> Result<String, KickoffError> {
    let text = raw.get();
    let malformed = || {
        param.error(format!(
            "{location}.valueReference must be a Reference object with a 'reference'"
        ))
    };
    if !text.starts_with('{') {
        return Err(malformed());
    }
    let reference: ReferenceValue<'_> = serde_json::from_str(text).map_err(|_| malformed())?;
    match reference.reference {
        Some(raw) => json_string(raw).ok_or_else(|| {
            param.error(format!("{location}.valueReference.reference must be a string"))
        }),
        None => Err(param.error(format!(
            "{location}.valueReference has no 'reference': identify the patient as 'Patient/<id>'"
        ))),
    }
}

/// Reads `Patient/<id>` exactly: no absolute URL, no version, no contained or other type.
fn parse_patient_reference(reference: &str) -> Option<ResourceId> {
    let id = reference.strip_prefix("Patient/")?;
    ResourceId::parse(id).ok()
}

/// Calls `f` with each trimmed item of the comma list `value`, refusing empty items.
fn for_each_item(
    param: Param,
    value: &str,
    mut f: impl FnMut(&str) -> Result<(), KickoffError>,
) -> Result<(), KickoffError> {
    if value.trim().is_empty() {
        return Err(param.error(format!("{} is empty", param.name())));
    }
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(param.error(format!(
                "{} '{}' has an empty item",
                param.name(),
                truncate_for_message(value)
            )));
        }
        f(item)?;
    }
    Ok(())
}

/// Calls `f` with each query in a `_typeFilter` value, split on the commas that are followed by
/// `Type?` for a known R4 type (the v2 comma list); other commas belong to search values.
fn for_each_type_filter(
    value: &str,
    mut f: impl FnMut(&str) -> Result<(), KickoffError>,
) -> Result<(), KickoffError> {
    let mut start = 0;
    for comma in memchr::memchr_iter(b',', value.as_bytes()) {
        // A comma is ASCII, so `comma + 1` is a character boundary.
        if starts_with_type_query(&value[comma + 1..]) {
            f(&value[start..comma])?;
            start = comma + 1;
        }
    }
    f(&value[start..])
}

/// Whether `text` starts with a known R4 type name followed by `?`.
fn starts_with_type_query(text: &str) -> bool {
    const LONGEST_TYPE_NAME: usize = 40;
    let bytes = text.as_bytes();
    let n_letters =
        bytes.iter().take(LONGEST_TYPE_NAME + 1).take_while(|b| b.is_ascii_alphabetic()).count();
    n_letters > 0
        && bytes.get(n_letters) == Some(&b'?')
        && ResourceType::parse(&text[..n_letters]).is_ok()
}

/// A top-level element name: a lower-case ASCII letter, then ASCII letters and digits, at most 64.
fn is_element_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= 64
        && bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.iter().all(u8::is_ascii_alphanumeric)
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|known| known == item) {
        list.push(item.to_owned());
    }
}

/// Undoes form decoding of a literal `+` into a space, for query values that cannot hold spaces
/// (`_outputFormat`, `_since`, `_until`): `application/fhir+ndjson` and `…T00:00:00+01:00` sent
/// unencoded arrive as `application/fhir ndjson` and `…T00:00:00 01:00`.
fn plus_decoded_as_space(value: &str, source: Source) -> Cow<'_, str> {
    if source == Source::Query && value.contains(' ') {
        Cow::Owned(value.replace(' ', "+"))
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn now() -> Instant {
        Instant::parse_fhir("2025-06-01T00:00:00Z").unwrap()
    }

    fn group() -> ExportLevel {
        ExportLevel::Group(ResourceId::parse("g1").unwrap())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    fn run(
        level: ExportLevel,
        query: &[(&str, &str)],
        body: Option<&str>,
        lenient: bool,
    ) -> Result<ExportRequest, KickoffError> {
        let query = pairs(query);
        parse_kickoff(&KickoffInput {
            level,
            query: &query,
            body: body.map(str::as_bytes),
            lenient,
            now: now(),
        })
    }

    fn get(query: &[(&str, &str)]) -> Result<ExportRequest, KickoffError> {
        run(ExportLevel::System, query, None, false)
    }

    fn get_lenient(query: &[(&str, &str)]) -> Result<ExportRequest, KickoffError> {
        run(ExportLevel::System, query, None, true)
    }

    fn post(level: ExportLevel, body: &str) -> Result<ExportRequest, KickoffError> {
        run(level, &[], Some(body), false)
    }

    /// A Parameters body holding `entries`, each a JSON object's text.
    fn params(entries: &[&str]) -> String {
        format!(r#"{{"resourceType":"Parameters","parameter":[{}]}}"#, entries.join(","))
    }

    /// Asserts a refusal naming `parameter` and mentioning `needle`.
    #[track_caller]
    fn assert_refused(
        result: Result<ExportRequest, KickoffError>,
        parameter: Option<&str>,
        needle: &str,
    ) {
        let err = result.expect_err("should be refused");
        assert_eq!(err.parameter.as_deref(), parameter, "parameter of: {}", err.message);
        assert!(err.message.contains(needle), "'{}' should mention '{needle}'", err.message);
    }

    fn types(names: &[&str]) -> Option<Vec<ResourceType>> {
        Some(names.iter().map(|n| ResourceType::parse(n).unwrap()).collect())
    }

    fn ids(list: &[&str]) -> Vec<ResourceId> {
        list.iter().map(|i| ResourceId::parse(i).unwrap()).collect()
    }

    #[test]
    fn a_bare_kickoff_gives_the_defaults() {
        for level in [ExportLevel::System, ExportLevel::Patient, group()] {
            let request = run(level.clone(), &[], None, false).unwrap();
            assert_eq!(request, ExportRequest::at(level));
        }
    }

    #[test]
    fn output_format_accepts_the_ndjson_and_gzip_spellings_only() {
        for value in NDJSON_FORMATS.iter().chain(["Application/FHIR+NDJSON", "NDJSON"].iter()) {
            let request = get(&[("_outputFormat", value)]).unwrap();
            assert_eq!(request.output_format, OutputFormat::Ndjson, "{value}");
        }
        for value in NDJSON_GZIP_FORMATS {
            let request = get(&[("_outputFormat", value)]).unwrap();
            assert_eq!(request.output_format, OutputFormat::NdjsonGzip, "{value}");
        }
        // A `+` decoded as a space by form decoding is read back as `+`.
        let request = get(&[("_outputFormat", "application/fhir ndjson gzip")]).unwrap();
        assert_eq!(request.output_format, OutputFormat::NdjsonGzip);
        for bad in
            ["application/xml", "text/html", "x-custom", "", "application/fhir+json", "ndjson "]
        {
            assert_refused(get(&[("_outputFormat", bad)]), Some("_outputFormat"), "unsupported");
            // Lenient handling may not silently change the format.
            assert_refused(
                get_lenient(&[("_outputFormat", bad)]),
                Some("_outputFormat"),
                "unsupported",
            );
        }
        assert_refused(
            get(&[("_outputFormat", "ndjson"), ("_outputFormat", "ndjson")]),
            Some("_outputFormat"),
            "only once",
        );
        let body = params(&[r#"{"name":"_outputFormat","valueString":"application/ndjson"}"#]);
        assert_eq!(post(ExportLevel::System, &body).unwrap().output_format, OutputFormat::Ndjson);
        // In a body, a space is a space.
        let body = params(&[r#"{"name":"_outputFormat","valueString":"application/fhir ndjson"}"#]);
        assert_refused(post(ExportLevel::System, &body), Some("_outputFormat"), "unsupported");
    }

    #[test]
    fn output_format_names_its_content_type_and_extension() {
        assert_eq!(OutputFormat::Ndjson.content_type(), "application/fhir+ndjson");
        assert_eq!(OutputFormat::NdjsonGzip.content_type(), "application/fhir+ndjson");
        assert_eq!(OutputFormat::Ndjson.file_extension(), ".ndjson");
        assert_eq!(OutputFormat::NdjsonGzip.file_extension(), ".ndjson.gz");
        assert_eq!(OutputFormat::parse("ndjson"), Some(OutputFormat::Ndjson));
        assert_eq!(OutputFormat::parse("gzip"), None);
    }

    #[test]
    fn since_and_until_are_strict_instants_in_order_and_not_in_the_future() {
        let request =
            get(&[("_since", "2024-01-01T00:00:00+01:00"), ("_until", "2024-02-01T00:00:00Z")])
                .unwrap();
        assert_eq!(request.since, Some(Instant::parse_fhir("2023-12-31T23:00:00Z").unwrap()));
        assert_eq!(request.until, Some(Instant::parse_fhir("2024-02-01T00:00:00Z").unwrap()));
        // An unencoded `+` in the offset arrives as a space.
        let request = get(&[("_since", "2024-01-01T00:00:00 01:00")]).unwrap();
        assert_eq!(request.since, Some(Instant::parse_fhir("2023-12-31T23:00:00Z").unwrap()));
        // `_since` equal to now, and `_until` in the future or equal to `_since`, are fine.
        assert!(get(&[("_since", "2025-06-01T00:00:00Z")]).is_ok());
        assert!(get(&[("_until", "2099-01-01T00:00:00Z")]).is_ok());
        assert!(
            get(&[("_since", "2024-01-01T00:00:00Z"), ("_until", "2024-01-01T00:00:00Z")]).is_ok()
        );
        for bad in ["0000-60-01T30:70:80+05:00", "2024-01-01", "2024-01-01T00:00Z", "", "yesterday"]
        {
            assert_refused(get(&[("_since", bad)]), Some("_since"), "invalid _since");
            assert_refused(get_lenient(&[("_since", bad)]), Some("_since"), "invalid _since");
            assert_refused(get(&[("_until", bad)]), Some("_until"), "invalid _until");
        }
        assert_refused(get(&[("_since", "2057-01-01T00:00:00+05:00")]), Some("_since"), "future");
        assert_refused(get(&[("_since", "2025-06-01T00:00:00.000001Z")]), Some("_since"), "future");
        assert_refused(
            get(&[("_since", "2024-02-01T00:00:00Z"), ("_until", "2024-01-01T00:00:00Z")]),
            Some("_until"),
            "earlier than _since",
        );
        for name in ["_since", "_until"] {
            assert_refused(
                get(&[(name, "2024-01-01T00:00:00Z"), (name, "2024-01-01T00:00:00Z")]),
                Some(name),
                "only once",
            );
        }
        let body = params(&[r#"{"name":"_since","valueInstant":"2024-01-01T00:00:00Z"}"#]);
        assert!(post(ExportLevel::System, &body).unwrap().since.is_some());
        // `_since` is an instant: valueDateTime and valueString are refused, even when the text is
        // a full instant.
        for value in ["valueDateTime", "valueString"] {
            let entry = format!(r#"{{"name":"_since","{value}":"2024-01-01T00:00:00Z"}}"#);
            assert_refused(
                post(ExportLevel::System, &params(&[&entry])),
                Some("_since"),
                &format!("takes valueInstant, not {value}"),
            );
        }
        // In a body, a space is not repaired.
        let body = params(&[r#"{"name":"_since","valueInstant":"2024-01-01T00:00:00 01:00"}"#]);
        assert_refused(post(ExportLevel::System, &body), Some("_since"), "invalid _since");
    }

    #[test]
    fn type_merges_comma_lists_and_repeats_and_refuses_unknown_names() {
        let request = get(&[
            ("_type", " Patient , Observation"),
            ("_type", "Condition,Patient"),
            ("_type", "Observation"),
        ])
        .unwrap();
        assert_eq!(request.types, types(&["Patient", "Observation", "Condition"]));
        for bad in
            ["Patient,,Observation", "Patient,", ",Patient", "", " ", "Patient, ,Observation"]
        {
            assert_refused(get(&[("_type", bad)]), Some("_type"), "empty");
            assert_refused(get_lenient(&[("_type", bad)]), Some("_type"), "empty");
        }
        assert_refused(get(&[("_type", "MissingType")]), Some("_type"), "'MissingType'");
        assert_refused(get(&[("_type", "Patient,patient")]), Some("_type"), "'patient'");
        assert_refused(get(&[("_type", "Resource")]), Some("_type"), "not a FHIR R4 resource type");
        // Lenient: unknown names are dropped with a note each…
        let request = get_lenient(&[("_type", "Patient,MissingType"), ("_type", "Nope")]).unwrap();
        assert_eq!(request.types, types(&["Patient"]));
        assert_eq!(request.lenient_notes.len(), 2);
        assert!(request.lenient_notes[0].starts_with("_type:"));
        assert!(request.lenient_notes[0].contains("MissingType"));
        // …but a `_type` left with nothing asks for nothing that exists.
        assert_refused(get_lenient(&[("_type", "Nope,Nada")]), Some("_type"), "nothing to export");
        let body = params(&[
            r#"{"name":"_type","valueString":"Patient,Observation"}"#,
            r#"{"name":"_type","valueString":"Encounter"}"#,
        ]);
        assert_eq!(
            post(ExportLevel::System, &body).unwrap().types,
            types(&["Patient", "Observation", "Encounter"])
        );
        let body = params(&[r#"{"name":"_type","valueCode":"Patient"}"#]);
        assert_refused(post(ExportLevel::System, &body), Some("_type"), "takes valueString");
    }

    #[test]
    fn patient_level_type_must_touch_the_patient_compartment() {
        let patient =
            |query: &[(&str, &str)], lenient| run(ExportLevel::Patient, query, None, lenient);
        assert!(patient(&[("_type", "Observation")], false).is_ok());
        assert!(patient(&[("_type", "Organization,Observation")], false).is_ok());
        assert_refused(
            patient(&[("_type", "Organization,Practitioner")], false),
            Some("_type"),
            "outside the Patient compartment",
        );
        let request = patient(&[("_type", "Organization")], true).unwrap();
        assert_eq!(request.types, types(&["Organization"]));
        assert_eq!(request.lenient_notes.len(), 1);
        // Groups may hold non-patients (C2), and system export covers everything.
        assert!(run(group(), &[("_type", "Organization")], None, false).is_ok());
        assert!(get(&[("_type", "Organization")]).is_ok());
    }

    #[test]
    fn patient_is_post_only_patient_or_group_level_and_must_be_patient_slash_id() {
        let body = params(&[
            r#"{"name":"patient","valueReference":{"reference":"Patient/p1"}}"#,
            r#"{"name":"patient","valueReference":{"reference":"Patient/p2","display":"x"}}"#,
            r#"{"name":"patient","valueReference":{"reference":"Patient/p1"}}"#,
        ]);
        for level in [ExportLevel::Patient, group()] {
            assert_eq!(post(level, &body).unwrap().patients, ids(&["p1", "p2"]));
        }
        // System level: refused, even when lenient (BDT; K9).
        assert_refused(post(ExportLevel::System, &body), Some("patient"), "system level");
        assert_refused(
            run(ExportLevel::System, &[], Some(&body), true),
            Some("patient"),
            "system level",
        );
        // GET: `patient` is only valid in POST kick-offs (K9), even when lenient.
        for lenient in [false, true] {
            assert_refused(
                run(ExportLevel::Patient, &[("patient", "Patient/p1")], None, lenient),
                Some("patient"),
                "POST",
            );
        }
        for bad in [
            "Observation/o1",
            "Patient/",
            "Patient",
            "p1",
            "#p1",
            "Patient/p 1",
            "Patient/p1/_history/2",
            "http://example.org/fhir/Patient/p1",
            "Patient/p1,Patient/p2",
            "",
        ] {
            let entry = format!(
                r#"{{"name":"patient","valueReference":{{"reference":{}}}}}"#,
                serde_json::to_string(bad).unwrap()
            );
            assert_refused(
                post(ExportLevel::Patient, &params(&[&entry])),
                Some("patient"),
                "invalid patient reference",
            );
        }
        for (entry, needle) in [
            (
                r#"{"name":"patient","valueReference":{"identifier":{"value":"x"}}}"#,
                "no 'reference'",
            ),
            (r#"{"name":"patient","valueReference":{"reference":7}}"#, "must be a string"),
            (r#"{"name":"patient","valueReference":"Patient/p1"}"#, "Reference object"),
            (r#"{"name":"patient","valueReference":["Patient/p1"]}"#, "Reference object"),
            (r#"{"name":"patient","valueString":"Patient/p1"}"#, "takes valueReference"),
            (r#"{"name":"patient"}"#, "has no value"),
        ] {
            assert_refused(post(ExportLevel::Patient, &params(&[entry])), Some("patient"), needle);
        }
    }

    #[test]
    fn post_bodies_must_be_well_formed_parameters() {
        for (body, needle) in [
            ("", "must be a FHIR Parameters resource"),
            ("   ", "must be a FHIR Parameters resource"),
            ("[]", "must be a FHIR Parameters resource"),
            (r#"["Parameters",[]]"#, "must be a FHIR Parameters resource"),
            ("{", "not a valid Parameters resource"),
            (r#"{"resourceType":"Parameters"} x"#, "not a valid Parameters resource"),
            ("{}", "must be a FHIR Parameters resource"),
            (r#"{"resourceType":"Patient"}"#, "not 'Patient'"),
            (r#"{"resourceType":7}"#, "must be a FHIR Parameters resource"),
            (r#"{"resourceType":"Parameters","parameter":{}}"#, "not a valid Parameters"),
            (
                r#"{"resourceType":"Parameters","parameter":[1]}"#,
                "parameter[0] must be a JSON object",
            ),
            (r#"{"resourceType":"Parameters","parameter":[{}]}"#, "parameter[0] has no name"),
            (r#"{"resourceType":"Parameters","parameter":[{"name":3}]}"#, "name must be a string"),
            (
                r#"{"resourceType":"Parameters","parameter":[{"name":"a","name":"b"}]}"#,
                "duplicate field",
            ),
        ] {
            assert_refused(post(ExportLevel::System, body), None, needle);
        }
        let err = post(ExportLevel::System, "\u{0}").unwrap_err();
        assert_eq!(err.parameter, None);
        let err = parse_kickoff(&KickoffInput {
            level: ExportLevel::System,
            query: &[],
            body: Some(b"\xff{}"),
            lenient: false,
            now: now(),
        })
        .unwrap_err();
        assert!(err.message.contains("UTF-8"), "{}", err.message);
        for (entry, parameter, needle) in [
            (r#"{"name":"_type"}"#, "_type", "has no value: expected valueString"),
            (r#"{"name":"_type","valueString":null}"#, "_type", "has no value"),
            (
                r#"{"name":"_type","valueString":"Patient","valueCode":"Patient"}"#,
                "_type",
                "more than one value[x]",
            ),
            (r#"{"name":"_type","valueString":7}"#, "_type", "valueString must be a JSON string"),
            (
                r#"{"name":"_type","valueInteger":7}"#,
                "_type",
                "takes valueString, not valueInteger",
            ),
            (r#"{"name":"_type","part":[]}"#, "_type", "single value[x], not 'part'"),
            (r#"{"name":"_type","resource":{}}"#, "_type", "single value[x], not 'resource'"),
            (
                r#"{"name":"_type","valueString":"Patient","modifierExtension":[]}"#,
                "_type",
                "unsupported member 'modifierExtension'",
            ),
            (
                r#"{"name":"allowPartialManifests","valueBoolean":"true"}"#,
                "allowPartialManifests",
                "true or false",
            ),
        ] {
            assert_refused(post(ExportLevel::System, &params(&[entry])), Some(parameter), needle);
        }
        // `id`, `extension` and other members of the resource are ignored; an empty Parameters
        // is a kick-off with no parameters.
        let body = r#"{"resourceType":"Parameters","id":"x","meta":{},"parameter":[
            {"id":"p","extension":[],"name":"_type","valueString":"Patient"}]}"#;
        assert_eq!(post(ExportLevel::System, body).unwrap().types, types(&["Patient"]));
        assert!(post(ExportLevel::System, r#"{"resourceType":"Parameters"}"#).is_ok());
        assert!(
            post(ExportLevel::System, r#"{"resourceType":"Parameters","parameter":[]}"#).is_ok()
        );
        // Escapes in names and values are decoded.
        let body = params(&[r#"{"name":"_typ\u0065","valueString":"Pati\u0065nt"}"#]);
        assert_eq!(post(ExportLevel::System, &body).unwrap().types, types(&["Patient"]));
        // Deep nesting is refused by serde_json's recursion limit, not a stack overflow.
        let deep =
            format!(r#"{{"name":"x","extension":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(post(ExportLevel::System, &params(&[&deep])).is_err());
    }

    #[test]
    fn post_kickoffs_take_no_query_parameters() {
        let body = params(&[r#"{"name":"_type","valueString":"Patient"}"#]);
        assert_refused(
            run(ExportLevel::System, &[("_type", "Observation")], Some(&body), false),
            Some("_type"),
            "POST",
        );
        let request =
            run(ExportLevel::System, &[("_type", "Observation")], Some(&body), true).unwrap();
        assert_eq!(request.types, types(&["Patient"]));
        assert_eq!(request.lenient_notes.len(), 1);
        assert!(request.lenient_notes[0].contains("'_type'"));
    }

    #[test]
    fn allow_partial_manifests_is_true_or_false_once() {
        assert!(get(&[("allowPartialManifests", "true")]).unwrap().allow_partial_manifests);
        assert!(!get(&[("allowPartialManifests", "false")]).unwrap().allow_partial_manifests);
        for bad in ["TRUE", "1", "yes", ""] {
            assert_refused(
                get_lenient(&[("allowPartialManifests", bad)]),
                Some("allowPartialManifests"),
                "true or false",
            );
        }
        assert_refused(
            get(&[("allowPartialManifests", "true"), ("allowPartialManifests", "true")]),
            Some("allowPartialManifests"),
            "only once",
        );
        let body = params(&[r#"{"name":"allowPartialManifests","valueBoolean":true}"#]);
        assert!(post(ExportLevel::System, &body).unwrap().allow_partial_manifests);
        let body = params(&[r#"{"name":"allowPartialManifests","valueString":"true"}"#]);
        assert_refused(
            post(ExportLevel::System, &body),
            Some("allowPartialManifests"),
            "takes valueBoolean",
        );
    }

    #[test]
    fn organize_output_by_is_one_known_type() {
        let request = get(&[("organizeOutputBy", "Patient")]).unwrap();
        assert_eq!(request.organize_output_by.as_deref(), Some("Patient"));
        assert_refused(
            get(&[("organizeOutputBy", "patient")]),
            Some("organizeOutputBy"),
            "'patient'",
        );
        assert_refused(get(&[("organizeOutputBy", "")]), Some("organizeOutputBy"), "not a FHIR R4");
        assert_refused(
            get(&[("organizeOutputBy", "Patient"), ("organizeOutputBy", "Patient")]),
            Some("organizeOutputBy"),
            "only once",
        );
        let request = get_lenient(&[("organizeOutputBy", "Nope")]).unwrap();
        assert_eq!(request.organize_output_by, None);
        assert_eq!(request.lenient_notes.len(), 1);
        for value in ["valueString", "valueCode"] {
            let entry = format!(r#"{{"name":"organizeOutputBy","{value}":"Group"}}"#);
            let request = post(ExportLevel::System, &params(&[&entry])).unwrap();
            assert_eq!(request.organize_output_by.as_deref(), Some("Group"));
        }
    }

    #[test]
    fn include_associated_data_keeps_non_empty_codes() {
        let request = get(&[
            ("includeAssociatedData", "LatestProvenanceResources,RelevantProvenanceResources"),
            ("includeAssociatedData", "_custom, LatestProvenanceResources"),
        ])
        .unwrap();
        assert_eq!(
            request.include_associated_data,
            ["LatestProvenanceResources", "RelevantProvenanceResources", "_custom"]
        );
        for bad in ["", "a,,b", "a,"] {
            assert_refused(
                get(&[("includeAssociatedData", bad)]),
                Some("includeAssociatedData"),
                "empty",
            );
        }
        for value in ["valueString", "valueCode"] {
            let entry = format!(
                r#"{{"name":"includeAssociatedData","{value}":"LatestProvenanceResources"}}"#
            );
            let request = post(ExportLevel::System, &params(&[&entry])).unwrap();
            assert_eq!(request.include_associated_data, ["LatestProvenanceResources"]);
        }
    }

    #[test]
    fn elements_are_top_level_names_with_optional_known_type() {
        let request = get(&[
            ("_elements", "id, Patient.name,meta"),
            ("_elements", "Observation.valueQuantity,id"),
        ])
        .unwrap();
        assert_eq!(request.elements, ["id", "Patient.name", "meta", "Observation.valueQuantity"]);
        for bad in [
            "Patient.name.given",
            "Patient.",
            ".id",
            "Patient",
            "na-me",
            "value[x]",
            "*",
            "a,,b",
            "",
        ] {
            let err = get(&[("_elements", bad)]).unwrap_err();
            assert_eq!(err.parameter.as_deref(), Some("_elements"), "{bad}");
        }
        assert_refused(get(&[("_elements", "Nope.id")]), Some("_elements"), "'Nope'");
        let request = get_lenient(&[("_elements", "Nope.id,id")]).unwrap();
        assert_eq!(request.elements, ["id"]);
        assert_eq!(request.lenient_notes.len(), 1);
        // A malformed item is refused even when lenient.
        assert_refused(get_lenient(&[("_elements", "Nope.a.b")]), Some("_elements"), "top-level");
        assert_refused(get_lenient(&[("_elements", ".id")]), Some("_elements"), "top-level");
    }

    #[test]
    fn type_filters_split_only_before_a_type_query() {
        let request = get(&[
            (
                "_typeFilter",
                "MedicationRequest?status=active,MedicationRequest?status=completed&date=gt2018-07-01T00:00:00Z",
            ),
            ("_typeFilter", "Patient?name=Smith,Jones,Observation?code=a,b"),
            ("_typeFilter", "Condition?code:not=x,notAType?y=1"),
        ])
        .unwrap();
        assert_eq!(
            request.type_filters,
            [
                "MedicationRequest?status=active",
                "MedicationRequest?status=completed&date=gt2018-07-01T00:00:00Z",
                "Patient?name=Smith,Jones",
                "Observation?code=a,b",
                "Condition?code:not=x,notAType?y=1",
            ]
        );
        for (bad, needle) in [
            ("", "empty"),
            ("Patient", "Type?name=value"),
            ("Patient?", "query is empty"),
            ("Patient?active", "name=value"),
            ("Patient?=x", "name=value"),
            ("Patient?a=1&&b=2", "name=value"),
            ("Patient?_include=Patient:organization", "'_include'"),
            ("Patient?active=true&_sort=name", "'_sort'"),
            ("Patient?_elements=id", "'_elements'"),
            ("Observation?_count:x=1", "'_count'"),
            ("?a=1", "Type?name=value"),
            ("Nope?a=1", "'Nope'"),
        ] {
            assert_refused(get(&[("_typeFilter", bad)]), Some("_typeFilter"), needle);
        }
        let request = get_lenient(&[("_typeFilter", "Nope?a=1,Patient?active=true")]).unwrap();
        assert_eq!(request.type_filters, ["Patient?active=true"]);
        assert_eq!(request.lenient_notes.len(), 1);
        assert_refused(
            get_lenient(&[("_typeFilter", "Patient?_sort=x")]),
            Some("_typeFilter"),
            "'_sort'",
        );
        let body = params(&[r#"{"name":"_typeFilter","valueString":"Patient?active=true"}"#]);
        assert_eq!(post(ExportLevel::System, &body).unwrap().type_filters, ["Patient?active=true"]);
    }

    #[test]
    fn unknown_parameters_are_refused_unless_lenient() {
        for name in ["_count", "foo", "_format", "_Type", "Patient", "", "_outputformat"] {
            assert_refused(get(&[(name, "x")]), Some(name), "unknown $export parameter");
        }
        assert_refused(get(&[("_TYPE", "Patient")]), Some("_TYPE"), "did you mean '_type'");
        let request = get_lenient(&[("_count", "10"), ("_type", "Patient"), ("foo", "")]).unwrap();
        assert_eq!(request.types, types(&["Patient"]));
        assert_eq!(request.lenient_notes.len(), 2);
        assert!(request.lenient_notes[0].starts_with("_count:"));
        assert!(request.lenient_notes[1].starts_with("foo:"));
        let body = params(&[r#"{"name":"_count","valueInteger":10}"#]);
        assert_refused(post(ExportLevel::System, &body), Some("_count"), "unsupported member");
        let body = params(&[r#"{"name":"_count","valueString":"10"}"#]);
        assert_refused(
            post(ExportLevel::System, &body),
            Some("_count"),
            "unknown $export parameter",
        );
        let request = run(ExportLevel::System, &[], Some(&body), true).unwrap();
        assert_eq!(request.lenient_notes.len(), 1);
    }

    #[test]
    fn absurd_inputs_are_refused_and_notes_are_capped() {
        let many_types = vec!["Patient"; MAX_LIST_ITEMS + 1].join(",");
        assert_refused(get(&[("_type", &many_types)]), Some("_type"), "too many _type items");
        let ok_types = vec!["Patient"; MAX_LIST_ITEMS].join(",");
        assert_eq!(get(&[("_type", &ok_types)]).unwrap().types, types(&["Patient"]));
        let many_filters = vec!["Patient?a=1"; MAX_LIST_ITEMS + 1].join(",");
        assert_refused(get(&[("_typeFilter", &many_filters)]), Some("_typeFilter"), "too many");
        let many_elements = vec!["id"; MAX_LIST_ITEMS + 1].join(",");
        assert_refused(get(&[("_elements", &many_elements)]), Some("_elements"), "too many");

        let entry = r#"{"name":"patient","valueReference":{"reference":"Patient/p"}}"#;
        let body = params(&vec![entry; MAX_PATIENTS + 1]);
        assert_refused(
            post(ExportLevel::Patient, &body),
            Some("patient"),
            "too many patient items",
        );
        let distinct: Vec<String> = (0..MAX_PATIENTS)
            .map(|i| {
                format!(r#"{{"name":"patient","valueReference":{{"reference":"Patient/p{i}"}}}}"#)
            })
            .collect();
        let distinct: Vec<&str> = distinct.iter().map(String::as_str).collect();
        assert_eq!(post(group(), &params(&distinct)).unwrap().patients.len(), MAX_PATIENTS);

        let query: Vec<(String, String)> =
            (0..=MAX_PARAMETERS).map(|i| (format!("x{i}"), String::new())).collect();
        let input = KickoffInput {
            level: ExportLevel::System,
            query: &query,
            body: None,
            lenient: true,
            now: now(),
        };
        assert_eq!(parse_kickoff(&input).unwrap_err().parameter, None);
        let input = KickoffInput { query: &query[..1_000], ..input };
        let notes = parse_kickoff(&input).unwrap().lenient_notes;
        assert_eq!(notes.len(), MAX_LENIENT_NOTES + 1);
        assert!(notes[MAX_LENIENT_NOTES].starts_with("900 more"), "{}", notes[MAX_LENIENT_NOTES]);
    }

    /// The parameter names this parser knows, plus near misses.
    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(
                ALL_PARAMS
                    .iter()
                    .map(|p| p.name())
                    .chain(["_count", "_TYPE", ""])
                    .collect::<Vec<_>>()
            )
            .prop_map(str::to_owned),
            any::<String>(),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[A-Za-z0-9,?=&/:.+ _#-]{0,40}",
            prop::sample::select(vec![
                "Patient",
                "Patient,Observation",
                "Patient/p1",
                "2024-01-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
                "ndjson",
                "true",
                "Patient?active=true,Observation?code=a,b",
                "id,Patient.name",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn level_strategy() -> impl Strategy<Value = ExportLevel> {
        prop_oneof![Just(ExportLevel::System), Just(ExportLevel::Patient), Just(group())]
    }

    fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            value_strategy().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(name_strategy(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A `Parameters` entry with a random name and random `value[x]`-like members.
    fn entry_strategy() -> impl Strategy<Value = serde_json::Value> {
        let key = prop::sample::select(vec![
            "valueString",
            "valueCode",
            "valueInstant",
            "valueDateTime",
            "valueBoolean",
            "valueReference",
            "valueInteger",
            "part",
            "id",
            "extension",
        ]);
        let reference = value_strategy().prop_map(|r| serde_json::json!({ "reference": r }));
        let member_value = prop_oneof![
            2 => value_strategy().prop_map(serde_json::Value::from),
            1 => any::<bool>().prop_map(serde_json::Value::from),
            2 => reference,
            1 => json_strategy(),
        ];
        (
            prop::option::weighted(0.9, name_strategy()),
            prop::collection::btree_map(key, member_value, 0..3),
        )
            .prop_map(|(name, members)| {
                let mut object = serde_json::Map::new();
                if let Some(name) = name {
                    object.insert("name".to_owned(), name.into());
                }
                for (key, value) in members {
                    object.insert(key.to_owned(), value);
                }
                serde_json::Value::Object(object)
            })
    }

    fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..200),
            1 => json_strategy().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            3 => prop::collection::vec(entry_strategy(), 0..6).prop_map(|entries| {
                serde_json::to_vec(&serde_json::json!({
                    "resourceType": "Parameters",
                    "parameter": entries,
                }))
                .unwrap()
            }),
        ]
    }

    /// What every accepted request guarantees.
    fn check_invariants(request: &ExportRequest) {
        if let Some(types) = &request.types {
            assert!(!types.is_empty());
            assert!(types.iter().enumerate().all(|(i, t)| !types[..i].contains(t)));
        }
        if request.level == ExportLevel::System {
            assert!(request.patients.is_empty());
        }
        assert!(request.patients.len() <= MAX_PATIENTS);
        if let Some(since) = request.since {
            assert!(since <= now());
            if let Some(until) = request.until {
                assert!(since <= until);
            }
        }
        assert!(request.lenient_notes.len() <= MAX_LENIENT_NOTES + 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_queries_never_panic(
            level in level_strategy(),
            lenient in any::<bool>(),
            query in prop::collection::vec((name_strategy(), value_strategy()), 0..8),
        ) {
            let input = KickoffInput { level, query: &query, body: None, lenient, now: now() };
            match parse_kickoff(&input) {
                Ok(request) => {
                    check_invariants(&request);
                    prop_assert!(lenient || request.lenient_notes.is_empty());
                }
                Err(err) => prop_assert!(!err.message.is_empty()),
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(
            level in level_strategy(),
            lenient in any::<bool>(),
            body in body_strategy(),
            query in prop::option::weighted(0.2, (name_strategy(), value_strategy())),
        ) {
            let query: Vec<(String, String)> = query.into_iter().collect();
            let input = KickoffInput { level, query: &query, body: Some(&body), lenient, now: now() };
            match parse_kickoff(&input) {
                Ok(request) => {
                    check_invariants(&request);
                    prop_assert!(lenient || query.is_empty());
                }
                Err(err) => prop_assert!(!err.message.is_empty()),
            }
        }
    }
}
