//! `_elements` for Bulk Data `$export` (spec §2.4): keep only the listed top-level elements of
//! each resource, plus the ones a reader cannot do without, and tag the result `SUBSETTED`.
//!
//! [`ElementSelection::parse`] checks the `_elements` items of an
//! [`ExportRequest`](crate::export::ExportRequest) against the R4 definitions;
//! [`ElementSelection::project_into`] trims one stored resource. The projection runs once per
//! exported resource, so it never builds a JSON tree: it splits the top level with
//! [`RawMembers`] and copies each kept member's bytes verbatim (`1.50` stays `1.50`, keys keep
//! their spelling, members keep their order). Only `meta` is rewritten, to add the tag.
//!
//! # Readings
//!
//! * **Which types are trimmed.** `Type.element` applies to `Type`; `element` applies to every
//!   type that has a top-level element of that name (§2.4: "applies to every type where it
//!   fits"). A type that no item applies to is exported whole and untagged: `_elements=name`
//!   trims Patient, Practitioner, Organization, … but leaves Observation as it is, and
//!   `_elements=Patient.name` trims only Patient. Trimming a type down to its mandatory elements
//!   because of an item that cannot apply to it would drop data nobody asked to drop.
//! * **What a trimmed resource keeps**, in its original order:
//!   - `resourceType`, `id` and `meta`, always (§2.4 asks for the `SUBSETTED` tag, which lives in
//!     `meta`; an `_elements=id` export is the Group membership recipe, C5);
//!   - `implicitRules` and `modifierExtension` when present: they are modifiers of the resource
//!     as a whole, and can change what every other element means, including the selected ones, in
//!     ways a reader cannot know without them. R4 search §3.1.1.5.9 asks clients to list modifier
//!     elements; type-specific ones (`Patient.active`, `Condition.verificationStatus`) are left to
//!     the client, the two resource-level ones are kept because no client can be expected to
//!     know they matter;
//!   - the type's mandatory elements (`min >= 1` in the R4 snapshot, e.g. Observation `status`
//!     and `code`), which the server SHOULD always return (§2.4);
//!   - the selected elements.
//! * **Not kept unless listed:** `text`, `contained`, `extension`, `language` and every other
//!   element. A kept element may then refer to a `#contained` resource that was dropped; the
//!   `SUBSETTED` tag tells the reader the resource is incomplete.
//! * **Primitive extensions** (`_status` next to `status`, `_valueString` next to `valueString`)
//!   follow their element.
//! * **Choice elements** are named by their base name: `value` (or `Observation.value`) selects
//!   `valueQuantity`, `valueString`, …. A typed spelling such as `Observation.valueQuantity` is
//!   not an element name and is refused, with a hint naming the base name. In a resource, every
//!   member spelled as the base name followed by an upper-case letter goes with the choice
//!   element; the type after the base name is not checked against the element's types (the
//!   store does not validate elements, and the generator makes sure no other element of the type
//!   is spelled that way).
//! * **Unknown elements are refused**, each with a message naming the item: `Type.element` must
//!   be a top-level element of `Type`, and `element` of at least one type. `resourceType` is not
//!   an element (it is always returned anyway).
//! * **The tag** `{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
//!   "code":"SUBSETTED"}` is appended to `meta.tag`, or added as a new `meta.tag` (last member of
//!   `meta`), or as a new `meta` right after `resourceType` and `id`. A `meta.tag` that already
//!   holds a coding with that system and code is left as it is. Stored resources always have an
//!   object `meta` (the store stamps it); a `meta` that is not an object or a `meta.tag` that is not
//!   an array is invalid FHIR and is replaced rather than failing the export.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    ModelError, ResourceType,
    generated::r4::{MANDATORY_ELEMENTS, TOP_LEVEL_ELEMENTS},
    json::RawMembers,
    resource_type::truncate_for_message,
};

/// The system of the `SUBSETTED` tag.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
/// The code of the `SUBSETTED` tag.
pub const SUBSETTED_CODE: &str = "SUBSETTED";
/// The `SUBSETTED` coding as minified JSON.
const SUBSETTED_CODING: &[u8] =
    br#"{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}"#;

/// Top-level elements a trimmed resource keeps whatever the selection (besides `resourceType`).
const ALWAYS_KEPT: &[&str] = &["id", "meta", "implicitRules", "modifierExtension"];

/// A checked `_elements` list.
///
/// Build it once per export with [`ElementSelection::parse`]; [`ElementSelection::project_into`]
/// then trims each resource. See the [module documentation](self) for what is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementSelection {
    /// One rule per type some item applies to, sorted by type.
    rules: Vec<TypeRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TypeRule {
    resource_type: ResourceType,
    /// Selected elements as the R4 table names them (`subject`, `value[x]`), deduplicated, in
    /// order of first mention.
    selected: Vec<&'static str>,
    /// JSON member names of the type's mandatory elements.
    mandatory: &'static [&'static str],
}

