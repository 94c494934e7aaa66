use bulkfhir_model::ErrorKind;

use crate::OutputKey;

/// Why an output operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// No object is stored under the key.
    #[error("no output file at '{key}'")]
    NotFound {
        /// The key that was asked for.
        key: OutputKey,
    },
    /// A destination URL cannot be used (syntax, scheme, or the cloud client's settings).
    #[error("export destination {0}")]
    InvalidDestination(String),
    /// A string does not follow the [`OutputKey`] grammar.
    #[error("invalid output key {0}")]
    InvalidKey(String),
    /// A byte range does not lie within the object (`start <= end <= size` does not hold).
    #[error("range {start}..{end} is outside the {size}-byte object '{key}'")]
    InvalidRange {
        /// The object that was read.
        key: OutputKey,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The object's size in bytes.
        size: u64,
    },
    /// The object store failed.
    #[error("{context}")]
    Backend {
        /// What was being done, e.g. "read jobs/1/Patient.ndjson".
        context: String,
        /// The object store's error.
        #[source]
        source: object_store::Error,
    },
    /// Local I/O, compression or a background task failed, or the writer was used after a failed
    /// write.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl OutputError {
    /// The shared classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::InvalidKey(_) | Self::InvalidRange { .. } | Self::InvalidDestination(_) => {
                ErrorKind::Invalid
            }
            Self::Backend { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                // Network failures and store-side I/O errors: a retry may succeed.
                object_store::Error::Generic { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::StorageFull
                | std::io::ErrorKind::QuotaExceeded
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::ResourceBusy => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// Whether the failure is the kind a remote store recovers from (a connection refused or
    /// reset, a timeout, an error the object store gave up retrying), so that retrying the work
    /// later may succeed. A full disk or a permission error is not.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            Self::Backend { source, .. } => matches!(source, object_store::Error::Generic { .. }),
            Self::Io { source, .. } => matches!(
                source.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::TimedOut
                    | K::BrokenPipe
            ),
            _ => false,
        }
    }

    /// Converts an object store error about `key`, turning "not found" into [`Self::NotFound`].
    pub(crate) fn from_backend(key: &OutputKey, verb: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Self::NotFound { key: key.clone() },
            source => Self::Backend { context: format!("{verb} {key}"), source },
        }
    }

    pub(crate) fn io(context: String, source: std::io::Error) -> Self {
        Self::Io { context, source }
    }
}
