//! FHIR R4 search on stored resources: `_typeFilter` in Bulk Data `$export` (and the REST search
//! API later).
//!
//! A [`SearchQuery`] is parsed once, from a `_typeFilter` value such as
//! `Observation?code=http://loinc.org|85354-9&date=ge2020-01-01` or from `GET [base]/Type?…`
//! pairs, and then decides for each stored resource (its exact JSON bytes) whether it matches.
//! It runs inside the export loop: a byte-level pre-check rejects most non-matching resources
//! without parsing them (see `precheck.rs`; it never changes an answer), the rest are parsed into
//! just the elements the query's expressions can read (`crate::fhirpath::reach`) and evaluated.
//!
//! # Parameters
//! The R4 SearchParameters of every resource type come from the official HL7 definitions (see
//! `docs/definitions.md`). Their FHIRPath expressions are evaluated by the same FHIRPath engine as
//! SQL on FHIR views (`crate::fhirpath`), typed by the R4 element model: `Observation.code` is a
//! CodeableConcept, a bare choice element such as `Observation.effective` finds every
//! `effective[x]` with its type, arrays flatten at every step. Of what an expression selects, only
//! the types the parameter type compares are kept (a quantity search on `Observation.value`
//! looks at `valueQuantity` and `valueSampledData`, not `valueString`). The generator admits the
//! expressions it can check against the definitions: dotted paths, `|` unions,
//! `as X` / `.as(X)` / `.ofType(X)`, `.where(resolve() is X)` and `.where(field = 'literal')`.
//! Parameters outside that subset (for example `Patient.deceased`, `Bundle.composition`),
//! composite and special parameters, `phonetic`, `_text`, `_content` and `_query` are refused with
//! an error naming the parameter. [`supported_params`] lists the usable ones per type.
//!
//! # Semantics (R4 search.html)
//! - Parameters are AND-ed, comma-separated values OR-ed, a repeated parameter AND-ed again.
//!   A `_typeFilter` query is a URL query string inside the (already decoded) parameter value:
//!   it is split on `&` and `=` and each name and value is percent-decoded once more, so `%2C`
//!   separates values as `,` does and `%26` is an `&` in a value (clients such as Cumulus's
//!   smart-fetch encode the inner query this way; Epic, HAPI and Kodjin read it so). In that
//!   inner decoding a `%` not followed by two hex digits stays literal and `+` is not a space.
//!   Values are then split on `,` (and `|` where it separates parts) before `\,` `\|` `\$` `\\`
//!   are unescaped: FHIR's literal comma is `\,` (`%5C%2C` inside a `_typeFilter`).
//!   Empty values are ignored; `_format` and `_pretty` are ignored.
//! - **token**: `code`, `system|code`, `|code` (no system), `system|`, on Coding, CodeableConcept
//!   (any coding), Identifier (system and value), ContactPoint (value), and code, string, id, uri,
//!   boolean primitives. Matching is case-sensitive, except on `string` elements (R4: "not case
//!   sensitive"). The system of a `code` element is implicit, so `system|code` matches its code
//!   whatever the system; ContactPoint and other primitives never match a value with a system.
//!   Modifiers `:not` (no element matches; resources without the element match), `:text`
//!   (CodeableConcept.text, Coding.display, Identifier.type.text start with the value, as a string
//!   search), `:of-type` (`system|code|value` on an Identifier), `:missing`.
//! - **reference**: `id` (the parameter's target types), `Type/id`, an absolute URL; `:[Type]`,
//!   `:identifier` (token on Reference.identifier), `:missing`. The server base is not known here,
//!   so a relative reference `Patient/1` matches the search values `1`, `Patient/1` and any
//!   absolute URL ending in `/Patient/1`, while an absolute reference in a resource matches only
//!   the same URL. `/_history/n` is ignored on both sides; contained (`#id`) references never
//!   match. canonical and uri elements match the text, ignoring a `|version` the value does not
//!   name. Chained parameters and `_has` are refused.
//! - **date**: prefixes `eq ne gt lt ge le sa eb ap`; a value is the range its precision covers
//!   (`2020`, `2020-01`, `2020-01-01`, `2020-01-01T10:00`, seconds, fractions). A value without a
//!   time zone, and a target date without one, is taken as UTC. Targets: date and dateTime (range
//!   of their precision), instant (a point), Period (a missing bound is open), Timing (outer
//!   limits of `event`). The R4 range rules apply literally: `eq` the search range contains the
//!   target; `ne` it does not; `gt` the target reaches beyond the end of the search range; `lt`
//!   it starts before its start; `ge`/`le` are `gt`/`lt` or `eq`; `sa` it starts at or after the
//!   end; `eb` it ends at or before the start; `ap` the ranges overlap once the search range is
//!   widened on both sides by 10 % of the distance between now and its start, at least one day.
//! - **string**: starts-with, case-insensitive and accent-insensitive (Unicode lower case; Latin-1
//!   and Latin Extended-A letters lose their diacritics, `ß` → `ss`, combining marks are dropped;
//!   punctuation and spaces are compared as they are); `:contains` (anywhere); `:exact`. On
//!   string and markdown elements, HumanName (family, given, text, prefix, suffix) and Address
//!   (line, city, district, state, postalCode, country, text).
//! - **number** and **quantity**: `eq`, `ne` and `ap` use the value's implicit precision
//!   (`5.4` is `[5.35, 5.45)`, `100` is `[99.5, 100.5)`, `1e2` is `[50, 150)`: one significant
//!   digit, following the rule rather than R4's `[95, 105)` example); the other prefixes compare
//!   with the exact value. `ap` also accepts ±10 % of the value. Stored values are exact decimals
//!   (a point; a Range target is `[low, high]` with open missing bounds). Quantity:
//!   `number|system|code` compares Quantity.system and code, `number||code` the code or the
//!   human unit, `number` any unit; no unit conversion, `comparator` is ignored. Money's
//!   currency is a code in `urn:iso:std:iso:4217`; SampledData never matches.
//! - **uri**: exact (a canonical `url|version` also matches `url`); `:below` (the element starts
//!   with the value) and `:above` (the value starts with the element), URLs only.
//! - Common: `_id` (exact), `_lastUpdated`, `_profile`, `_tag`, `_security`, `_source`;
//!   `:missing=true|false` on every supported parameter.
//! - Refused: `_include`, `_revinclude`, `_sort`, `_count`, `_elements`, `_summary`, `_total`,
//!   `_contained`, `_containedType`, `_score`, `_has`, chained parameters, unknown parameters and
//!   modifiers, terminology modifiers (`:in`, `:not-in`, `:below`, `:above` on tokens), and
//!   malformed values (dates, prefixes, numbers, escapes).
//! - With `ne` and the other prefixes, a resource matches when any of its values matches; `:not`
//!   applies to the whole set.

