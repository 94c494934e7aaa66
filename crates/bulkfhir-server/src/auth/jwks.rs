//! Client keys published at a `jwks_url`: fetched over HTTPS (plain HTTP only on loopback),
//! with a timeout and a size limit, cached, and fetched again when an assertion names a `kid`
//! the cached set lacks (the client rotated its keys), at most once per
//! [`REFETCH_INTERVAL`] per URL so that forged `kid`s cannot make the server hammer the host.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use bulkfhir_auth::{AuthError, JwkSet, OAuthError};
use futures::StreamExt;

/// How long a fetched JWKS is used before it is fetched again.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// The least time between two fetches of one URL.
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// The largest JWKS document read.
const MAX_BYTES: usize = 64 * 1024;
/// The most URLs cached.
const MAX_ENTRIES: usize = 1024;
/// Connect plus read.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Entry {
    keys: JwkSet,
    fetched: Instant,
}

/// Fetches and caches JWKS documents.
#[derive(Debug)]
pub(crate) struct JwksFetcher {
    client: reqwest::Client,
    cache: Mutex<HashMap<String, Entry>>,
}

fn unavailable(message: impl Into<String>) -> AuthError {
    AuthError { code: OAuthError::InvalidClient, message: message.into() }
}

impl JwksFetcher {
    pub(crate) fn new() -> Result<Self, AuthError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| unavailable("could not build an HTTP client for JWKS URLs"))?;
        Ok(JwksFetcher { client, cache: Mutex::new(HashMap::new()) })
    }

    /// The keys at `url`: cached ones while fresh and (when `kid` is given) holding it; else
    /// fetched, unless the URL was fetched less than [`REFETCH_INTERVAL`] ago.
    pub(crate) async fn keys(&self, url: &str, kid: Option<&str>) -> Result<JwkSet, AuthError> {
        {
            let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = cache.get(url) {
                let age = entry.fetched.elapsed();
                let has_kid = kid.is_none_or(|kid| {
                    entry.keys.keys.iter().any(|k| k.common.key_id.as_deref() == Some(kid))
                });
                if (age < CACHE_TTL && has_kid) || age < REFETCH_INTERVAL {
                    return Ok(entry.keys.clone());
                }
            }
        }
        let keys = self.fetch(url).await?;
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(url) {
            let oldest = cache.iter().min_by_key(|(_, e)| e.fetched).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(url.to_owned(), Entry { keys: keys.clone(), fetched: Instant::now() });
        Ok(keys)
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, AuthError> {
        bulkfhir_auth::keys::check_jwks_url(url).map_err(unavailable)?;
        let failed = |why: &str| {
            tracing::warn!(jwks_url = url, why, "could not fetch a client's JWKS");
            unavailable(format!("the client's JWKS URL could not be read ({why})"))
        };
        let response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| failed(if e.is_timeout() { "timed out" } else { "unreachable" }))?;
        if !response.status().is_success() {
            return Err(failed(&format!("HTTP {}", response.status().as_u16())));
        }
        if response.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
            return Err(failed("larger than 64 KiB"));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| failed("the body could not be read"))?;
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(failed("larger than 64 KiB"));
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body).map_err(|_| failed("not UTF-8"))?;
        bulkfhir_auth::keys::check_jwks(text).map_err(|_| failed("not a usable JWKS"))?;
        serde_json::from_str(text).map_err(|_| failed("not a usable JWKS"))
    }
}