impl ElementSelection {
    /// Items are `element` (any type) or `Type.element`, as
    /// [`ExportRequest::elements`](crate::export::ExportRequest::elements) holds them.
    ///
    /// Each item is checked again here: `Type` must be an R4 resource type and `element` one of
    /// its top-level elements; a bare `element` must be a top-level element of at least one type.
    /// Choice elements are named by their base name (`value`, not `valueQuantity`). The first
    /// item that fails is refused with a message naming it. No items select nothing: every type
    /// is then exported whole.
    pub fn parse(items: &[String]) -> Result<Self, ModelError> {
        let mut rules: Vec<TypeRule> = Vec::new();
        let mut add = |resource_type: ResourceType, element: &'static str| {
            let rule = match rules.binary_search_by(|r| r.resource_type.cmp(&resource_type)) {
                Ok(idx) => &mut rules[idx],
                Err(idx) => {
                    let mandatory = mandatory_elements(resource_type);
                    let rule = TypeRule { resource_type, selected: Vec::new(), mandatory };
                    rules.insert(idx, rule);
                    &mut rules[idx]
                }
            };
            if !rule.selected.contains(&element) {
                rule.selected.push(element);
            }
        };
        for item in items {
            let invalid = |why: String| {
                ModelError::InvalidResource(format!(
                    "invalid _elements item '{}': {why}",
                    truncate_for_message(item)
                ))
            };
            let (type_name, name) = match item.split_once('.') {
                Some((type_name, name)) => (Some(type_name), name),
                None => (None, item.as_str()),
            };
            if name.is_empty() || name.contains('.') {
                return Err(invalid(
                    "expected 'element' or 'Type.element', naming a top-level element".to_owned(),
                ));
            }
            match type_name {
                Some(type_name) => {
                    let resource_type = ResourceType::parse(type_name).map_err(|_| {
                        invalid(format!(
                            "'{}' is not an R4 resource type",
                            truncate_for_message(type_name)
                        ))
                    })?;
                    let element = find_element(resource_type, name).ok_or_else(|| {
                        invalid(format!(
                            "{resource_type} has no top-level element '{}'{}",
                            truncate_for_message(name),
                            choice_hint(name, Some(resource_type))
                        ))
                    })?;
                    add(resource_type, element);
                }
                None => {
                    let mut found = false;
                    for resource_type in ResourceType::all() {
                        if let Some(element) = find_element(resource_type, name) {
                            add(resource_type, element);
                            found = true;
                        }
                    }
                    if !found {
                        return Err(invalid(format!(
                            "no R4 resource type has a top-level element '{}'{}",
                            truncate_for_message(name),
                            choice_hint(name, None)
                        )));
                    }
                }
            }
        }
        Ok(ElementSelection { rules })
    }

    /// Whether resources of this type are trimmed at all, i.e. some item applies to the type
    /// (`Type.element` for this type, or a bare `element` that is a top-level element of it).
    /// Types no item applies to are exported whole, without the `SUBSETTED` tag.
    pub fn applies_to(&self, resource_type: ResourceType) -> bool {
        self.rule(resource_type).is_some()
    }

    /// Appends to `out` the stored resource `body` trimmed to: `resourceType`, `id`, `meta` (with
    /// the `SUBSETTED` tag added once), `implicitRules` and `modifierExtension` if present, the
    /// mandatory elements of the type and the selected ones (with their `_element` primitive
    /// extensions). Every kept member is copied byte for byte and in its original order.
    ///
    /// For a type the selection does not [apply to](Self::applies_to), `body` is appended
    /// unchanged and not inspected. Otherwise it errors only if `body` is not a JSON object (or
    /// has duplicate top-level keys, which the store never holds); `out` is then left as it was.
    pub fn project_into(
        &self,
        resource_type: ResourceType,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ModelError> {
        let Some(rule) = self.rule(resource_type) else {
            out.extend_from_slice(body);
            return Ok(());
        };
        let text = std::str::from_utf8(body)
            .map_err(|e| ModelError::Json(format!("body is not UTF-8: {e}")))?;
        let members = RawMembers::parse(text)?;
        let has_meta = members.get("meta").is_some();
        // A JSON object: the first non-whitespace byte is `{`.
        let mut prev_end = text.find('{').map_or(0, |open| open + 1);
        let mut first = true;
        let mut meta_pending = !has_meta;
        out.reserve(body.len() + SUBSETTED_CODING.len() + 16);
        out.push(b'{');
        for (key, value) in &members.0 {
            let raw = value.get();
            let value_start = offset_in(text, raw);
            let value_end = value_start + raw.len();
            // `"key":value` exactly as written, without the separator before it.
            let member_start = prev_end
                + text[prev_end..value_start]
                    .find(|c: char| c != ',' && !is_json_whitespace(c))
                    .unwrap_or(0);
            prev_end = value_end;
            if !rule.keeps(key) {
                continue;
            }
            if meta_pending && !matches!(key.as_ref(), "resourceType" | "id" | "_id") {
                push_separator(out, &mut first);
                push_new_meta(out);
                meta_pending = false;
            }
            push_separator(out, &mut first);
            if key == "meta" {
                out.extend_from_slice(&text.as_bytes()[member_start..value_start]);
                push_tagged_meta(raw, out);
            } else {
                out.extend_from_slice(&text.as_bytes()[member_start..value_end]);
            }
        }
        if meta_pending {
            push_separator(out, &mut first);
            push_new_meta(out);
        }
        out.push(b'}');
        Ok(())
    }

    fn rule(&self, resource_type: ResourceType) -> Option<&TypeRule> {
        let idx = self.rules.binary_search_by(|r| r.resource_type.cmp(&resource_type)).ok()?;
        self.rules.get(idx)
    }
}

