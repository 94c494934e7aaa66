//! The database schema and its migrations (`PRAGMA user_version` counts applied steps).

use rusqlite::Connection;

/// Each step runs once, in order, inside one transaction with the version bump.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE resource_version (
    seq          INTEGER PRIMARY KEY,      -- global write sequence; never reused
    rtype        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,         -- meta.versionId, from 1 per resource
    last_updated INTEGER NOT NULL,         -- meta.lastUpdated, microseconds since the epoch
    next_seq     INTEGER NOT NULL,         -- seq of the version that replaced this one, or i64::MAX
    deleted      INTEGER NOT NULL,         -- 1 for a tombstone (body is NULL)
    patients     TEXT,                     -- compartment patient ids, space-separated
    body         BLOB                      -- the exact stored JSON, meta stamped
);
CREATE UNIQUE INDEX resource_version_key ON resource_version (rtype, id, version);
CREATE INDEX resource_version_scan ON resource_version (rtype, seq);
CREATE TABLE compartment (
    patient_id TEXT    NOT NULL,
    rtype      TEXT    NOT NULL,
    seq        INTEGER NOT NULL,           -- the version row that is in the compartment
    PRIMARY KEY (patient_id, rtype, seq)
) WITHOUT ROWID;
CREATE TABLE clock (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    floor INTEGER NOT NULL                 -- writes after a snapshot get a later lastUpdated
);
INSERT INTO clock (id, floor) VALUES (1, 0);
"#,
    r#"
CREATE TABLE export_job (
    id               TEXT PRIMARY KEY,
    status           TEXT    NOT NULL,     -- accepted | in-progress | completed | error | cancelled
    requester        TEXT,
    request          TEXT    NOT NULL,     -- engine JSON
    plan             TEXT    NOT NULL,     -- engine JSON
    request_time     INTEGER NOT NULL,
    snapshot_seq     INTEGER NOT NULL,
    snapshot_time    INTEGER NOT NULL,
    progress_percent INTEGER NOT NULL DEFAULT 0,
    progress_text    TEXT    NOT NULL DEFAULT '',
    manifest         TEXT,
    error_message    TEXT,
    finished_at      INTEGER,
    expires_at       INTEGER,
    files_deleted    INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires    INTEGER
);
CREATE INDEX export_job_status ON export_job (status, id);
CREATE TABLE export_unit (
    job_id     TEXT    NOT NULL,
    idx        INTEGER NOT NULL,
    spec       TEXT    NOT NULL,           -- engine JSON
    checkpoint TEXT,                       -- engine JSON
    done       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE export_manifest_page (
    job_id  TEXT    NOT NULL,
    page_no INTEGER NOT NULL,              -- from 1
    page    TEXT    NOT NULL,              -- engine JSON; never changes once written
    PRIMARY KEY (job_id, page_no)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE auth_client (
    id       TEXT    PRIMARY KEY,
    name     TEXT    NOT NULL,
    jwks     TEXT,                         -- JWKS JSON, when registered inline
    jwks_url TEXT,                         -- HTTPS URL, when registered by reference
    scope    TEXT    NOT NULL,             -- space-separated SMART scopes
    created  INTEGER NOT NULL              -- µs since the epoch
) WITHOUT ROWID;
CREATE TABLE auth_jti (
    client  TEXT    NOT NULL,
    jti     TEXT    NOT NULL,
    expires INTEGER NOT NULL,              -- µs since the epoch
    PRIMARY KEY (client, jti)
) WITHOUT ROWID;
CREATE INDEX auth_jti_expires ON auth_jti (expires);
"#,
    r#"
ALTER TABLE export_unit ADD COLUMN lease_owner TEXT;      -- the runner running (or that ran) it
ALTER TABLE export_unit ADD COLUMN lease_expires INTEGER; -- µs since the epoch
"#,
];

/// Applies the migrations this database has not seen yet.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(applied).unwrap_or(0)) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", step as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
