use std::fmt;

use serde_json::value::RawValue;

use crate::{
    Instant, ModelError, ResourceId, ResourceType, compartment,
    json::{
        MAX_RESOURCE_DEPTH, RawMembers, minify_into, nested_deeper_than, number_out_of_range,
        write_json_string,
    },
};

/// An incoming resource, checked and minified, ready for the store to stamp with its version.
///
/// Parsing keeps every member's JSON text exactly (numbers like `1.50` stay `1.50`); only
/// whitespace between tokens is dropped. `resourceType`, `id` and `meta.versionId` /
/// `meta.lastUpdated` are held apart because the server owns them.
#[derive(Clone)]
pub struct PreparedResource {
    resource_type: ResourceType,
    id: Option<ResourceId>,
    /// Minified `"key":value` members other than resourceType/id/meta, comma-separated.
    members: Vec<u8>,
    /// Minified members of `meta` other than versionId/lastUpdated, comma-separated.
    meta_members: Vec<u8>,
    /// Patients whose compartment this resource is in, by its references (sorted, unique); the
    /// resource's own id is added for a Patient at stamping time.
    referenced_patients: Vec<ResourceId>,
    /// `meta.versionId` and `meta.lastUpdated` as the resource arrived, when it had both.
    source_meta: Option<(String, String)>,
    /// Stamp `source_meta` instead of this server's version and time (a replica).
    keep_source_meta: bool,
}

