//! PostgreSQL errors as [`StoreError`]s: a lost connection, a full pool or a serialization
//! conflict is `Unavailable` (retry may work), a full disk is `StorageFull`, the rest `Backend`.

use bulkfhir_store::StoreError;
use tokio_postgres::error::SqlState;

/// Classifies a PostgreSQL error raised while doing `context` (a verb phrase).
pub(crate) fn pg_error(context: impl Into<String>, error: tokio_postgres::Error) -> StoreError {
    let context = context.into();
    let transient = error.is_closed()
        || matches!(
            error.code(),
            Some(
                &SqlState::T_R_SERIALIZATION_FAILURE
                    | &SqlState::T_R_DEADLOCK_DETECTED
                    | &SqlState::ADMIN_SHUTDOWN
                    | &SqlState::CANNOT_CONNECT_NOW
                    | &SqlState::TOO_MANY_CONNECTIONS
                    // The store's tables are gone: its schema was dropped (a tenant removed
                    // while this node served it, which it notices within seconds).
                    | &SqlState::UNDEFINED_TABLE
                    | &SqlState::INVALID_SCHEMA_NAME
            )
        )
        || std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>());
    if error.code() == Some(&SqlState::DISK_FULL) {
        StoreError::StorageFull { context, source: Box::new(error) }
    } else if transient {
        StoreError::Unavailable { context, source: Box::new(error) }
    } else {
        StoreError::backend(context, error)
    }
}

/// A connection could not be taken from the pool (the database is down or every connection
/// is busy past the wait timeout).
pub(crate) fn pool_error(context: &str, error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable {
        context: format!("{context}: no database connection"),
        source: Box::new(error),
    }
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
