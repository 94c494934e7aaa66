//! FHIR `transaction` and `batch` Bundles (`POST [base]`).
//!
//! A transaction is all or nothing: every entry is checked, `urn:uuid:` fullUrls are given ids,
//! references to them are rewritten, and the writes go to the store as one
//! [`Atomicity::AllOrNothing`] call. A batch runs each entry on its own and reports per-entry
//! outcomes. Entries run in the FHIR order: DELETE, POST, PUT, then GET.

use std::collections::{HashMap, HashSet};

use bulkfhir_model::{
    ErrorKind, Instant, PreparedResource, ResourceId, ResourceType,
    outcome::{Issue, OperationOutcome, http_status, status_line},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Atomicity, ResourceStore, StoreError, WriteOp, WriteOutcome};

/// The Bundle kinds `POST [base]` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// All or nothing.
    Transaction,
    /// Each entry on its own.
    Batch,
}

/// What a Bundle entry does, for [`BundleOptions::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryInteraction {
    /// POST: create.
    Create,
    /// GET: read or vread.
    Read,
    /// PUT: update (or create with a client id).
    Update,
    /// DELETE.
    Delete,
}

/// Whether the caller may do an interaction on a type; `Err` says why not.
pub type Authorize<'a> = &'a (dyn Fn(ResourceType, EntryInteraction) -> Result<(), String> + Sync);

/// Options of one Bundle submission.
#[derive(Clone, Copy)]
pub struct BundleOptions<'a> {
    /// Include each written resource in its response entry (`Prefer: return=representation`).
    pub return_resources: bool,
    /// Checked for every entry before anything runs: a refused entry fails a transaction
    /// (nothing is written) or gets a 403 outcome in a batch.
    pub authorize: Option<Authorize<'a>>,
}

impl std::fmt::Debug for BundleOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleOptions")
            .field("return_resources", &self.return_resources)
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct BundleIn<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    bundle_type: Option<String>,
    #[serde(default, borrow)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(Deserialize)]
struct EntryIn<'a> {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<RequestIn>,
}

#[derive(Deserialize)]
struct RequestIn {
    method: String,
    url: String,
    #[serde(rename = "ifMatch")]
    if_match: Option<String>,
    #[serde(rename = "ifNoneExist")]
    if_none_exist: Option<String>,
    #[serde(rename = "ifNoneMatch")]
    if_none_match: Option<String>,
    #[serde(rename = "ifModifiedSince")]
    if_modified_since: Option<String>,
}

/// What one entry asks for, once checked.
#[derive(Debug)]
enum Action {
    Write(WriteOp),
    Read { resource_type: ResourceType, id: ResourceId, version: Option<u64> },
}

impl Action {
    /// FHIR transaction processing order.
    fn order(&self) -> u8 {
        match self {
            Action::Write(WriteOp::Delete { .. }) => 0,
            Action::Write(WriteOp::Create { .. }) => 1,
            Action::Write(WriteOp::Update { .. }) => 2,
            Action::Read { .. } => 3,
        }
    }
}

#[derive(Serialize)]
struct BundleOut {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    entry: Vec<EntryOut>,
}

#[derive(Serialize, Default)]
struct EntryOut {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Box<RawValue>>,
    response: ResponseOut,
}