mod ig;
mod matcher;
mod precheck;
mod query;
mod value;

#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::fhirpath::reach::{self, Reads};
use crate::fhirpath::{self, Env, Item, project};
use crate::generated::search_params::{NON_DOMAIN_RESOURCES, SEARCH_PARAMS};
use crate::{Instant, ResourceType};
use matcher::Node;
use precheck::Precheck;
use query::Clause;
pub(crate) use value::split_reference;

/// A parsed FHIR search on one resource type, ready to test stored resources.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    resource_type: ResourceType,
    clauses: Vec<Clause>,
    precheck: Precheck,
    /// The elements the clauses' expressions can read; `None`: the resource is parsed whole.
    reads: Option<Reads>,
    now: Instant,
}

/// Why a query was refused, or a stored resource could not be tested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SearchError {
    /// What is wrong, for an OperationOutcome diagnostic.
    pub message: String,
    /// The search parameter at fault, as written (`code:text`), when there is one.
    pub parameter: Option<String>,
}

impl SearchError {
    fn new(message: impl Into<String>) -> Self {
        SearchError { message: message.into(), parameter: None }
    }

    fn for_parameter(message: impl Into<String>, parameter: &str) -> Self {
        SearchError { message: message.into(), parameter: Some(parameter.to_owned()) }
    }
}

impl SearchQuery {
    /// Parses `Type?name=value&...` as it appears in a `_typeFilter` value (already
    /// percent-decoded once as a whole by the URL layer). The inner query is decoded once more as
    /// a query string, as described in the module docs. `now` is used only by the `ap` prefix on
    /// dates.
    pub fn parse_type_filter(text: &str, now: Instant) -> Result<Self, SearchError> {
        let (resource_type, pairs) = query::split_type_filter(text)?;
        Self::parse(resource_type, &pairs, now)
    }

    /// Parses the query string of `GET [base]/Type?...`: the `name=value` pairs as the URL
    /// layer decoded them (once); the same semantics as [`SearchQuery::parse_type_filter`]
    /// after its inner decoding.
    pub fn parse(
        resource_type: ResourceType,
        pairs: &[(String, String)],
        now: Instant,
    ) -> Result<Self, SearchError> {
        let clauses = query::parse_pairs(resource_type, pairs)?;
        let precheck = Precheck::build(&clauses);
        let reads =
            reach::expressions(resource_type.as_str(), clauses.iter().map(|c| &c.expr)).ok();
        Ok(SearchQuery { resource_type, clauses, precheck, reads, now })
    }