impl PreparedResource {
    /// Parses and checks one resource: a JSON object with a known R4 `resourceType`, a valid `id`
    /// if one is given, and an object `meta` if one is given.
    pub fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        if nested_deeper_than(bytes, MAX_RESOURCE_DEPTH) {
            return Err(ModelError::InvalidResource(format!(
                "the resource nests objects and arrays deeper than {MAX_RESOURCE_DEPTH} levels, \
                 the most this server stores"
            )));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ModelError::Json(format!("body is not UTF-8: {e}")))?;
        let members = RawMembers::parse(text)?;
        if let Some(number) = number_out_of_range(bytes) {
            return Err(ModelError::InvalidResource(format!(
                "the number {number} is beyond the range of a 64-bit float (about 1.8e308), \
                 which readers of exported NDJSON cannot represent"
            )));
        }
        let resource_type = match members.get("resourceType") {
            Some(raw) => ResourceType::parse(&string_member(raw, "resourceType")?)?,
            None => {
                return Err(ModelError::InvalidResource(
                    "resource has no 'resourceType'".to_owned(),
                ));
            }
        };
        if resource_type == ResourceType::VIEW_DEFINITION {
            // A stored view is one `$viewdefinition-run` and `-export` can run: refused now,
            // with the reason, rather than when a job uses it.
            let view: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| ModelError::Json(format!("body is not JSON: {e}")))?;
            crate::view::ViewDefinition::parse(&view).map_err(|e| {
                ModelError::InvalidResource(format!(
                    "not a ViewDefinition this server can run: {e}"
                ))
            })?;
        }
        let id = match members.get("id") {
            Some(raw) => Some(ResourceId::parse(&string_member(raw, "id")?)?),
            None => None,
        };
        let mut meta_members = Vec::new();
        let mut source_meta = None;
        if let Some(raw_meta) = members.get("meta") {
            let meta = RawMembers::parse(raw_meta.get()).map_err(|_| {
                ModelError::InvalidResource("'meta' must be a JSON object".to_owned())
            })?;
            append_members(&meta, &["versionId", "lastUpdated"], &mut meta_members);
            if let (Some(version), Some(updated)) = (meta.get("versionId"), meta.get("lastUpdated"))
            {
                source_meta = string_member(version, "meta.versionId")
                    .ok()
                    .zip(string_member(updated, "meta.lastUpdated").ok());
            }
        }
        let mut body = Vec::with_capacity(bytes.len());
        append_members(&members, &["resourceType", "id", "meta"], &mut body);
        let referenced_patients = compartment::referenced_patients(resource_type, &members)?;
        Ok(PreparedResource {
            resource_type,
            id,
            members: body,
            meta_members,
            referenced_patients,
            source_meta,
            keep_source_meta: false,
        })
    }

    /// This resource, to be stored with the `meta.versionId` and `meta.lastUpdated` it arrived
    /// with instead of this server's (a replica of another server keeps the source's meta; the
    /// store still numbers and times its own versions). Refused when the resource lacks either
    /// or `lastUpdated` is not a FHIR instant.
    pub fn keeping_source_meta(mut self) -> Result<Self, ModelError> {
        match &self.source_meta {
            Some((version, updated))
                if Instant::parse_fhir(updated).is_ok() && !version.is_empty() =>
            {
                self.keep_source_meta = true;
                Ok(self)
            }
            _ => Err(ModelError::InvalidResource(
                "a replicated resource needs meta.versionId and a meta.lastUpdated instant"
                    .to_owned(),
            )),
        }
    }

    /// The resource's type.
    pub fn resource_type(&self) -> ResourceType {
        self.resource_type
    }

    /// The id the client gave, if any.
    pub fn id(&self) -> Option<&ResourceId> {
        self.id.as_ref()
    }

    /// Replaces the id (a server-assigned id on create, the URL's id on update).
    pub fn set_id(&mut self, id: ResourceId) {
        self.id = Some(id);
    }

    /// The ids of the patients whose compartment holds this resource when stored under `own_id`
    /// (sorted, unique). A Patient is in its own compartment.
    pub fn compartment_patients(&self, own_id: &ResourceId) -> Vec<ResourceId> {
        let mut patients = self.referenced_patients.clone();
        if self.resource_type == ResourceType::PATIENT {
            patients.push(own_id.clone());
            patients.sort();
            patients.dedup();
        }
        patients
    }

    /// The stored form: minified JSON with `resourceType`, `id` and `meta` first and
    /// `meta.versionId` / `meta.lastUpdated` stamped.
    /// With [`keeping_source_meta`](Self::keeping_source_meta), the resource's own
    /// `versionId` and `lastUpdated` are stamped instead of `version` and `last_updated`.
    pub fn stamp(&self, id: &ResourceId, version: u64, last_updated: Instant) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.members.len() + self.meta_members.len() + 160);
        out.extend_from_slice(b"{\"resourceType\":\"");
        out.extend_from_slice(self.resource_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"id\":");
        write_json_string(&mut out, id.as_str());
        out.extend_from_slice(b",\"meta\":{\"versionId\":");
        match self.source_meta.as_ref().filter(|_| self.keep_source_meta) {
            Some((version, updated)) => {
                write_json_string(&mut out, version);
                out.extend_from_slice(b",\"lastUpdated\":");
                write_json_string(&mut out, updated);
            }
            None => {
                out.push(b'"');
                out.extend_from_slice(version.to_string().as_bytes());
                out.extend_from_slice(b"\",\"lastUpdated\":\"");
                out.extend_from_slice(last_updated.to_fhir().as_bytes());
                out.push(b'"');
            }
        }
        if !self.meta_members.is_empty() {
            out.push(b',');
            out.extend_from_slice(&self.meta_members);
        }
        out.push(b'}');
        if !self.members.is_empty() {
            out.push(b',');
            out.extend_from_slice(&self.members);
        }
        out.push(b'}');
        out
    }
}

impl fmt::Debug for PreparedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedResource")
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("bytes", &self.members.len())
            .finish()
    }
}

/// Reads a member that must be a JSON string.
fn string_member(raw: &RawValue, name: &str) -> Result<String, ModelError> {
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| ModelError::InvalidResource(format!("'{name}' must be a JSON string")))
}

/// Appends the minified members of `members` except `skip` to `out`, comma-separated.
fn append_members(members: &RawMembers<'_>, skip: &[&str], out: &mut Vec<u8>) {
    for (key, value) in &members.0 {
        if skip.contains(&key.as_ref()) {
            continue;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        write_json_string(out, key);
        out.push(b':');
        minify_into(value.get().as_bytes(), out);
    }
}

/// A literal reference `Type/id`, as written in `Reference.reference`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    /// The target's type.
    pub resource_type: ResourceType,
    /// The target's id.
    pub id: ResourceId,
}