impl TypeRule {
    /// Whether the top-level member `key` stays in a trimmed resource of this type.
    fn keeps(&self, key: &str) -> bool {
        if key == "resourceType" {
            return true;
        }
        // `_status` carries the id and extensions of the primitive `status`.
        let name = key.strip_prefix('_').unwrap_or(key);
        ALWAYS_KEPT.contains(&name)
            || self.mandatory.contains(&name)
            || self.selected.iter().any(|element| spells(element, name))
    }
}

/// Whether JSON member `name` is a spelling of element `element` (`status`, or `value[x]` for
/// `valueQuantity`). The generator checks that no other element of a type looks like a spelling
/// of one of its choice elements.
fn spells(element: &str, name: &str) -> bool {
    match element.strip_suffix("[x]") {
        Some(base) => name
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => name == element,
    }
}

/// The elements of the types outside R4 ([`crate::IG_TYPES`]): type, mandatory elements,
/// top-level elements (SQL on FHIR v2's ViewDefinition, choice elements as `name[x]`).
const IG_ELEMENTS: &[(&str, &[&str], &[&str])] = &[(
    "ViewDefinition",
    &["status", "resource", "select"],
    &[
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "url",
        "identifier",
        "version",
        "name",
        "title",
        "status",
        "experimental",
        "publisher",
        "contact",
        "description",
        "useContext",
        "copyright",
        "resource",
        "resourceProfile",
        "fhirVersion",
        "constant",
        "select",
        "where",
    ],
)];

/// The mandatory top-level elements of `resource_type` (kept by every `_elements`).
fn mandatory_elements(resource_type: ResourceType) -> &'static [&'static str] {
    match IG_ELEMENTS.iter().find(|(t, ..)| *t == resource_type.as_str()) {
        Some((_, mandatory, _)) => mandatory,
        None => table_entry(MANDATORY_ELEMENTS, resource_type),
    }
}

/// The top-level elements of `resource_type`.
fn top_level_elements(resource_type: ResourceType) -> &'static [&'static str] {
    match IG_ELEMENTS.iter().find(|(t, ..)| *t == resource_type.as_str()) {
        Some((_, _, top_level)) => top_level,
        None => table_entry(TOP_LEVEL_ELEMENTS, resource_type),
    }
}

/// The row of a generated per-type table (sorted like `RESOURCE_TYPES`, so every type has one).
fn table_entry(
    table: &'static [(&'static str, &'static [&'static str])],
    resource_type: ResourceType,
) -> &'static [&'static str] {
    table
        .binary_search_by(|(name, _)| (*name).cmp(resource_type.as_str()))
        .map_or(&[], |idx| table[idx].1)
}

/// The top-level element of `resource_type` that `name` names: `status`, or `value` for
/// `value[x]`.
fn find_element(resource_type: ResourceType, name: &str) -> Option<&'static str> {
    top_level_elements(resource_type)
        .iter()
        .copied()
        .find(|element| element.strip_suffix("[x]").unwrap_or(element) == name)
}

/// `"; choice elements are named by their base name: use 'Observation.value'"` when `name`
/// spells a choice element of the type (or of any type), else empty.
fn choice_hint(name: &str, resource_type: Option<ResourceType>) -> String {
    let types: Vec<ResourceType> = match resource_type {
        Some(resource_type) => vec![resource_type],
        None => ResourceType::all().collect(),
    };
    for ty in types {
        let element = top_level_elements(ty)
            .iter()
            .find(|element| element.ends_with("[x]") && spells(element, name));
        if let Some(base) = element.and_then(|element| element.strip_suffix("[x]")) {
            let prefix = resource_type.map(|t| format!("{t}.")).unwrap_or_default();
            return format!("; choice elements are named by their base name: use '{prefix}{base}'");
        }
    }
    String::new()
}

/// The byte offset of `inner`, a slice of `outer`, within `outer`.
fn offset_in(outer: &str, inner: &str) -> usize {
    let offset = inner.as_ptr().addr().wrapping_sub(outer.as_ptr().addr());
    debug_assert!(offset <= outer.len() && offset + inner.len() <= outer.len());
    offset
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\n' | '\r' | '\t')
}