    /// The resource type the query searches.
    pub fn resource_type(&self) -> ResourceType {
        self.resource_type
    }

    /// Whether the stored resource (its exact JSON bytes) matches. The caller passes resources of
    /// [`SearchQuery::resource_type`]; `resourceType` is not checked again.
    ///
    /// Errors only for bytes that are not a JSON object. Bytes the pre-check rejects are not
    /// parsed, so invalid JSON may also just not match.
    pub fn matches(&self, body: &[u8]) -> Result<bool, SearchError> {
        if !self.precheck.may_match(body) {
            return Ok(false);
        }
        self.evaluate(body)
    }

    /// [`SearchQuery::matches`] without the pre-check, for tests that prove it exact.
    #[cfg(test)]
    fn matches_without_precheck(&self, body: &[u8]) -> Result<bool, SearchError> {
        self.evaluate(body)
    }

    fn evaluate(&self, body: &[u8]) -> Result<bool, SearchError> {
        let root = parse_object(body, self.reads.as_ref())?;
        let env = Env { resource: &root, constants: &[], row_index: 0, typed: true };
        let focus = Item::borrowed(&root, Some(self.resource_type.as_str()));
        for clause in &self.clauses {
            let items = fhirpath::evaluate(&clause.expr, focus.clone(), &env).map_err(|e| {
                SearchError::for_parameter(
                    format!("evaluating `{}`: {}", clause.def.expression, e.message),
                    clause.def.code,
                )
            })?;
            let comparable = clause.def.param_type.comparable_types();
            let nodes: Vec<Node<'_>> = items
                .iter()
                .filter_map(|item| {
                    let fhir_type = item.ty.filter(|ty| comparable.contains(ty))?;
                    Some(Node { value: &item.value, fhir_type })
                })
                .collect();
            if !matcher::clause_matches(clause, &nodes, self.now) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`SearchQuery::matches`] with the resource parsed whole, for tests that prove the
    /// partial parse exact.
    #[cfg(test)]
    fn matches_parsed_whole(&self, body: &[u8]) -> Result<bool, SearchError> {
        SearchQuery { reads: None, ..self.clone() }.evaluate(body)
    }
}

/// Deepest nesting parsed: `serde_json`'s own limit (127 nested arrays and objects), checked
/// first so that the error says so. The write path refuses resources deeper than
/// [`crate::json::MAX_RESOURCE_DEPTH`] (below this), so every stored resource can be evaluated.
const MAX_DEPTH: usize = 127;
const _: () = assert!(crate::json::MAX_RESOURCE_DEPTH < MAX_DEPTH);

/// Parses a stored resource, building only what `reads` names (everything when `None`).
fn parse_object(body: &[u8], reads: Option<&Reads>) -> Result<Value, SearchError> {
    let invalid = |detail: &dyn std::fmt::Display| {
        SearchError::new(format!("the stored resource is not a JSON object: {detail}"))
    };
    if crate::json::nested_deeper_than(body, MAX_DEPTH) {
        return Err(invalid(&format_args!("nested deeper than {MAX_DEPTH} levels")));
    }
    let root = match reads {
        Some(reads) => project::parse(body, reads).map_err(|e| invalid(&e))?,
        None => serde_json::from_slice(body).map_err(|e| invalid(&e))?,
    };
    if !root.is_object() {
        return Err(invalid(&"not an object"));
    }
    Ok(root)
}

/// The search parameters usable in `_typeFilter` for `resource_type`, for the
/// CapabilityStatement: `(code, type, expression)`, the common ones (`_id`, `_lastUpdated`, …)
/// first, then the type's own, each sorted by code.
pub fn supported_params(
    resource_type: ResourceType,
) -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    let domain = !NON_DOMAIN_RESOURCES.contains(&resource_type.as_str());
    let bases =
        [Some("Resource"), domain.then_some("DomainResource"), Some(resource_type.as_str())];
    let mut rows: Vec<_> = SEARCH_PARAMS
        .iter()
        .chain(ig::IG_SEARCH_PARAMS)
        .filter(move |row| bases.contains(&Some(row.base)) && row.unsupported.is_none())
        .collect();
    rows.sort_by_key(|row| (row.base != "Resource" && row.base != "DomainResource", row.code));
    rows.into_iter().map(|row| (row.code, query::type_name(row.param_type), row.expression))
}
