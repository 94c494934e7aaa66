//! Authorization at the edge: SMART Backend Services (`bulkfhir-auth` does the checks; this
//! module speaks HTTP for it).
//!
//! - [`token`]: `POST [base]/auth/token`, the client-credentials grant with a signed client
//!   assertion; [`jwks`] fetches keys published at a client's `jwks_url`.
//! - [`authenticate`]: the middleware on every FHIR route but the public ones (`metadata`,
//!   `.well-known/smart-configuration`, the token endpoint): no valid bearer token, 401 with
//!   `WWW-Authenticate: Bearer` and an `OperationOutcome`; else the request carries a
//!   [`Caller`].
//! - [`Caller`]: what the token allows, as the inputs handlers pass on: a [`JobAccess`] and an
//!   [`ExportBound`] for the export engine, narrowing queries for REST reads and searches, a
//!   check for writes. Without authorization (`--auth none`) the caller is unrestricted.

pub(crate) mod discovery;
mod jwks;
pub(crate) mod token;

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bulkfhir_auth::{Action, AuthError, Grant, ReadAccess, TokenSigner};
use bulkfhir_export::{ExportBound, JobAccess};
use bulkfhir_model::{ErrorKind, Instant, ResourceType, TenantName, search::SearchQuery};
use bulkfhir_store::ClientStore;

use crate::{AppState, outcome::ApiError};

/// What authorization needs: the key that signs access tokens, the registered clients and the
/// replay cache, and the fetcher of published client keys.
#[derive(Debug)]
pub struct AuthSettings {
    signer: TokenSigner,
    clients: Arc<dyn ClientStore>,
    jwks: jwks::JwksFetcher,
    /// Clients found registered, and when: a token of a client removed since stops working
    /// within [`REGISTRATION_RECHECK`] (one store lookup per client per period, not per request).
    registered: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Tokens already verified, so that a client polling with one token pays for the signature
    /// and JSON once: the whole token is the key, and expiry is checked on every use.
    verified: std::sync::Mutex<std::collections::HashMap<String, Verified>>,
    /// The tenant these settings serve (`None`: the default tenant): its tokens name it.
    tenant: Option<TenantName>,
    /// At a tenant, the default tenant's settings: its clients' tokens that hold
    /// `bulkfhir/tenants` are accepted here too, and their registration is checked there.
    operators: Option<Arc<AuthSettings>>,
}

/// A verified token's content.
#[derive(Debug, Clone)]
struct Verified {
    client_id: String,
    grant: Arc<Grant>,
    expires_at: u64,
    tenant: Option<String>,
}

/// The most verified tokens remembered (a few hundred bytes each).
const VERIFIED_CACHE: usize = 10_000;

/// How long a client's registration is trusted before a token of it checks again.
pub(crate) const REGISTRATION_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

impl AuthSettings {
    /// Settings with the server's token signing `secret` (at least 32 random bytes, kept in the
    /// data directory so that tokens outlive a restart) and the client registry.
    pub fn new(secret: &[u8], clients: Arc<dyn ClientStore>) -> Result<Self, AuthError> {
        Ok(AuthSettings {
            signer: TokenSigner::new(secret)?,
            clients,
            jwks: jwks::JwksFetcher::new()?,
            registered: std::sync::Mutex::default(),
            verified: std::sync::Mutex::default(),
            tenant: None,
            operators: None,
        })
    }

    /// Settings for `tenant`, whose clients are in `clients`: same signing `secret` as the
    /// default tenant's `operators`, but its tokens name the tenant and are refused elsewhere.
    pub fn for_tenant(
        secret: &[u8],
        clients: Arc<dyn ClientStore>,
        tenant: TenantName,
        operators: Arc<AuthSettings>,
    ) -> Result<Self, AuthError> {
        let mut settings = Self::new(secret, clients)?;
        settings.tenant = Some(tenant);
        settings.operators = Some(operators);
        Ok(settings)
    }

    /// The tenant these settings serve, as tokens name it.
    pub(crate) fn tenant(&self) -> Option<&str> {
        self.tenant.as_ref().map(TenantName::as_str)
    }