impl ResourceRef {
    /// Reads a literal reference: `Type/id`, `Type/id/_history/v`, or an absolute URL ending in
    /// one of those. Contained (`#x`), `urn:` and conditional references give `None`.
    pub fn parse(reference: &str) -> Option<ResourceRef> {
        let path = match reference.find("/_history/") {
            Some(cut) => &reference[..cut],
            None => reference,
        };
        if path.starts_with('#') || path.starts_with("urn:") || path.contains('?') {
            return None;
        }
        let mut parts = path.rsplit('/');
        let id = parts.next()?;
        let resource_type = parts.next()?;
        Some(ResourceRef {
            resource_type: ResourceType::parse(resource_type).ok()?,
            id: ResourceId::parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_keeps_the_source_meta_and_nothing_else_changes() {
        let text = br#"{"resourceType":"Patient","meta":{"profile":["p"],"lastUpdated":"2024-01-02T03:04:05.678Z","versionId":"v7"},"active":true}"#;
        let id = ResourceId::parse("x").unwrap();
        let now = crate::Instant::parse_fhir("2026-01-01T00:00:00Z").unwrap();
        let prepared = PreparedResource::parse(text).unwrap();
        assert_eq!(
            prepared.stamp(&id, 3, now),
            br#"{"resourceType":"Patient","id":"x","meta":{"versionId":"3","lastUpdated":"2026-01-01T00:00:00.000000Z","profile":["p"]},"active":true}"#
        );
        let replica = prepared.keeping_source_meta().unwrap();
        assert_eq!(
            replica.stamp(&id, 3, now),
            br#"{"resourceType":"Patient","id":"x","meta":{"versionId":"v7","lastUpdated":"2024-01-02T03:04:05.678Z","profile":["p"]},"active":true}"#
        );
        for missing in [
            br#"{"resourceType":"Patient"}"#.as_slice(),
            br#"{"resourceType":"Patient","meta":{"versionId":"1"}}"#,
            br#"{"resourceType":"Patient","meta":{"versionId":"1","lastUpdated":"yesterday"}}"#,
        ] {
            let error =
                PreparedResource::parse(missing).unwrap().keeping_source_meta().unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Invalid);
        }
    }

    #[test]
    fn stamping_puts_server_fields_first_and_keeps_everything_else() {
        let input = br#"{ "valueQuantity": {"value": 1.50}, "resourceType": "Observation",
            "meta": {"versionId": "9", "profile": ["http://x"], "lastUpdated": "2000-01-01T00:00:00Z"},
            "id": "o1", "subject": {"reference": "Patient/p1"} }"#;
        let prepared = PreparedResource::parse(input).unwrap();
        assert_eq!(prepared.resource_type().as_str(), "Observation");
        assert_eq!(prepared.id().unwrap().as_str(), "o1");
        let id = ResourceId::parse("o1").unwrap();
        let stamped = prepared.stamp(&id, 3, Instant::from_micros(1_000_000));
        assert_eq!(
            std::str::from_utf8(&stamped).unwrap(),
            r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"1970-01-01T00:00:01.000000Z","profile":["http://x"]},"valueQuantity":{"value":1.50},"subject":{"reference":"Patient/p1"}}"#
        );
        assert_eq!(prepared.compartment_patients(&id), vec![ResourceId::parse("p1").unwrap()]);
    }

    #[test]
    fn malformed_resources_are_refused_with_reasons() {
        for (input, needle) in [
            (&b"{"[..], "not valid JSON"),
            (b"[]", "JSON object"),
            (b"{\"id\":\"x\"}", "no 'resourceType'"),
            (b"{\"resourceType\":\"Nope\"}", "unknown resource type"),
            (b"{\"resourceType\":7}", "must be a JSON string"),
            (b"{\"resourceType\":\"Patient\",\"id\":\"a b\"}", "invalid resource id"),
            (b"{\"resourceType\":\"Patient\",\"meta\":[]}", "'meta' must be"),
            (b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"id\":\"b\"}", "duplicate"),
            (b"\xff", "UTF-8"),
        ] {
            let err = PreparedResource::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn nesting_is_limited_at_the_documented_depth() {
        // `{"resourceType":"Basic","extension":[` opens 2 levels, then `{"x":[` adds 2 each.
        let nested = |levels: usize| {
            let pairs = (levels - 2) / 2;
            let mut text = String::from(r#"{"resourceType":"Basic","extension":["#);
            text.push_str(&r#"{"x":["#.repeat(pairs));
            text.push_str(&"]}".repeat(pairs));
            text.push_str("]}");
            text
        };
        assert!(PreparedResource::parse(nested(MAX_RESOURCE_DEPTH).as_bytes()).is_ok());
        for levels in [MAX_RESOURCE_DEPTH + 2, 1_000, 200_000] {
            let err = PreparedResource::parse(nested(levels).as_bytes()).unwrap_err();
            assert!(err.to_string().contains("deeper than 100 levels"), "{err}");
            assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        }
        // Brackets inside strings do not count.
        let text = format!(
            r#"{{"resourceType":"Basic","id":"a","text":{{"div":"{}"}}}}"#,
            "[".repeat(500)
        );
        assert!(PreparedResource::parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn references_are_read_in_every_literal_form() {
        let r = ResourceRef::parse("Patient/p1").unwrap();
        assert_eq!((r.resource_type.as_str(), r.id.as_str()), ("Patient", "p1"));
        let r = ResourceRef::parse("http://example.org/fhir/Patient/p1/_history/3").unwrap();
        assert_eq!((r.resource_type.as_str(), r.id.as_str()), ("Patient", "p1"));
        assert!(ResourceRef::parse("#contained").is_none());
        assert!(ResourceRef::parse("urn:uuid:1234").is_none());
        assert!(ResourceRef::parse("Patient?identifier=x").is_none());
        assert!(ResourceRef::parse("p1").is_none());
    }

    /// A JSON value of any shape, with strings holding brackets, quotes and escapes.
    fn arb_json() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("1.50".to_owned()),
            Just("-0.0e+12".to_owned()),
            "[\\[\\]{}\"\\\\a-z\u{e9}\u{1F600} ]{0,40}"
                .prop_map(|s| { serde_json::to_string(&s).unwrap_or_default() }),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z]{1,8}", inner), 0..6).prop_map(|members| {
                    let mut seen = std::collections::HashSet::new();
                    let body: Vec<String> = members
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        })
    }

    /// A Basic resource with `value` nested `depth` arrays and objects deep, then maybe broken
    /// (cut short, or a byte replaced).
    fn arb_resource() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        (arb_json(), 0_usize..260, 0_u8..8, any::<u16>(), any::<u8>()).prop_map(
            |(value, depth, mutation, at, byte)| {
                let mut text = String::from(r#"{"resourceType":"Basic","id":"x","extension":"#);
                for idx in 0..depth {
                    text.push_str(if idx % 2 == 0 { "[" } else { r#"{"x":"# });
                }
                text.push_str(&value);
                for idx in (0..depth).rev() {
                    text.push(if idx % 2 == 0 { ']' } else { '}' });
                }
                text.push('}');
                let mut bytes = text.into_bytes();
                let at = usize::from(at) % bytes.len();
                match mutation {
                    0 => bytes.truncate(at),
                    1 => bytes[at] = byte,
                    _ => {}
                }
                bytes
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// The write path's fuzz target: whatever arrives, parsing never panics, a refusal is a
        /// 400 (`Invalid`), and every accepted resource, once stamped, parses with serde_json
        /// (a common JSON reader, which stops at 128 levels) and can be tested by `_typeFilter`.
        #[test]
        fn whatever_is_accepted_can_be_read_back_and_filtered(bytes in arb_resource()) {
            match PreparedResource::parse(&bytes) {
                Ok(prepared) => {
                    let id = ResourceId::parse("x").unwrap();
                    let stamped = prepared.stamp(&id, 1, crate::Instant::now());
                    let reread = serde_json::from_slice::<serde_json::Value>(&stamped);
                    proptest::prop_assert!(reread.is_ok(), "{reread:?}");
                    let query = crate::search::SearchQuery::parse_type_filter(
                        "Basic?_id=x",
                        crate::Instant::now(),
                    )
                    .unwrap();
                    proptest::prop_assert_eq!(query.matches(&stamped), Ok(true));
                }
                Err(error) => proptest::prop_assert_eq!(error.kind(), crate::ErrorKind::Invalid),
            }
        }
    }
}
