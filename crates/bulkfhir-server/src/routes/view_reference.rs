//! `viewReference` of `$viewdefinition-run` and `$viewdefinition-export`: the stored
//! ViewDefinition a reference names.
//!
//! Resolved: `ViewDefinition/{id}` and `ViewDefinition/{id}/_history/{version}`, the same as
//! absolute URLs on this server's base, and canonical URLs (`url`, or `url|version`) of the
//! stored ViewDefinitions. A canonical URL that several stored views share (different versions)
//! must name its version. Nothing is fetched from another server: an absolute URL that is
//! neither this server's nor a stored view's canonical URL is not found, so a request can never
//! make the server call an arbitrary address.

use bulkfhir_auth::Action;
use bulkfhir_model::{ErrorKind, ResourceId, ResourceType};
use bulkfhir_store::{ScanOptions, StoredResource};
use serde_json::Value;

use crate::{AppState, auth::Caller, outcome::ApiError};

/// Stored ViewDefinitions read per page when looking up a canonical URL.
const PAGE: usize = 500;

/// The ViewDefinition `reference` names, as JSON, if the caller may read it; `parameter` is the
/// parameter's name for error messages.
pub(super) async fn stored_view(
    state: &AppState,
    caller: &Caller,
    base: &str,
    reference: &str,
    parameter: &str,
) -> Result<Value, ApiError> {
    let narrowing = caller.narrowing(ResourceType::VIEW_DEFINITION, Action::Read)?;
    let not_found = |why: &str| {
        ApiError::new(ErrorKind::NotFound, format!("{parameter} '{reference}': {why}"))
            .at(parameter)
    };
    let local =
        reference.strip_prefix(base).and_then(|rest| rest.strip_prefix('/')).unwrap_or(reference);
    let stored = if let Some(rest) = local.strip_prefix("ViewDefinition/") {
        let (id, version) = match rest.split_once("/_history/") {
            Some((id, version)) => (id, Some(version)),
            None => (rest, None),
        };
        let id = ResourceId::parse(id).map_err(|_| not_found("not a ViewDefinition id"))?;
        let found = match version.map(str::parse::<u64>) {
            None => state.store.read(ResourceType::VIEW_DEFINITION, &id).await,
            Some(Ok(version)) => {
                state.store.vread(ResourceType::VIEW_DEFINITION, &id, version).await
            }
            Some(Err(_)) => return Err(not_found("not a version number")),
        };
        match found {
            Ok(stored) => stored,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Err(not_found("no such ViewDefinition on this server"));
            }
            Err(error) => return Err(error.into()),
        }
    } else if reference.contains("://") || reference.starts_with("urn:") {
        by_canonical(state, reference, parameter).await?.ok_or_else(|| {
            not_found("no stored ViewDefinition has this canonical URL (nothing is fetched from other servers)")
        })?
    } else {
        return Err(ApiError::invalid(format!(
            "{parameter} '{reference}' does not name a ViewDefinition: give ViewDefinition/[id], \
             an absolute URL on this server, or a canonical URL (url or url|version)"
        ))
        .at(parameter));
    };
    // Outside the caller's scope answers as if it did not exist, as a read does.
    if !narrowing.admits(&stored.body) {
        return Err(not_found("no such ViewDefinition on this server"));
    }
    serde_json::from_slice(&stored.body).map_err(|e| {
        ApiError::new(ErrorKind::Internal, format!("stored {reference} is not JSON: {e}"))
    })
}

/// The one stored ViewDefinition whose `url` (and `version`, when `canonical` is `url|version`)
/// match, or none; several is an error naming their versions.
async fn by_canonical(
    state: &AppState,
    canonical: &str,
    parameter: &str,
) -> Result<Option<StoredResource>, ApiError> {
    let (url, version) = match canonical.split_once('|') {
        Some((url, version)) => (url, Some(version)),
        None => (canonical, None),
    };
    let snapshot = state.store.snapshot().await?;
    let mut found: Vec<(Option<String>, StoredResource)> = Vec::new();
    let mut after = 0;
    loop {
        let page = state
            .store
            .scan(snapshot, ResourceType::VIEW_DEFINITION, ScanOptions::live(after, PAGE))
            .await?;
        for resource in page.resources {
            let Ok(view) = serde_json::from_slice::<Value>(&resource.body) else { continue };
            let stored_version = view["version"].as_str().map(str::to_owned);
            if view["url"].as_str() == Some(url)
                && version.is_none_or(|v| stored_version.as_deref() == Some(v))
            {
                found.push((stored_version, resource));
            }
        }
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    if found.len() > 1 {
        let versions: Vec<String> =
            found.iter().map(|(v, _)| v.clone().unwrap_or_else(|| "(none)".to_owned())).collect();
        return Err(ApiError::invalid(format!(
            "{parameter} '{canonical}' matches {} stored ViewDefinitions (versions {}): add |version",
            found.len(),
            versions.join(", ")
        ))
        .at(parameter));
    }
    Ok(found.pop().map(|(_, resource)| resource))
}