    /// Whose client registry vouches for a token here: this tenant's for its own tokens, the
    /// default tenant's for an operator's token (`bulkfhir/tenants`); `None` for a token of
    /// another tenant, which must not learn that anything here exists.
    fn registry_for(&self, access: &Verified) -> Option<&AuthSettings> {
        let here = self.tenant.as_ref().map(TenantName::as_str);
        if access.tenant.as_deref() == here {
            return Some(self);
        }
        if access.tenant.is_none() && access.grant.crosses_tenants() {
            return self.operators.as_deref();
        }
        None
    }

    /// Checks a bearer token: from the cache of verified tokens while it is unexpired, else by
    /// its signature.
    fn verify(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        let lock = || self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hit) = lock().get(token).filter(|v| v.expires_at > now) {
            return Ok(hit.clone());
        }
        let access = self.signer.verify(token, now)?;
        let verified = Verified {
            client_id: access.client_id,
            grant: Arc::new(access.grant),
            expires_at: access.expires_at,
            tenant: access.tenant,
        };
        let mut cache = lock();
        if cache.len() >= VERIFIED_CACHE {
            cache.retain(|_, v| v.expires_at > now);
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    /// Whether `client` is still registered (cached for [`REGISTRATION_RECHECK`]).
    async fn still_registered(&self, client: &str) -> Result<bool, ApiError> {
        let lock = || self.registered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if lock().get(client).is_some_and(|at| at.elapsed() < REGISTRATION_RECHECK) {
            return Ok(true);
        }
        let found = self.clients.client(client).await?.is_some();
        let mut registered = lock();
        if found {
            if registered.len() > 10_000 {
                registered.retain(|_, at| at.elapsed() < REGISTRATION_RECHECK);
            }
            registered.insert(client.to_owned(), std::time::Instant::now());
        } else {
            registered.remove(client);
        }
        Ok(found)
    }
}

/// Seconds since the epoch, now.
fn now_seconds() -> u64 {
    u64::try_from(Instant::now().as_micros() / 1_000_000).unwrap_or(0)
}

/// Who is asking and what the access token allows.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    client_id: Option<String>,
    /// `None`: authorization is off, everything is allowed.
    grant: Option<Arc<Grant>>,
}

impl Caller {
    fn unrestricted() -> Self {
        Caller { client_id: None, grant: None }
    }

    /// The client that authenticated, if authorization is on.
    pub(crate) fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// Which export jobs the caller sees: its own, or all for an administrator or without
    /// authorization.
    pub(crate) fn job_access(&self) -> JobAccess {
        match (&self.grant, &self.client_id) {
            (Some(grant), Some(client)) if !grant.is_admin() => JobAccess::Owner(client.clone()),
            _ => JobAccess::Any,
        }
    }

    /// Refuses `action` on `resource_type` unless some scope allows it (perhaps only for the
    /// resources a granular scope's query matches; see [`Caller::narrowing`]).
    pub(crate) fn require(
        &self,
        resource_type: ResourceType,
        action: Action,
    ) -> Result<(), ApiError> {
        match &self.grant {
            Some(grant) if !grant.permits(resource_type, action) => {
                Err(forbidden(resource_type, action))
            }
            _ => Ok(()),
        }
    }

    /// Refuses `action` on `resource_type` unless a scope allows it on every resource of the
    /// type (Bundle entries, which are not narrowed one by one).
    pub(crate) fn require_all(
        &self,
        resource_type: ResourceType,
        action: Action,
    ) -> Result<(), ApiError> {
        match &self.grant {
            Some(grant) if !grant.permits_all(resource_type, action) => {
                Err(forbidden(resource_type, action))
            }
            _ => Ok(()),
        }
    }