#[derive(Serialize, Default)]
struct ResponseOut {
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(rename = "lastModified", skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Box<RawValue>>,
}

/// Processes a transaction or batch Bundle and returns the response Bundle as JSON.
///
/// Errors: a malformed Bundle, or (transaction) any failing entry, gives a `StoreError` whose
/// `OpFailed { index }` names the Bundle entry; nothing is written then.
pub async fn process(
    store: &dyn ResourceStore,
    body: &[u8],
    options: BundleOptions<'_>,
) -> Result<Vec<u8>, StoreError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| StoreError::Invalid(format!("body is not UTF-8: {e}")))?;
    let bundle: BundleIn<'_> = serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("not a valid Bundle: {e}")))?;
    if bundle.resource_type.as_deref() != Some("Bundle") {
        return Err(StoreError::Invalid("POST [base] expects a Bundle resource".to_owned()));
    }
    let kind = match bundle.bundle_type.as_deref() {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        other => {
            return Err(StoreError::Invalid(format!(
                "POST [base] accepts Bundle.type 'transaction' or 'batch', not {}",
                other.map_or("nothing".to_owned(), |t| format!("'{t}'"))
            )));
        }
    };
    let n_entries = bundle.entry.len();
    let assigned = assign_ids(&bundle.entry);
    let urn_map: HashMap<&str, &str> = assigned
        .iter()
        .filter_map(|a| a.urn.as_ref().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    let mut actions: Vec<Result<Action, StoreError>> = Vec::with_capacity(n_entries);
    for (entry_idx, entry) in bundle.entry.iter().enumerate() {
        let action = check_entry(entry, entry_idx, &assigned, &urn_map, kind)
            .and_then(|action| authorize(action, entry_idx, options.authorize));
        if kind == BundleKind::Transaction
            && let Err(error) = action
        {
            return Err(StoreError::OpFailed { index: entry_idx, source: Box::new(error) });
        }
        actions.push(action);
    }
    if kind == BundleKind::Transaction {
        refuse_duplicate_targets(&actions)?;
    }

    // Writes go to the store in FHIR processing order; `order` maps each back to its entry.
    let mut order: Vec<usize> = (0..n_entries).collect();
    order.sort_by_key(|&idx| actions[idx].as_ref().map_or(4, Action::order));
    let mut write_entries = Vec::new();
    let mut ops = Vec::new();
    let mut read_entries = Vec::new();
    for &entry_idx in &order {
        match &actions[entry_idx] {
            Ok(Action::Write(op)) => {
                write_entries.push(entry_idx);
                ops.push(op.clone());
            }
            Ok(Action::Read { .. }) => read_entries.push(entry_idx),
            Err(_) => {}
        }
    }
    let atomicity = match kind {
        BundleKind::Transaction => Atomicity::AllOrNothing,
        BundleKind::Batch => Atomicity::EachOnItsOwn,
    };
    let mut responses: Vec<Option<EntryOut>> = (0..n_entries).map(|_| None).collect();
    let results = match store.transact(ops, atomicity).await {
        Ok(results) => results,
        Err(StoreError::OpFailed { index, source }) => {
            let entry_idx = write_entries.get(index).copied().unwrap_or(index);
            return Err(StoreError::OpFailed { index: entry_idx, source });
        }
        Err(other) => return Err(other),
    };
    for (entry_idx, result) in write_entries.iter().zip(results) {
        responses[*entry_idx] = Some(match result {
            Ok(outcome) => write_response(&outcome, options)?,
            Err(error) => error_response(&error),
        });
    }
    for entry_idx in read_entries {
        if let Ok(Action::Read { resource_type, id, version }) = &actions[entry_idx] {
            let read = match version {
                Some(v) => store.vread(*resource_type, id, *v).await,
                None => store.read(*resource_type, id).await,
            };
            responses[entry_idx] = Some(match read {
                Ok(stored) => EntryOut {
                    resource: Some(raw_json(stored.body.to_vec())?),
                    response: ResponseOut {
                        status: status_line(200),
                        etag: Some(format!("W/\"{}\"", stored.version)),
                        last_modified: Some(stored.last_updated.to_fhir()),
                        ..ResponseOut::default()
                    },
                    ..EntryOut::default()
                },
                Err(error) if kind == BundleKind::Transaction => {
                    return Err(StoreError::OpFailed { index: entry_idx, source: Box::new(error) });
                }
                Err(error) => error_response(&error),
            });
        }
    }
    for (entry_idx, action) in actions.iter().enumerate() {
        if let Err(error) = action {
            responses[entry_idx] = Some(error_response(error));
        }
    }
    let out = BundleOut {
        resource_type: "Bundle",
        bundle_type: match kind {
            BundleKind::Transaction => "transaction-response",
            BundleKind::Batch => "batch-response",
        },
        entry: responses.into_iter().map(Option::unwrap_or_default).collect(),
    };
    serde_json::to_vec(&out).map_err(|e| StoreError::backend("serialize response Bundle", e))
}

