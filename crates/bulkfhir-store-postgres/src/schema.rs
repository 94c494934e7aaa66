//! The database schema and its versioned migrations, applied at start.
//!
//! `schema_version` counts applied steps. Every node runs [`migrate`] when it starts; an
//! advisory lock makes the nodes take turns, so two that start together apply each step once.

use tokio_postgres::Client;

use crate::error::pg_error;
use bulkfhir_store::StoreError;

/// The advisory lock key that serializes migrations ("bulkfhir" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x6275_6c6b_6668_6972;

/// Each step runs once, in order, inside one transaction with the version bump. Text columns
/// use the "C" collation: ids and type names compare as bytes, as on SQLite, and faster.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE resource_version (
    seq          bigint  NOT NULL,         -- global write sequence, contiguous from 1, unique
    rtype        text    COLLATE "C" NOT NULL,
    id           text    COLLATE "C" NOT NULL,
    version      bigint  NOT NULL,         -- meta.versionId, from 1 per resource
    last_updated bigint  NOT NULL,         -- meta.lastUpdated, microseconds since the epoch
    next_seq     bigint  NOT NULL,         -- seq of the version that replaced this one, or i64::MAX
    deleted      boolean NOT NULL,         -- a tombstone (body is NULL)
    patients     text    COLLATE "C",      -- compartment patient ids, space-separated
    body         bytea,                    -- the exact stored JSON, meta stamped (not jsonb)
    PRIMARY KEY (rtype, id, version)
);
-- Bodies stay inline and uncompressed up to a page (most resources are 1-8 KB): no pglz on
-- write or read, and no TOAST lookup per row on a scan; larger ones go out of line uncompressed.
ALTER TABLE resource_version SET (toast_tuple_target = 8160);
ALTER TABLE resource_version ALTER COLUMN body SET STORAGE EXTERNAL;
-- seq has a hash index (point lookups: compartment rows, superseded versions, `_since`), not a
-- B-tree: with one, the planner walked all versions in seq order filtering by type when it
-- guessed a type's rows were spread evenly (800 ms for the first page of a type loaded last),
-- instead of the (rtype, seq) index below. seq is unique because it is handed out under the
-- clock lock.
CREATE INDEX resource_version_seq ON resource_version USING hash (seq);
CREATE INDEX resource_version_scan ON resource_version (rtype, seq);
CREATE TABLE compartment (
    patient_id text   COLLATE "C" NOT NULL,
    rtype      text   COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,            -- the version row that is in the compartment
    PRIMARY KEY (patient_id, rtype, seq)
);
-- The one row every write transaction locks first: it serializes the assignment of seq, so
-- seq order is commit order (see ARCHITECTURE.md, "Snapshots on PostgreSQL").
CREATE TABLE clock (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_seq  bigint  NOT NULL,            -- the highest committed seq
    last_time bigint  NOT NULL,            -- its lastUpdated
    floor     bigint  NOT NULL             -- writes after a snapshot get a later lastUpdated
);
INSERT INTO clock (id, last_seq, last_time, floor) VALUES (1, 0, 0, 0);
CREATE TABLE export_job (
    id               text    COLLATE "C" PRIMARY KEY,
    status           text    NOT NULL,     -- accepted | in-progress | completed | error | cancelled
    requester        text,
    request          text    NOT NULL,     -- engine JSON
    plan             text    NOT NULL,     -- engine JSON
    request_time     bigint  NOT NULL,
    snapshot_seq     bigint  NOT NULL,
    snapshot_time    bigint  NOT NULL,
    progress_percent integer NOT NULL DEFAULT 0,
    progress_text    text    NOT NULL DEFAULT '',
    manifest         text,
    error_message    text,
    finished_at      bigint,
    expires_at       bigint,
    files_deleted    boolean NOT NULL DEFAULT false,
    lease_owner      text,
    lease_expires    bigint
);
CREATE INDEX export_job_status ON export_job (status, id);
CREATE TABLE export_unit (
    job_id     text    COLLATE "C" NOT NULL,
    idx        integer NOT NULL,
    spec       text    NOT NULL,           -- engine JSON
    checkpoint text,                       -- engine JSON
    done       boolean NOT NULL DEFAULT false,
    lease_owner   text,                    -- the runner running (or that ran) it, on any node
    lease_expires bigint,                  -- µs since the epoch
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE export_manifest_page (
    job_id  text    COLLATE "C" NOT NULL,
    page_no integer NOT NULL,              -- from 1
    page    text    NOT NULL,              -- engine JSON; never changes once written
    PRIMARY KEY (job_id, page_no)
);
CREATE TABLE auth_client (
    id       text   COLLATE "C" PRIMARY KEY,
    name     text   NOT NULL,
    jwks     text,                         -- JWKS JSON, when registered inline
    jwks_url text,                         -- HTTPS URL, when registered by reference
    scope    text   NOT NULL,              -- space-separated SMART scopes
    created  bigint NOT NULL               -- µs since the epoch
);
CREATE TABLE auth_jti (
    client  text   COLLATE "C" NOT NULL,
    jti     text   COLLATE "C" NOT NULL,
    expires bigint NOT NULL,               -- µs since the epoch
    PRIMARY KEY (client, jti)
);
CREATE INDEX auth_jti_expires ON auth_jti (expires);
-- Secrets every node needs alike (the key that signs access tokens), made by the first node.
CREATE TABLE shared_secret (
    name  text  COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
"#];

/// Applies the migrations this database has not seen yet.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let sql = |e| pg_error("migrate the schema", e);
    let tx = client.transaction().await.map_err(sql)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(sql)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        .await
        .map_err(sql)?;
    let applied: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0)::bigint FROM schema_version", &[])
        .await
        .map_err(sql)?
        .get(0);
    for (step, text) in MIGRATIONS.iter().enumerate().skip(usize::try_from(applied).unwrap_or(0)) {
        tx.batch_execute(text).await.map_err(sql)?;
        let version = i32::try_from(step + 1).unwrap_or(i32::MAX);
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version])
            .await
            .map_err(sql)?;
        tracing::info!(version, "applied PostgreSQL schema migration");
    }
    if usize::try_from(applied).unwrap_or(0) > MIGRATIONS.len() {
        return Err(StoreError::Invalid(format!(
            "the database's schema is version {applied}, newer than this bulkfhir knows ({}); \
             run a newer bulkfhir",
            MIGRATIONS.len()
        )));
    }
    tx.commit().await.map_err(sql)
}
