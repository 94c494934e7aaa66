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
    /// The caller may not export what it asked for (a type its access does not cover).
    #[error("{0}")]
    Forbidden(String),
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
    /// A view cannot run on a stored resource (`$viewdefinition-export`).
    #[error("view '{view}' cannot run on {resource}: {message}")]
    View {
        /// The view's output name.
        view: String,
        /// `Type/id` of the resource.
        resource: String,
        /// Why.
        message: String,
    },
    /// A stored resource could not be tested against `_typeFilter` (it is not JSON the evaluator
    /// can read). The job fails rather than leave the resource out.
    #[error(
        "{resource} could not be tested against _typeFilter ({message}); it was not left out silently"
    )]
    Unfilterable {
        /// `Type/id` of the resource.
        resource: String,
        /// Why the evaluator could not read it.
        message: String,
    },
    /// A part of the export panicked (a bug); the job is marked failed.
    #[error("internal error: {0}")]
    Panicked(String),
    /// This node is shutting down and takes no new export.
    #[error("this server is shutting down and takes no new export; retry shortly")]
    ShuttingDown,
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
            ExportError::Forbidden(_) => ErrorKind::Forbidden,
            ExportError::Gone(_) => ErrorKind::Gone,
            ExportError::Busy(_) => ErrorKind::TooManyRequests,
            ExportError::ShuttingDown => ErrorKind::Unavailable,
            ExportError::Store(StoreError::TooManyJobs { .. }) => ErrorKind::TooManyRequests,
            ExportError::Store(e) => e.kind(),
            ExportError::Output(e) => e.kind(),
            ExportError::Corrupt(_)
            | ExportError::Unfilterable { .. }
            | ExportError::View { .. }
            | ExportError::Panicked(_)
            | ExportError::Stopped(_) => ErrorKind::Internal,
        }
    }

    /// The failure as the job's owner reads it in the status `OperationOutcome`: this error and,
    /// when an I/O error lies beneath it, its cause as a short phrase ("storage full",
    /// "read-only file system"). Never a file system path: the context names only the export's
    /// own keys (`jobs/{job}/{file}`), and the cause is taken from the error kind, not its text.
    pub fn describe(&self) -> String {
        let mut cause = None;
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                cause = Some(io_cause(io.kind()));
            }
            if let Some(StoreError::StorageFull { .. }) = error.downcast_ref::<StoreError>() {
                return self.to_string();
            }
            current = error.source();
        }
        match cause {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>, parameter: Option<&str>) -> Self {
        ExportError::Invalid { message: message.into(), parameter: parameter.map(str::to_owned) }
    }
}

pub(crate) fn corrupt(error: serde_json::Error) -> ExportError {
    ExportError::Corrupt(error.to_string())
}

/// A short phrase for an I/O error kind.
fn io_cause(kind: std::io::ErrorKind) -> String {
    use std::io::ErrorKind as K;
    match kind {
        K::StorageFull => "storage full (no space left on the device)".to_owned(),
        K::QuotaExceeded => "storage full (disk quota exceeded)".to_owned(),
        K::ReadOnlyFilesystem => "the storage is a read-only file system".to_owned(),
        K::PermissionDenied => "permission denied by the storage".to_owned(),
        K::FileTooLarge => "a file grew larger than the storage allows".to_owned(),
        K::NotFound => "a file or folder the export writes to is missing".to_owned(),
        other => format!("I/O error ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_their_cause_without_paths() {
        let source = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "No space left on device (os error 28) at /secret/data/exports/x",
        );
        let error = ExportError::Output(OutputError::Io {
            context: "finish jobs/j1/Observation-6.ndjson".to_owned(),
            source,
        });
        let text = error.describe();
        assert_eq!(
            text,
            "finish jobs/j1/Observation-6.ndjson: storage full (no space left on the device)"
        );
        let readonly = ExportError::Output(OutputError::Io {
            context: "write jobs/j1/Patient-1.ndjson".to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem),
        });
        assert!(readonly.describe().ends_with("read-only file system"));
    }
}
