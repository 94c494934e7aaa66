use bulkfhir_model::ErrorKind;
use bulkfhir_output::OutputError;
use bulkfhir_store::StoreError;

/// Why an export call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The kick-off asks for something invalid or unsupported.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The parameter at fault, if one.
        parameter: Option<String>,
    },
    /// No such job, Group or file.
    #[error("{0}")]
    NotFound(String),
    /// The job's files have expired and were deleted.
    #[error("{0}")]
    Gone(String),
    /// Too many exports are queued or running.
    #[error("{0}")]
    Busy(String),
    /// The resource or job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing or reading a file failed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The job's stored documents are unreadable (a bug or a newer format).
    #[error("job data is corrupt: {0}")]
    Corrupt(String),
    /// A part of the export panicked (a bug); the job is marked failed.
    #[error("internal error: {0}")]
    Panicked(String),
    /// The work stopped because the job was cancelled or taken over.
    #[error("stopped: {0}")]
    Stopped(&'static str),
}

impl ExportError {
    /// The shared classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExportError::Invalid { .. } => ErrorKind::Invalid,
            ExportError::NotFound(_) => ErrorKind::NotFound,
            ExportError::Gone(_) => ErrorKind::Gone,
            ExportError::Busy(_) => ErrorKind::TooManyRequests,
            ExportError::Store(StoreError::TooManyJobs { .. }) => ErrorKind::TooManyRequests,
            ExportError::Store(e) => e.kind(),
            ExportError::Output(e) => e.kind(),
            ExportError::Corrupt(_) | ExportError::Panicked(_) | ExportError::Stopped(_) => {
                ErrorKind::Internal
            }
        }
    }

    pub(crate) fn invalid(message: impl Into<String>, parameter: Option<&str>) -> Self {
        ExportError::Invalid { message: message.into(), parameter: parameter.map(str::to_owned) }
    }
}

pub(crate) fn corrupt(error: serde_json::Error) -> ExportError {
    ExportError::Corrupt(error.to_string())
}
