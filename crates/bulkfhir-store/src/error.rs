use bulkfhir_model::{ErrorKind, ModelError, ResourceId, ResourceType};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No resource with this type and id was ever stored.
    #[error("{resource_type}/{id} not found")]
    NotFound {
        /// The type asked for.
        resource_type: ResourceType,
        /// The id asked for.
        id: ResourceId,
    },
    /// The version asked for does not exist.
    #[error("{resource_type}/{id} has no version {version}")]
    VersionNotFound {
        /// The type asked for.
        resource_type: ResourceType,
        /// The id asked for.
        id: ResourceId,
        /// The version asked for.
        version: u64,
    },
    /// The resource (or this version of it) is deleted.
    #[error("{resource_type}/{id} is deleted (version {version})")]
    Gone {
        /// The type asked for.
        resource_type: ResourceType,
        /// The id asked for.
        id: ResourceId,
        /// The version that is the deletion.
        version: u64,
    },
    /// A create named an id that is already taken.
    #[error("{resource_type}/{id} already exists")]
    AlreadyExists {
        /// The type.
        resource_type: ResourceType,
        /// The id.
        id: ResourceId,
    },
    /// `If-Match` named a version that is not the current one.
    #[error("{resource_type}/{id}: If-Match expected version {expected}, current is {current}")]
    PreconditionFailed {
        /// The type.
        resource_type: ResourceType,
        /// The id.
        id: ResourceId,
        /// The version the client expected.
        expected: u64,
        /// The current version, or "none".
        current: String,
    },
    /// The input is not acceptable (bad resource, bad bundle, bad parameter).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (a Bundle entry its access does not cover).
    #[error("{0}")]
    Forbidden(String),
    /// The input was a resource the model layer refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// One write of an all-or-nothing batch failed, so none took effect.
    #[error("entry {index}: {source}")]
    OpFailed {
        /// The position of the failing op (or Bundle entry) in the request.
        index: usize,
        /// Why it failed.
        #[source]
        source: Box<StoreError>,
    },
    /// A fenced job write came from a runner that no longer holds the job (lease expired and
    /// taken over, or the job was cancelled or finished).
    #[error("job {job}: lease lost")]
    LeaseLost {
        /// The job.
        job: String,
    },
    /// No export job has this id.
    #[error("no export job {job}")]
    JobNotFound {
        /// The id asked for.
        job: String,
    },
    /// The export queue is full.
    #[error("{active} exports are already queued or running; the limit is {limit}")]
    TooManyJobs {
        /// Jobs active now.
        active: u64,
        /// The configured limit.
        limit: usize,
    },
    /// The database failed; the operation had no effect.
    #[error("storage backend failed: {context}")]
    Backend {
        /// What was being done, as a verb phrase.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database's disk is full; the operation had no effect. Retrying after space is freed
    /// works.
    #[error("storage full: could not {context}; free disk space and retry")]
    StorageFull {
        /// What was being done, as a verb phrase.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database is busy or unreachable; retrying later may work.
    #[error("storage backend unavailable: {context}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// The shared classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => ErrorKind::NotFound,
            StoreError::Gone { .. } => ErrorKind::Gone,
            StoreError::AlreadyExists { .. } => ErrorKind::Conflict,
            StoreError::PreconditionFailed { .. } => ErrorKind::PreconditionFailed,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Forbidden(_) => ErrorKind::Forbidden,
            StoreError::Model(e) => e.kind(),
            StoreError::OpFailed { source, .. } => source.kind(),
            StoreError::LeaseLost { .. } => ErrorKind::Conflict,
            StoreError::JobNotFound { .. } => ErrorKind::NotFound,
            StoreError::TooManyJobs { .. } => ErrorKind::TooManyRequests,
            StoreError::Backend { .. } => ErrorKind::Internal,
            StoreError::Unavailable { .. } | StoreError::StorageFull { .. } => {
                ErrorKind::Unavailable
            }
        }
    }

    /// A backend failure with context.
    pub fn backend(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend { context: context.into(), source: Box::new(source) }
    }
}