/// The entry's action when `authorize` allows it.
fn authorize(
    action: Action,
    entry_idx: usize,
    authorize: Option<Authorize<'_>>,
) -> Result<Action, StoreError> {
    let Some(authorize) = authorize else { return Ok(action) };
    let (resource_type, interaction) = match &action {
        Action::Write(WriteOp::Create { resource, .. }) => {
            (resource.resource_type(), EntryInteraction::Create)
        }
        Action::Write(WriteOp::Update { resource, .. }) => {
            (resource.resource_type(), EntryInteraction::Update)
        }
        Action::Write(WriteOp::Delete { resource_type, .. }) => {
            (*resource_type, EntryInteraction::Delete)
        }
        Action::Read { resource_type, .. } => (*resource_type, EntryInteraction::Read),
    };
    authorize(resource_type, interaction)
        .map_err(|why| StoreError::Forbidden(format!("Bundle.entry[{entry_idx}]: {why}")))?;
    Ok(action)
}

/// What [`assign_ids`] decided for one entry.
struct Assigned {
    /// The id the entry writes (fresh for POST, from the URL for PUT).
    id: Option<ResourceId>,
    /// `(urn:uuid:…, Type/id)` when the entry's fullUrl is a `urn:uuid:`.
    urn: Option<(String, String)>,
}

/// Gives every POST entry a fresh id and maps each `urn:uuid:` fullUrl to its `Type/id`.
fn assign_ids(entries: &[EntryIn<'_>]) -> Vec<Assigned> {
    entries
        .iter()
        .map(|entry| {
            let none = || Assigned { id: None, urn: None };
            let Some(request) = &entry.request else { return none() };
            let (type_name, id) = match request.method.as_str() {
                "POST" => {
                    let type_name = request.url.trim_start_matches('/').to_owned();
                    (type_name, Some(ResourceId::new_random()))
                }
                "PUT" => match split_type_id(&request.url) {
                    Some((t, i)) => (t.to_owned(), ResourceId::parse(i).ok()),
                    None => return none(),
                },
                _ => return none(),
            };
            let mapping = match (&entry.full_url, &id) {
                (Some(full_url), Some(id)) if full_url.starts_with("urn:uuid:") => {
                    Some((full_url.clone(), format!("{type_name}/{id}")))
                }
                _ => None,
            };
            Assigned { id, urn: mapping }
        })
        .collect()
}

fn check_entry(
    entry: &EntryIn<'_>,
    entry_idx: usize,
    assigned: &[Assigned],
    urn_map: &HashMap<&str, &str>,
    kind: BundleKind,
) -> Result<Action, StoreError> {
    let invalid = |msg: String| StoreError::Invalid(format!("Bundle.entry[{entry_idx}]: {msg}"));
    let request =
        entry.request.as_ref().ok_or_else(|| invalid("entry has no 'request'".to_owned()))?;
    if request.if_none_exist.is_some()
        || request.if_none_match.is_some()
        || request.if_modified_since.is_some()
    {
        return Err(invalid(
            "conditional requests (ifNoneExist, ifNoneMatch, ifModifiedSince) are not supported"
                .to_owned(),
        ));
    }
    if request.url.contains('?') {
        return Err(invalid(format!(
            "request.url '{}': conditional and search URLs are not supported",
            request.url
        )));
    }
    let if_match = request.if_match.as_deref().map(parse_etag).transpose().map_err(invalid)?;
    let prepare = |expected: ResourceType| -> Result<PreparedResource, StoreError> {
        let raw = entry.resource.ok_or_else(|| invalid("entry has no 'resource'".to_owned()))?;
        let rewritten = rewrite_urn_references(raw.get(), urn_map, kind).map_err(invalid)?;
        let prepared = PreparedResource::parse(rewritten.as_bytes())
            .map_err(|e| invalid(format!("resource: {e}")))?;
        if prepared.resource_type() != expected {
            return Err(invalid(format!(
                "resource is a {} but request.url names {}",
                prepared.resource_type(),
                expected
            )));
        }
        Ok(prepared)
    };
    match request.method.as_str() {
        "POST" => {
            let resource_type = ResourceType::parse(request.url.trim_start_matches('/'))
                .map_err(|e| invalid(format!("request.url: {e}")))?;
            let resource = prepare(resource_type)?;
            let id = assigned[entry_idx]
                .id
                .clone()
                .ok_or_else(|| invalid("could not assign an id".to_owned()))?;
            Ok(Action::Write(WriteOp::Create { resource, id }))
        }
        "PUT" => {
            let (resource_type, id) = parse_type_id(&request.url).map_err(invalid)?;
            let resource = prepare(resource_type)?;
            if let Some(body_id) = resource.id()
                && *body_id != id
            {
                return Err(invalid(format!(
                    "resource id '{body_id}' does not match request.url id '{id}'"
                )));
            }
            Ok(Action::Write(WriteOp::Update { resource, id, if_match }))
        }
        "DELETE" => {
            let (resource_type, id) = parse_type_id(&request.url).map_err(invalid)?;
            Ok(Action::Write(WriteOp::Delete { resource_type, id, if_match }))
        }
        "GET" => {
            let url = request.url.trim_start_matches('/');
            let (path, version) = match url.split_once("/_history/") {
                Some((path, v)) => (
                    path,
                    Some(v.parse::<u64>().map_err(|_| invalid(format!("bad version '{v}'")))?),
                ),
                None => (url, None),
            };
            let (resource_type, id) = parse_type_id(path).map_err(invalid)?;
            Ok(Action::Read { resource_type, id, version })
        }
        other => Err(StoreError::Invalid(format!(
            "Bundle.entry[{entry_idx}]: request.method '{other}' is not supported (use POST, PUT, DELETE or GET)"
        ))),
    }
}

/// A transaction may touch each resource once.
fn refuse_duplicate_targets(actions: &[Result<Action, StoreError>]) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for (entry_idx, action) in actions.iter().enumerate() {
        let target = match action {
            Ok(Action::Write(WriteOp::Update { resource, id, .. })) => {
                (resource.resource_type(), id)
            }
            Ok(Action::Write(WriteOp::Delete { resource_type, id, .. })) => (*resource_type, id),
            Ok(Action::Write(WriteOp::Create { resource, id })) => (resource.resource_type(), id),
            _ => continue,
        };
        if !seen.insert(target) {
            return Err(StoreError::OpFailed {
                index: entry_idx,
                source: Box::new(StoreError::Invalid(format!(
                    "Bundle.entry[{entry_idx}]: {}/{} is the target of more than one entry",
                    target.0, target.1
                ))),
            });
        }
    }
    Ok(())
}

