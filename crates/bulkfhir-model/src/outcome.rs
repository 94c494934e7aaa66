//! `OperationOutcome` construction.
//!
//! Every error the server sends is an OperationOutcome; this module builds them from an issue
//! list so that the HTTP edge, batch responses and export error files all look alike.

use serde::Serialize;

use crate::ErrorKind;

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The operation failed.
    Fatal,
    /// The operation failed for this issue.
    Error,
    /// A problem that did not stop the operation.
    Warning,
    /// Information only.
    Information,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    /// How bad the issue is.
    pub severity: Severity,
    /// The `issue-type` code (e.g. `invalid`, `not-found`, `processing`).
    pub code: &'static str,
    /// Human-readable detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// FHIRPath-like locations of the problem (e.g. `Bundle.entry[3]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

impl Issue {
    /// An error-severity issue with the code that matches `kind`.
    pub fn error(kind: ErrorKind, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code: issue_code(kind),
            diagnostics: Some(diagnostics.into()),
            expression: Vec::new(),
        }
    }

    /// An information issue (used for successful deletes and the like).
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            code: "informational",
            diagnostics: Some(diagnostics.into()),
            expression: Vec::new(),
        }
    }

    /// Adds a location expression.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }
}

/// The `issue-type` code for an error kind.
pub fn issue_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Invalid => "invalid",
        ErrorKind::NotFound => "not-found",
        ErrorKind::Gone => "deleted",
        ErrorKind::Conflict => "conflict",
        ErrorKind::PreconditionFailed => "conflict",
        ErrorKind::Unauthorized => "login",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::Unsupported => "not-supported",
        ErrorKind::TooLarge => "too-costly",
        ErrorKind::TooManyRequests => "throttled",
        ErrorKind::Unavailable => "transient",
        _ => "exception",
    }
}

/// A complete `OperationOutcome` resource.
#[derive(Debug, Clone, Serialize)]
pub struct OperationOutcome {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    /// The issues.
    pub issue: Vec<Issue>,
}

impl OperationOutcome {
    /// An outcome with these issues.
    pub fn new(issue: Vec<Issue>) -> Self {
        OperationOutcome { resource_type: "OperationOutcome", issue }
    }

    /// An outcome with one issue.
    pub fn single(issue: Issue) -> Self {
        Self::new(vec![issue])
    }

    /// The outcome as minified JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and enums into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}"#
                .to_vec()
        })
    }
}

/// The HTTP status the FHIR RESTful API uses for an error kind.
pub fn http_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Invalid => 400,
        ErrorKind::Unauthorized => 401,
        ErrorKind::Forbidden => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::Conflict => 409,
        ErrorKind::Gone => 410,
        ErrorKind::PreconditionFailed => 412,
        ErrorKind::TooLarge => 413,
        ErrorKind::Unsupported => 422,
        ErrorKind::TooManyRequests => 429,
        ErrorKind::Unavailable => 503,
        _ => 500,
    }
}

/// `"<code> <reason>"`, as `Bundle.entry.response.status` writes it.
pub fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    format!("{code} {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_serialize_as_fhir() {
        let oo = OperationOutcome::single(
            Issue::error(ErrorKind::NotFound, "no such thing").at("Patient.id"),
        );
        let v: serde_json::Value = serde_json::from_slice(&oo.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such thing","expression":["Patient.id"]}]})
        );
    }
}