fn push_separator(out: &mut Vec<u8>, first: &mut bool) {
    if !std::mem::take(first) {
        out.push(b',');
    }
}

/// `"meta":{"tag":[SUBSETTED]}`, for a resource without `meta`.
fn push_new_meta(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"meta\":");
    push_meta_with_tag_only(out);
}

fn push_meta_with_tag_only(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"tag\":[");
    out.extend_from_slice(SUBSETTED_CODING);
    out.extend_from_slice(b"]}");
}

/// Appends the value of `meta` with the `SUBSETTED` tag added, unless it is already there.
fn push_tagged_meta(raw_meta: &str, out: &mut Vec<u8>) {
    let Ok(meta) = RawMembers::parse(raw_meta) else {
        // Not an object (or duplicate keys): invalid FHIR, replaced.
        push_meta_with_tag_only(out);
        return;
    };
    let Some(tag) = meta.get("tag") else {
        // `raw_meta` is exactly `{…}`: add `tag` as its last member.
        let body = raw_meta.strip_suffix('}').unwrap_or(raw_meta);
        out.extend_from_slice(body.as_bytes());
        if !meta.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"tag\":[");
        out.extend_from_slice(SUBSETTED_CODING);
        out.extend_from_slice(b"]}");
        return;
    };
    let tag_raw = tag.get();
    let tag_start = offset_in(raw_meta, tag_raw);
    out.extend_from_slice(&raw_meta.as_bytes()[..tag_start]);
    match serde_json::from_str::<Vec<&RawValue>>(tag_raw) {
        Ok(codings) if codings.iter().any(|coding| is_subsetted(coding)) => {
            out.extend_from_slice(tag_raw.as_bytes());
        }
        Ok(codings) => {
            // `tag_raw` is exactly `[…]`: append the coding as its last item.
            if codings.is_empty() {
                out.push(b'[');
            } else {
                out.extend_from_slice(tag_raw.strip_suffix(']').unwrap_or(tag_raw).as_bytes());
                out.push(b',');
            }
            out.extend_from_slice(SUBSETTED_CODING);
            out.push(b']');
        }
        Err(_) => {
            // Not an array: invalid FHIR, replaced.
            out.push(b'[');
            out.extend_from_slice(SUBSETTED_CODING);
            out.push(b']');
        }
    }
    out.extend_from_slice(&raw_meta.as_bytes()[tag_start + tag_raw.len()..]);
}