fn split_type_id(url: &str) -> Option<(&str, &str)> {
    let url = url.trim_start_matches('/');
    let (type_name, id) = url.split_once('/')?;
    if id.contains('/') { None } else { Some((type_name, id)) }
}

fn parse_type_id(url: &str) -> Result<(ResourceType, ResourceId), String> {
    let (type_name, id) = split_type_id(url)
        .ok_or_else(|| format!("request.url '{url}' must have the form Type/id"))?;
    let resource_type = ResourceType::parse(type_name).map_err(|e| e.to_string())?;
    let id = ResourceId::parse(id).map_err(|e| e.to_string())?;
    Ok((resource_type, id))
}

/// Reads a version from an ETag such as `W/"3"` (or a bare `3`).
pub fn parse_etag(etag: &str) -> Result<u64, String> {
    let trimmed = etag.trim();
    let inner = trimmed.strip_prefix("W/").unwrap_or(trimmed);
    let inner = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(inner);
    inner.parse::<u64>().map_err(|_| format!("'{etag}' is not an ETag of the form W/\"<version>\""))
}

/// Replaces every `"reference":"urn:uuid:…"` that a fullUrl declared with its `Type/id`.
///
/// It works on the JSON text, so numbers and everything else stay byte-exact. Only
/// `Reference.reference` values are references: an identifier whose value is a `urn:uuid:` stays
/// as it is. The key and its string can only appear together like this outside any string (a
/// quote inside a string is escaped). In a transaction, a reference to an undeclared `urn:uuid:`
/// is refused because it could never resolve.
fn rewrite_urn_references<'t>(
    text: &'t str,
    urn_map: &HashMap<&str, &str>,
    kind: BundleKind,
) -> Result<std::borrow::Cow<'t, str>, String> {
    const NEEDLE: &str = "\"reference\":\"urn:uuid:";
    const KEY: usize = "\"reference\":\"".len();
    if !text.contains(NEEDLE) {
        return Ok(std::borrow::Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(NEEDLE) {
        let start = pos + KEY;
        let Some(len) = rest[start..].find('"') else { break };
        let urn = &rest[start..start + len];
        out.push_str(&rest[..start]);
        match urn_map.get(urn) {
            Some(target) => out.push_str(target),
            None if kind == BundleKind::Transaction => {
                return Err(format!("reference to '{urn}', which no entry's fullUrl declares"));
            }
            None => out.push_str(urn),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    Ok(std::borrow::Cow::Owned(out))
}

fn write_response(
    outcome: &WriteOutcome,
    options: BundleOptions<'_>,
) -> Result<EntryOut, StoreError> {
    let status = if outcome.body.is_none() {
        200
    } else if outcome.created {
        201
    } else {
        200
    };
    let location = outcome
        .body
        .as_ref()
        .map(|_| format!("{}/{}/_history/{}", outcome.resource_type, outcome.id, outcome.version));
    let resource = match (&outcome.body, options.return_resources) {
        (Some(body), true) => Some(raw_json(body.to_vec())?),
        _ => None,
    };
    Ok(EntryOut {
        full_url: outcome
            .body
            .as_ref()
            .map(|_| format!("{}/{}", outcome.resource_type, outcome.id)),
        resource,
        response: ResponseOut {
            status: status_line(status),
            location,
            etag: outcome.body.as_ref().map(|_| format!("W/\"{}\"", outcome.version)),
            last_modified: outcome.last_updated.map(Instant::to_fhir),
            outcome: None,
        },
    })
}

fn error_response(error: &StoreError) -> EntryOut {
    let kind = error.kind();
    let oo = OperationOutcome::single(Issue::error(kind, error.to_string()));
    let status = http_status(if kind == ErrorKind::Internal { ErrorKind::Internal } else { kind });
    EntryOut {
        response: ResponseOut {
            status: status_line(status),
            outcome: raw_json(oo.to_json()).ok(),
            ..ResponseOut::default()
        },
        ..EntryOut::default()
    }
}

fn raw_json(bytes: Vec<u8>) -> Result<Box<RawValue>, StoreError> {
    let text = String::from_utf8(bytes).map_err(|e| StoreError::backend("read stored body", e))?;
    RawValue::from_string(text).map_err(|e| StoreError::backend("read stored body", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urn_references_are_rewritten_as_whole_strings_only() {
        let map: HashMap<&str, &str> = [("urn:uuid:a", "Patient/1")].into_iter().collect();
        let text = r#"{"subject":{"reference":"urn:uuid:a"},"identifier":[{"value":"urn:uuid:zz"}],"text":{"div":"<a href=\"urn:uuid:a\">x</a>"},"n":1.50}"#;
        let out = rewrite_urn_references(text, &map, BundleKind::Transaction).unwrap();
        assert_eq!(
            out,
            r#"{"subject":{"reference":"Patient/1"},"identifier":[{"value":"urn:uuid:zz"}],"text":{"div":"<a href=\"urn:uuid:a\">x</a>"},"n":1.50}"#
        );
        assert!(
            rewrite_urn_references(r#"{"reference":"urn:uuid:zz"}"#, &map, BundleKind::Transaction)
                .is_err()
        );
        assert!(
            rewrite_urn_references(r#"{"reference":"urn:uuid:zz"}"#, &map, BundleKind::Batch)
                .is_ok()
        );
    }

    #[test]
    fn etags_parse_in_weak_and_bare_forms() {
        assert_eq!(parse_etag("W/\"3\""), Ok(3));
        assert_eq!(parse_etag("\"4\""), Ok(4));
        assert_eq!(parse_etag("5"), Ok(5));
        assert!(parse_etag("W/\"x\"").is_err());
    }
}
