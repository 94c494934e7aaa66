//! The one mapping from errors to HTTP responses: status code plus `OperationOutcome`.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_model::{
    ErrorKind, ModelError, error_chain,
    outcome::{Issue, OperationOutcome, http_status},
};
use bulkfhir_store::StoreError;

/// The media type of every FHIR JSON response.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    status: Option<StatusCode>,
    message: String,
    expression: Option<String>,
}

impl ApiError {
    /// An error of `kind` with a message for the client.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, status: None, message: message.into(), expression: None }
    }

    /// A 400 with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    /// Overrides the status code the kind would give (415, 406, 405).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Adds the location of the problem.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let kind = error.kind();
        if let StoreError::StorageFull { .. } = &error {
            // Say so: the operator (and a retrying client) can act on it.
            tracing::error!(error = %error_chain(&error), "request failed: storage full");
            return ApiError::new(kind, error.to_string());
        }
        if kind == ErrorKind::Internal || kind == ErrorKind::Unavailable {
            // The full chain goes to the log; the client gets an id to quote.
            let incident = uuid::Uuid::new_v4();
            tracing::error!(%incident, error = %error_chain(&error), "request failed");
            return ApiError::new(kind, format!("internal error; incident {incident}"));
        }
        let expression = match &error {
            StoreError::OpFailed { index, .. } => Some(format!("Bundle.entry[{index}]")),
            _ => None,
        };
        ApiError { kind, status: None, message: error.to_string(), expression }
    }
}

impl From<bulkfhir_export::ExportError> for ApiError {
    fn from(error: bulkfhir_export::ExportError) -> Self {
        use bulkfhir_export::ExportError;
        match error {
            ExportError::Store(store) => ApiError::from(store),
            ExportError::ShuttingDown => ApiError::new(ErrorKind::Unavailable, error.to_string()),
            ExportError::Invalid { message, parameter } => {
                let api = ApiError::invalid(message);
                match parameter {
                    Some(parameter) => api.at(parameter),
                    None => api,
                }
            }
            other => {
                let kind = other.kind();
                if kind == ErrorKind::Internal || kind == ErrorKind::Unavailable {
                    let incident = uuid::Uuid::new_v4();
                    tracing::error!(%incident, error = %error_chain(&other), "export request failed");
                    return ApiError::new(kind, format!("internal error; incident {incident}"));
                }
                ApiError::new(kind, other.to_string())
            }
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(error: ModelError) -> Self {
        ApiError::new(error.kind(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(http_status(self.kind))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        let mut issue = Issue::error(self.kind, self.message);
        if let Some(expression) = self.expression {
            issue = issue.at(expression);
        }
        outcome_response(status, OperationOutcome::single(issue))
    }
}

/// A response carrying an OperationOutcome.
pub fn outcome_response(status: StatusCode, outcome: OperationOutcome) -> Response {
    let mut response = (status, outcome.to_json()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}
