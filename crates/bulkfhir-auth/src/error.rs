//! Authorization errors in the RFC 6749 §5.2 vocabulary.

/// The RFC 6749 `error` code of a failed token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    /// The request is malformed (a missing or repeated parameter).
    InvalidRequest,
    /// The client or its assertion could not be authenticated (401).
    InvalidClient,
    /// The assertion is expired, replayed or otherwise unusable.
    InvalidGrant,
    /// Only `client_credentials` is supported.
    UnsupportedGrantType,
    /// The scope is malformed, or nothing of it can be granted.
    InvalidScope,
    /// A bearer token on a request is missing its signature, expired or not ours (RFC 6750).
    InvalidToken,
}

impl OAuthError {
    /// The `error` code.
    pub fn code(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidToken => "invalid_token",
        }
    }

    /// The HTTP status RFC 6749 and 6750 give it (401 for client authentication and bearer
    /// tokens, else 400).
    pub fn status(self) -> u16 {
        match self {
            OAuthError::InvalidClient | OAuthError::InvalidToken => 401,
            _ => 400,
        }
    }
}

/// Why a token request or an access token was refused. Messages name no key, token or path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    /// The RFC 6749 code.
    pub code: OAuthError,
    /// What is wrong, for the `error_description`.
    pub message: String,
}

impl AuthError {
    pub(crate) fn new(code: OAuthError, message: impl Into<String>) -> Self {
        AuthError { code, message: message.into() }
    }
}
