use std::fmt;

/// The classification every layer's error maps to; the HTTP edge turns it into a status code and an
/// `OperationOutcome` issue code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request or its content is malformed or breaks a rule (400).
    Invalid,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The thing existed and was deleted (410).
    Gone,
    /// The request conflicts with the current state (409).
    Conflict,
    /// A precondition such as `If-Match` does not hold (412).
    PreconditionFailed,
    /// The caller did not authenticate, or its credentials are not valid (401).
    Unauthorized,
    /// The caller may not do this (403).
    Forbidden,
    /// The request is valid FHIR but this server does not support it (422 or 400, by context).
    Unsupported,
    /// The payload is larger than the configured limit (413).
    TooLarge,
    /// The caller must slow down (429).
    TooManyRequests,
    /// A dependency is down or busy; retrying later may work (503).
    Unavailable,
    /// A fault inside the server (500).
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a piece of FHIR input was refused by the model layer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelError {
    /// The bytes are not a single well-formed JSON value.
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// The JSON is valid but not a FHIR resource of the kind expected.
    #[error("{0}")]
    InvalidResource(String),
    /// `resourceType` names no FHIR R4 resource type.
    #[error("unknown resource type '{0}'")]
    UnknownResourceType(String),
    /// An id does not match the FHIR id grammar `[A-Za-z0-9\-\.]{1,64}`.
    #[error("invalid resource id '{0}': ids are 1-64 characters of A-Z, a-z, 0-9, '-' and '.'")]
    InvalidId(String),
    /// An instant or date does not parse.
    #[error("invalid instant '{0}': expected a FHIR instant such as 2024-01-31T12:00:00Z")]
    InvalidInstant(String),
    /// A tenant name does not match `[a-z0-9-]{1,48}` with a letter or digit at both ends.
    #[error(
        "invalid tenant name '{0}': tenant names are 1-48 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
    )]
    InvalidTenant(String),
}

impl ModelError {
    /// The shared classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ModelError::UnknownResourceType(_) => ErrorKind::Invalid,
            _ => ErrorKind::Invalid,
        }
    }
}

/// An error and its whole `source()` chain on one line (`outer: cause: root cause`), for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