/// Whether a `meta.tag` item is a coding with the `SUBSETTED` system and code.
fn is_subsetted(coding: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Coding<'a> {
        #[serde(borrow)]
        system: Option<Cow<'a, str>>,
        #[serde(borrow)]
        code: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Coding<'_>>(coding.get()).is_ok_and(|coding| {
        coding.system.as_deref() == Some(SUBSETTED_SYSTEM)
            && coding.code.as_deref() == Some(SUBSETTED_CODE)
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::PathBuf, process::Command};

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        Instant, PreparedResource, ResourceId,
        generated::r4::{MANDATORY_ELEMENTS, RESOURCE_TYPES, TOP_LEVEL_ELEMENTS},
    };

    const TAG: &str = r#"{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}"#;

    fn selection(items: &[&str]) -> ElementSelection {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        ElementSelection::parse(&items).unwrap()
    }

    fn refused(items: &[&str]) -> String {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        ElementSelection::parse(&items).unwrap_err().to_string()
    }

    fn rt(name: &str) -> ResourceType {
        ResourceType::parse(name).unwrap()
    }

    fn project(selection: &ElementSelection, body: &str) -> String {
        let body_json: Value = serde_json::from_str(body).unwrap();
        let resource_type = rt(body_json["resourceType"].as_str().unwrap());
        let mut out = Vec::new();
        selection.project_into(resource_type, body.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn generated_tables_cover_every_type() {
        for table in [MANDATORY_ELEMENTS, TOP_LEVEL_ELEMENTS] {
            let types: Vec<&str> = table.iter().map(|(t, _)| *t).collect();
            assert_eq!(types, RESOURCE_TYPES);
        }
        let entry = |table: &'static [(&'static str, &'static [&'static str])], name| {
            table_entry(table, rt(name))
        };
        assert_eq!(entry(MANDATORY_ELEMENTS, "Observation"), ["status", "code"]);
        assert_eq!(entry(MANDATORY_ELEMENTS, "Condition"), ["subject"]);
        assert!(entry(MANDATORY_ELEMENTS, "Patient").is_empty());
        assert_eq!(entry(MANDATORY_ELEMENTS, "Bundle"), ["type"]);
        assert_eq!(
            entry(MANDATORY_ELEMENTS, "MedicationRequest"),
            ["status", "intent", "medicationCodeableConcept", "medicationReference", "subject"]
        );
        let observation = entry(TOP_LEVEL_ELEMENTS, "Observation");
        for name in ["id", "meta", "text", "status", "code", "value[x]", "effective[x]", "subject"]
        {
            assert!(observation.contains(&name), "{name}");
        }
        assert!(!observation.contains(&"valueQuantity"));
        // Every mandatory JSON name spells a top-level element of its type.
        for ((name, mandatory), (_, top_level)) in MANDATORY_ELEMENTS.iter().zip(TOP_LEVEL_ELEMENTS)
        {
            for member in *mandatory {
                assert!(top_level.iter().any(|e| spells(e, member)), "{name}.{member}");
            }
        }
    }

    #[test]
    fn parse_checks_items_against_the_definitions() {
        let s = selection(&["Patient.name", "subject", "value", "Observation.effective"]);
        assert!(s.applies_to(ResourceType::PATIENT));
        assert!(s.applies_to(rt("Observation")) && s.applies_to(rt("Condition")));
        assert!(!s.applies_to(rt("Practitioner")), "Practitioner has no name/subject/value");
        assert!(!s.applies_to(rt("Organization")));
        assert!(s.applies_to(rt("Basic")), "Basic.subject");

        let names = selection(&["name"]);
        for t in ["Patient", "Practitioner", "Organization", "Location"] {
            assert!(names.applies_to(rt(t)), "{t}");
        }
        assert!(!names.applies_to(rt("Observation")));

        let ids = selection(&["id"]);
        assert!(ResourceType::all().all(|t| ids.applies_to(t)));
        assert!(ResourceType::all().all(|t| !selection(&[]).applies_to(t)));
        assert_eq!(selection(&["id", "Patient.id"]), selection(&["id"]));

        for (items, expected) in [
            (&["foo"][..], "'foo'"),
            (&["id", "Observation.foo"], "'Observation.foo'"),
            (&["Nope.id"], "'Nope' is not an R4 resource type"),
            (&["Patient.value"], "Patient has no top-level element 'value'"),
            (&["Observation.valueQuantity"], "use 'Observation.value'"),
            (&["effectiveDateTime"], "use 'effective'"),
            (&["Patient.name.given"], "top-level"),
            (&["Patient."], "top-level"),
            (&[""], "top-level"),
            (&["resourceType"], "'resourceType'"),
            (&["_id"], "'_id'"),
            (&["Observation.status", "Observation.Status"], "'Observation.Status'"),
        ] {
            let message = refused(items);
            assert!(message.contains(expected), "{items:?}: {message}");
            assert!(message.starts_with("invalid _elements item '"), "{message}");
        }
    }

    #[test]
    fn keeps_mandatory_selected_and_resource_level_elements_byte_exact() {
        let body = concat!(
            r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"#,
            r#""2024-01-01T00:00:00.000001Z"},"implicitRules":"http://x","text":{"status":"#,
            r#""generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},"#,
            r#""contained":[{"resourceType":"Patient","id":"c"}],"extension":[{"url":"u","#,
            r#""valueDecimal":1.50}],"modifierExtension":[{"url":"m","valueBoolean":true}],"#,
            r#""status":"final","_status":{"id":"s"},"category":[{"text":"vital"}],"code":{"#,
            r#""text":"weight \u00e9"},"subject":{"reference":"Patient/p"},"#,
            r#""effectiveDateTime":"2020-01-01","valueQuantity":{"value":1.50,"unit":"kg"},"#,
            r#""note":[{"text":"1e2"}]}"#
        );
        let expected_head = concat!(
            r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"#,
            r#""2024-01-01T00:00:00.000001Z","tag":["#
        );
        let resource_level = concat!(
            r#""implicitRules":"http://x","#,
            r#""modifierExtension":[{"url":"m","valueBoolean":true}],"#,
            r#""status":"final","_status":{"id":"s"},"#
        );
        let code = r#""code":{"text":"weight \u00e9"}"#;

        // Only `subject` asked: `status` and `code` are mandatory and stay.
        let out = project(&selection(&["Observation.subject"]), body);
        let expected = format!(
            r#"{expected_head}{TAG}]}},{resource_level}{code},"subject":{{"reference":"Patient/p"}}}}"#
        );
        assert_eq!(out, expected);

        // Choice elements by base name; order of the original kept, not of the list.
        let out = project(&selection(&["value", "effective", "category"]), body);
        let expected = format!(
            r#"{expected_head}{TAG}]}},{resource_level}"category":[{{"text":"vital"}}],{code},"#
        ) + r#""effectiveDateTime":"2020-01-01","valueQuantity":{"value":1.50,"unit":"kg"}}"#;
        assert_eq!(out, expected);

        // Listed `text`, `contained` and `extension` are kept like anything else.
        let out = project(&selection(&["text", "extension", "contained"]), body);
        assert!(out.contains(r#""extension":[{"url":"u","valueDecimal":1.50}]"#), "{out}");
        assert!(out.contains(r#""contained":[{"resourceType":"Patient","id":"c"}]"#), "{out}");
        assert!(out.contains(r#"xhtml\">x</div>"}"#), "{out}");
        assert!(!out.contains("subject") && !out.contains("note"), "{out}");
    }

    /// Members are matched to a choice element by spelling (base name, then an upper-case
    /// letter), not against its list of types, so an invalid `valueX` goes with `value`.
    #[test]
    fn primitive_extensions_follow_their_choice_element() {
        let body = r#"{"resourceType":"Observation","id":"o","status":"final","code":{},"valueString":"a","_valueString":{"id":"x"},"values":1,"valueX":2,"interpretation":[]}"#;
        let out = project(&selection(&["Observation.value"]), body);
        assert_eq!(
            out,
            format!(
                r#"{{"resourceType":"Observation","id":"o","meta":{{"tag":[{TAG}]}},"status":"final","code":{{}},"valueString":"a","_valueString":{{"id":"x"}},"valueX":2}}"#
            )
        );
    }

    #[test]
    fn types_no_item_applies_to_are_left_whole() {
        let body = r#"{"resourceType":"Observation","id":"o","meta":{"versionId":"1"},"status":"final","code":{},"valueQuantity":{"value":1.50}}"#;
        for items in [&["Patient.name"][..], &["name", "birthDate"], &[]] {
            let s = selection(items);
            assert!(!s.applies_to(rt("Observation")));
            assert_eq!(project(&s, body), body, "{items:?}");
        }
        // Not inspected either: whatever is stored goes out as it is.
        let mut out = b"x".to_vec();
        selection(&["Patient.name"])
            .project_into(rt("Observation"), b"not json", &mut out)
            .unwrap();
        assert_eq!(out, b"xnot json");
    }

    #[test]
    fn the_subsetted_tag_is_added_once() {
        let s = selection(&["id"]);
        let cases = [
            // A new meta right after resourceType and id.
            (
                r#"{"resourceType":"Patient","id":"p","name":[{"family":"F"}],"gender":"male"}"#,
                format!(r#"{{"resourceType":"Patient","id":"p","meta":{{"tag":[{TAG}]}}}}"#),
            ),
            (
                r#"{"id":"p","resourceType":"Patient","_id":{"id":"e"},"active":true}"#,
                format!(
                    r#"{{"id":"p","resourceType":"Patient","_id":{{"id":"e"}},"meta":{{"tag":[{TAG}]}}}}"#
                ),
            ),
            (
                r#"{"resourceType":"Patient","modifierExtension":[],"id":"p"}"#,
                format!(
                    r#"{{"resourceType":"Patient","meta":{{"tag":[{TAG}]}},"modifierExtension":[],"id":"p"}}"#
                ),
            ),
            // meta without tag, empty meta, empty tag array.
            (
                r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1","profile":["x"]},"active":true}"#,
                format!(
                    r#"{{"resourceType":"Patient","id":"p","meta":{{"versionId":"1","profile":["x"],"tag":[{TAG}]}}}}"#
                ),
            ),
            (
                r#"{"resourceType":"Patient","meta":{}}"#,
                format!(r#"{{"resourceType":"Patient","meta":{{"tag":[{TAG}]}}}}"#),
            ),
            (
                r#"{"resourceType":"Patient","meta":{"tag":[],"source":"s"}}"#,
                format!(r#"{{"resourceType":"Patient","meta":{{"tag":[{TAG}],"source":"s"}}}}"#),
            ),
            // Existing tags are kept, the coding appended after them.
            (
                r#"{"resourceType":"Patient","meta":{"versionId":"2","tag":[{"system":"a","code":"b"},{"code":"SUBSETTED"}],"security":[]}}"#,
                format!(
                    r#"{{"resourceType":"Patient","meta":{{"versionId":"2","tag":[{{"system":"a","code":"b"}},{{"code":"SUBSETTED"}},{TAG}],"security":[]}}}}"#
                ),
            ),
            // Already tagged (other members of the coding do not matter): left alone.
            (
                r#"{"resourceType":"Patient","meta":{"tag":[{"display":"d","code":"SUBSETTED","system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue"}]},"active":true}"#,
                r#"{"resourceType":"Patient","meta":{"tag":[{"display":"d","code":"SUBSETTED","system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue"}]}}"#.to_owned(),
            ),
            // Invalid meta or tag (never stored): replaced.
            (
                r#"{"resourceType":"Patient","meta":"x","id":"p"}"#,
                format!(r#"{{"resourceType":"Patient","meta":{{"tag":[{TAG}]}},"id":"p"}}"#),
            ),
            (
                r#"{"resourceType":"Patient","meta":{"tag":{"code":"x"},"source":"s"}}"#,
                format!(r#"{{"resourceType":"Patient","meta":{{"tag":[{TAG}],"source":"s"}}}}"#),
            ),
        ];
        for (body, expected) in cases {
            let out = project(&s, body);
            assert_eq!(out, expected, "{body}");
            assert_eq!(project(&s, &out), out, "projecting twice changes nothing: {body}");
        }
    }

    #[test]
    fn whitespace_in_the_body_is_copied_as_it_is() {
        let body = "\n { \"resourceType\" : \"Observation\" ,\n\t\"meta\" : { \"tag\" : [ { \"code\" : \"x\" } ] } , \"status\":\"final\" ,\"note\" : [ ] , \"code\" : { \"text\" : 1.50 } }\n";
        let out = project(&selection(&["id"]), body);
        assert_eq!(
            out,
            format!(
                "{{\"resourceType\" : \"Observation\",\"meta\" : {{ \"tag\" : [ {{ \"code\" : \"x\" }} ,{TAG}] }},\"status\":\"final\",\"code\" : {{ \"text\" : 1.50 }}}}"
            )
        );
        let _: Value = serde_json::from_str(&out).unwrap();
    }

    #[test]
    fn appends_to_out_and_refuses_non_objects() {
        let s = selection(&["id"]);
        let mut out = b"[prefix]".to_vec();
        s.project_into(ResourceType::PATIENT, br#"{"resourceType":"Patient","id":"p"}"#, &mut out)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(r#"[prefix]{{"resourceType":"Patient","id":"p","meta":{{"tag":[{TAG}]}}}}"#)
        );
        for bad in
            [&b"[1]"[..], b"\"x\"", b"1", b"", b"{", b"{\"a\":1,\"a\":2}", b"{} x", b"\xff{}"]
        {
            let mut out = b"keep".to_vec();
            assert!(s.project_into(ResourceType::PATIENT, bad, &mut out).is_err(), "{bad:?}");
            assert_eq!(out, b"keep");
        }
    }

    // ---- real data ------------------------------------------------------------------------------

    /// Top-level keys of a JSON object in document order, with their raw values, by serde_json's
    /// own map parsing (independent of `RawMembers`).
    fn ordered_members(text: &str) -> Vec<(String, &RawValue)> {
        let map: HashMap<String, &RawValue> = serde_json::from_str(text).unwrap();
        let mut members: Vec<(String, &RawValue)> = map.into_iter().collect();
        members.sort_by_key(|(_, v)| v.get().as_ptr().addr());
        members
    }

    /// What the test expects kept, written out by hand for the three types it reads.
    fn expected_kept(resource_type: &str, items: &[&str], key: &str) -> bool {
        let (mandatory, choices): (&[&str], &[&str]) = match resource_type {
            "Patient" => (&[], &["deceased", "multipleBirth"]),
            "Observation" => (&["status", "code"], &["effective", "value"]),
            "Condition" => (&["subject"], &["onset", "abatement"]),
            other => panic!("no expectation for {other}"),
        };
        if key == "resourceType" {
            return true;
        }
        let name = key.strip_prefix('_').unwrap_or(key);
        let selected = items.iter().filter_map(|item| match item.split_once('.') {
            Some((t, element)) => (t == resource_type).then_some(element),
            None => Some(*item),
        });
        ["id", "meta", "implicitRules", "modifierExtension"].contains(&name)
            || mandatory.contains(&name)
            || selected.into_iter().any(|element| {
                name == element
                    || (choices.contains(&element)
                        && name.strip_prefix(element).is_some_and(|rest| {
                            rest.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                        }))
            })
    }

    fn check_projection(resource_type: &str, items: &[&str], body: &str, out: &str) {
        let original = ordered_members(body);
        let projected = ordered_members(out);
        let expected_keys: Vec<&str> = original
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| expected_kept(resource_type, items, k))
            .collect();
        let mut projected_keys: Vec<&str> = projected.iter().map(|(k, _)| k.as_str()).collect();
        if !expected_keys.contains(&"meta") {
            let meta_at = projected_keys.iter().position(|k| *k == "meta").unwrap();
            projected_keys.remove(meta_at);
        }
        assert_eq!(projected_keys, expected_keys, "{items:?} {body}");
        let original: HashMap<&str, &RawValue> =
            original.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for (key, value) in &projected {
            if key == "meta" {
                let mut meta: Value = original
                    .get("meta")
                    .map_or(json!({}), |m| serde_json::from_str(m.get()).unwrap());
                let tag = meta.as_object_mut().unwrap().entry("tag").or_insert(json!([]));
                tag.as_array_mut().unwrap().push(serde_json::from_str(TAG).unwrap());
                let got: Value = serde_json::from_str(value.get()).unwrap();
                assert_eq!(got, meta, "{body}");
                let subsetted = got["tag"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["code"] == "SUBSETTED" && c["system"] == SUBSETTED_SYSTEM)
                    .count();
                assert_eq!(subsetted, 1, "{out}");
            } else {
                assert_eq!(value.get(), original[key.as_str()].get(), "{key} in {body}");
            }
        }
    }

    fn unpack_small() -> PathBuf {
        let archive = crate::manifest_dir().join("../../testdata/synthea/small.tar.xz");
        assert!(archive.is_file(), "vendored test data missing: {}", archive.display());
        let dir =
            std::env::temp_dir().join(format!("bulkfhir-elements-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("tar").arg("-xJf").arg(&archive).arg("-C").arg(&dir).status();
        assert!(status.unwrap().success(), "tar -xJf {} failed", archive.display());
        dir
    }

    #[test]
    fn real_resources_project_to_the_expected_members() {
        let dir = unpack_small();
        let selections: [&[&str]; 5] = [
            &["id"],
            &["Patient.name", "Observation.subject", "Condition.code"],
            &["value", "effective", "onset", "deceased"],
            &["subject", "Observation.category", "birthDate", "encounter"],
            &["text", "extension", "identifier", "meta"],
        ];
        let mut checked = 0;
        for resource_type in ["Patient", "Observation", "Condition"] {
            let path = dir.join(format!("{resource_type}.ndjson"));
            let ndjson = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let lines: Vec<&str> = ndjson.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(lines.len() >= 10, "{resource_type}: only {} lines", lines.len());
            for (n, line) in lines.iter().enumerate() {
                // As loaded (no meta) and as stored (stamped meta first).
                let prepared = PreparedResource::parse(line.as_bytes()).unwrap();
                let id = prepared.id().cloned().unwrap_or_else(|| ResourceId::parse("x").unwrap());
                let stamped =
                    prepared.stamp(&id, n as u64 + 1, Instant::from_micros(1_700_000_000_000_000));
                let stamped = String::from_utf8(stamped).unwrap();
                for items in selections {
                    let items_owned: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
                    let s = ElementSelection::parse(&items_owned).unwrap();
                    assert!(
                        s.applies_to(rt(resource_type)) || items.iter().all(|i| i.contains('.'))
                    );
                    for body in [*line, stamped.as_str()] {
                        let mut out = Vec::new();
                        s.project_into(rt(resource_type), body.as_bytes(), &mut out).unwrap();
                        let out = String::from_utf8(out).unwrap();
                        if s.applies_to(rt(resource_type)) {
                            check_projection(resource_type, items, body, &out);
                        } else {
                            assert_eq!(out, body);
                        }
                        checked += 1;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(checked > 1000, "only {checked} projections checked");
    }

    // ---- properties -----------------------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            Just(serde_json::from_str(TAG).unwrap()),
        ];
        let key = prop_oneof![
            Just("meta".to_owned()),
            Just("tag".to_owned()),
            Just("id".to_owned()),
            Just("resourceType".to_owned()),
            Just("status".to_owned()),
            Just("_status".to_owned()),
            Just("valueQuantity".to_owned()),
            Just("name".to_owned()),
            Just("code".to_owned()),
            "[a-zA-Z_\"\\\\ ]{0,6}",
        ];
        leaf.prop_recursive(4, 40, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..7)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_items() -> impl Strategy<Value = Vec<String>> {
        let item = prop_oneof![
            prop::sample::select(vec![
                "id",
                "meta",
                "text",
                "name",
                "value",
                "status",
                "code",
                "subject",
                "Observation.value",
                "Patient.name",
                "Patient.active",
                "Bundle.entry",
                "extension",
            ])
            .prop_map(str::to_owned),
            "[A-Za-z.\\[\\]_]{0,12}",
        ];
        prop::collection::vec(item, 0..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_selections_and_bodies_never_panic(
            items in arb_items(),
            body in arb_json(),
            type_index in 0..RESOURCE_TYPES.len(),
            pretty in any::<bool>(),
        ) {
            let Ok(selection) = ElementSelection::parse(&items) else { return Ok(()) };
            let resource_type = rt(RESOURCE_TYPES[type_index]);
            let text = if pretty {
                serde_json::to_string_pretty(&body).unwrap()
            } else {
                serde_json::to_string(&body).unwrap()
            };
            let mut out = Vec::new();
            let result = selection.project_into(resource_type, text.as_bytes(), &mut out);
            if !selection.applies_to(resource_type) {
                prop_assert!(result.is_ok());
                prop_assert_eq!(&out, text.as_bytes());
            } else if body.is_object() {
                prop_assert!(result.is_ok());
                let projected: Value = serde_json::from_slice(&out).unwrap();
                let tags = projected["meta"]["tag"].as_array().unwrap();
                let subsetted: Value = serde_json::from_str(TAG).unwrap();
                prop_assert!(tags.iter().any(|t| t["system"] == subsetted["system"] && t["code"] == "SUBSETTED"));
                let mut again = Vec::new();
                selection.project_into(resource_type, &out, &mut again).unwrap();
                prop_assert_eq!(again, out, "projecting twice changes nothing");
            } else {
                prop_assert!(result.is_err());
                prop_assert!(out.is_empty());
            }
        }

        #[test]
        fn random_bytes_never_panic(items in arb_items(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(selection) = ElementSelection::parse(&items) {
                let mut out = Vec::new();
                let _ = selection.project_into(ResourceType::PATIENT, &bytes, &mut out);
            }
        }
    }
}