    /// The queries one of which a resource of `resource_type` must match for `action`: none
    /// when the whole type is allowed; 403 when nothing of it is.
    pub(crate) fn narrowing(
        &self,
        resource_type: ResourceType,
        action: Action,
    ) -> Result<Narrowing, ApiError> {
        let Some(grant) = &self.grant else { return Ok(Narrowing(Vec::new())) };
        match grant.read_access(resource_type, action) {
            ReadAccess::Denied => Err(forbidden(resource_type, action)),
            ReadAccess::All => Ok(Narrowing(Vec::new())),
            ReadAccess::Matching(queries) => {
                let parsed = queries
                    .iter()
                    .map(|q| {
                        SearchQuery::parse_type_filter(
                            &format!("{resource_type}?{q}"),
                            Instant::now(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        ApiError::new(
                            ErrorKind::Forbidden,
                            "the access token's scope cannot be evaluated",
                        )
                    })?;
                Ok(Narrowing(parsed))
            }
        }
    }

    /// What the caller may export: the types its scopes let it search, narrowed by granular
    /// scopes' queries.
    pub(crate) fn export_bound(&self) -> ExportBound {
        let Some(grant) = &self.grant else { return ExportBound::everything() };
        let mut types = std::collections::BTreeSet::new();
        let mut required = Vec::new();
        let mut everything = true;
        for resource_type in ResourceType::all() {
            match grant.read_access(resource_type, Action::Search) {
                ReadAccess::Denied => everything = false,
                ReadAccess::All => {
                    types.insert(resource_type);
                }
                ReadAccess::Matching(queries) => {
                    everything = false;
                    types.insert(resource_type);
                    required.extend(queries.iter().map(|q| format!("{resource_type}?{q}")));
                }
            }
        }
        ExportBound { types: (!everything).then_some(types), required }
    }
}

/// Granular scopes' queries: a resource is within them when one matches (or there are none).
#[derive(Debug)]
pub(crate) struct Narrowing(Vec<SearchQuery>);

impl Narrowing {
    /// Whether nothing is narrowed.
    pub(crate) fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `body` is within the scope. A body the evaluator cannot read is not.
    pub(crate) fn admits(&self, body: &[u8]) -> bool {
        self.0.is_empty() || self.0.iter().any(|q| q.matches(body).unwrap_or(false))
    }
}

fn forbidden(resource_type: ResourceType, action: Action) -> ApiError {
    let what = match action {
        Action::Create => "create",
        Action::Read => "read",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Search => "search or export",
    };
    ApiError::new(
        ErrorKind::Forbidden,
        format!("the access token's scopes do not allow this client to {what} {resource_type}"),
    )
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        // Without the middleware's verdict, only a server without authorization lets it pass.
        match &state.config.auth {
            None => Ok(Caller::unrestricted()),
            Some(_) => Err(unauthorized(None, "this request needs an access token")),
        }
    }
}

/// The middleware: checks the bearer token and attaches the [`Caller`].
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.config.auth else {
        request.extensions_mut().insert(Caller::unrestricted());
        return next.run(request).await;
    };
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return unauthorized(
            None,
            "this server needs an access token: get one from the token endpoint named in .well-known/smart-configuration, and send it as Authorization: Bearer",
        );
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return unauthorized(
            Some("invalid_request"),
            "the Authorization header is not 'Bearer <token>'",
        );
    };
    match auth.verify(token, now_seconds()) {
        Ok(access) => {
            let Some(registry) = auth.registry_for(&access) else {
                // Another tenant's token: the same answer as for a path that does not exist.
                return ApiError::new(
                    ErrorKind::NotFound,
                    format!("no FHIR endpoint at {}", request.uri().path()),
                )
                .into_response();
            };
            match registry.still_registered(&access.client_id).await {
                Ok(true) => {}
                Ok(false) => {
                    return unauthorized(
                        Some("invalid_token"),
                        "the client this token was issued to is no longer registered",
                    );
                }
                Err(error) => return error.into_response(),
            }
            request
                .extensions_mut()
                .insert(Caller { client_id: Some(access.client_id), grant: Some(access.grant) });
            next.run(request).await
        }
        Err(error) => unauthorized(Some("invalid_token"), &error.message),
    }
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750) and an `OperationOutcome`.
fn unauthorized(error: Option<&str>, message: &str) -> Response {
    let mut response = ApiError::new(ErrorKind::Unauthorized, message).into_response();
    let challenge = match error {
        Some(code) => format!(r#"Bearer realm="bulkfhir", error="{code}""#),
        None => r#"Bearer realm="bulkfhir""#.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
