use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use bulkfhir_model::{Instant, ResourceId, ResourceType};
use bulkfhir_store::{
    Atomicity, HistoryEntry, ResourceStore, ScanOptions, ScanPage, Snapshot, StoreError,
    StoredResource, WriteOp, WriteOutcome,
};
use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::{
    bulk::{self, BulkIndex},
    checkpoint::Checkpointer,
    schema,
};

/// `next_seq` of a version nothing has replaced.
const CURRENT: i64 = i64::MAX;

/// How many idle reader connections to keep.
const MAX_IDLE_READERS: usize = 8;
/// Initial capacity of a scan page's body buffer; it grows with the page (a compartment page
/// often holds a few resources, a full scan page a megabyte or more).
const PAGE_BUFFER_HINT: usize = 64 << 10;

/// The SQLite-backed store. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    checkpointer: Checkpointer,
    /// Set in bulk mode (`bulk.rs`); locked only while holding the writer.
    bulk: Mutex<Option<Bulk>>,
    /// Whether `bulk` is set, for readers: they must not wait on a lock the writer holds for a
    /// whole transaction.
    in_bulk_mode: AtomicBool,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`, as `data_dir/bulkfhir.sqlite`, and
    /// brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::backend(format!("create data directory {}", data_dir.display()), e)
        })?;
        let path = data_dir.join("bulkfhir.sqlite");
        let mut writer = open_connection(&path, false)?;
        schema::migrate(&mut writer).map_err(|e| sql_error("migrate the schema", e))?;
        if !bulk::has_key_index(&writer).map_err(|e| sql_error("look for the key index", e))? {
            repair_key_index(&writer, &path)?;
        }
        let writer = Arc::new(Mutex::new(writer));
        let checkpointer =
            Checkpointer::start(open_connection(&path, false)?, Arc::clone(&writer), &path)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path,
                writer,
                readers: Mutex::new(Vec::new()),
                checkpointer,
                bulk: Mutex::new(None),
                in_bulk_mode: AtomicBool::new(false),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` on a blocking thread with the writer connection.
    pub(crate) async fn with_writer<T, F>(
        &self,
        context: &'static str,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let result = work(&mut lock(&inner.writer));
            inner.checkpointer.nudge();
            result
        })
        .await
        .map_err(|e| StoreError::backend(context, e))?
    }

    /// Runs `work` on a blocking thread with a pooled reader connection.
    pub(crate) async fn with_reader<T, F>(
        &self,
        context: &'static str,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&inner.path, true)?,
            };
            let result = work(&conn);
            let mut idle = lock(&inner.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::backend(context, e))?
    }
}

/// Builds the key index a bulk load left out, unless that load is still running.
fn repair_key_index(writer: &Connection, path: &Path) -> Result<(), StoreError> {
    let lock = bulk::BulkLock::try_take(path)
        .map_err(|e| StoreError::backend("take the bulk-load lock", e))?;
    if lock.is_none() {
        tracing::warn!(
            "a bulk load is running on {}: writes are refused until it ends",
            path.display()
        );
        return Ok(());
    }
    let started = std::time::Instant::now();
    bulk::build_key_index(writer).map_err(|e| sql_error("build the key index", e))?;
    tracing::warn!(
        seconds = started.elapsed().as_secs_f64(),
        "a bulk load stopped before building its key index; built it now"
    );
    Ok(())
}

/// Bulk mode's state in the process that runs it.
#[derive(Debug)]
struct Bulk {
    index: BulkIndex,
    _lock: bulk::BulkLock,
}

/// Locks a mutex, recovering from poisoning: the guarded connection stays usable because every
/// write runs inside a transaction that rolls back when dropped.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_error(format!("open {}", path.display()), e))?;
    let pragmas = if read_only {
        // Readers stream in seq order and rarely revisit a page: a small cache is enough, and no
        // mmap, whose resident pages would count against the server's memory budget.
        "PRAGMA busy_timeout = 10000; PRAGMA cache_size = -8192; PRAGMA mmap_size = 0;"
    } else {
        // 16 KiB pages (set before WAL mode; an existing database keeps its own): an export
        // reads a quarter as many pages, and most resources fit in one page without overflow
        // chains. Measured on 1M generated resources: a full snapshot scan 1.3-1.4x faster than
        // with 4 KiB pages.
        "PRAGMA page_size = 16384;
         PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;
         PRAGMA wal_autocheckpoint = 16384; PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;"
    };
    conn.execute_batch(pragmas).map_err(|e| sql_error("configure the connection", e))?;
    // The query planner stability guarantee: plans never depend on bound values. Without it,
    // SQLite marks a parameter it looked at while planning (an equality the index does not
    // cover, `LIMIT ?`), and rusqlite's statement cache clears the bindings of each statement it
    // takes back, which makes SQLite parse and plan that statement again at its next use. The
    // point read of every write (`current`) was re-prepared once per resource: 15% of a load's
    // profile. Our plans never needed the values (`export_reads_use_their_indexes` checks them
    // with no statistics at all).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| sql_error("configure the connection", e))?;
    // Room for every statement a connection runs (scan variants, compartment, point reads,
    // job queries): re-parsing evicted statements showed up in export profiles.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub(crate) fn sql_error(context: impl Into<String>, error: rusqlite::Error) -> StoreError {
    let busy = matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    if busy {
        StoreError::Unavailable { context: context.into(), source: Box::new(error) }
    } else if error.sqlite_error_code() == Some(ErrorCode::DiskFull) {
        StoreError::StorageFull { context: context.into(), source: Box::new(error) }
    } else {
        StoreError::backend(context, error)
    }
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The newest version row of one resource.
pub(crate) struct Current {
    pub(crate) seq: i64,
    pub(crate) version: i64,
    pub(crate) deleted: bool,
    pub(crate) patients: Option<String>,
}

const CURRENT_SQL: &str = "SELECT seq, version, deleted, patients FROM resource_version
     WHERE rtype = ?1 AND id = ?2 ORDER BY version DESC LIMIT 1";

fn current(
    tx: &Connection,
    resource_type: ResourceType,
    id: &ResourceId,
) -> rusqlite::Result<Option<Current>> {
    tx.prepare_cached(CURRENT_SQL)?
        .query_row(params![resource_type.as_str(), id.as_str()], |row| {
            Ok(Current {
                seq: row.get(0)?,
                version: row.get(1)?,
                deleted: row.get(2)?,
                patients: row.get(3)?,
            })
        })
        .optional()
}

/// The shared state of one write transaction: its time and the last seq it used.
struct WriteClock {
    last_seq: i64,
    time: Instant,
}

impl WriteClock {
    /// Reads the last committed seq and picks a time after every earlier write and snapshot.
    fn start(tx: &Connection) -> rusqlite::Result<Self> {
        let (last_seq, last_time): (i64, i64) = tx
            .query_row(
                "SELECT seq, last_updated FROM resource_version ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0));
        let floor: i64 =
            tx.query_row("SELECT floor FROM clock WHERE id = 1", [], |row| row.get(0))?;
        let earliest = Instant::from_micros(last_time.max(floor)).next();
        Ok(WriteClock { last_seq, time: Instant::now().max(earliest) })
    }
}

/// How a write finds the current version of a resource.
enum Keys<'a> {
    /// The key index.
    Index,
    /// Bulk mode: the committed writes' map, and this transaction's writes.
    Bulk(&'a BulkIndex, &'a HashMap<(ResourceType, ResourceId), i64>),
}

impl Keys<'_> {
    fn current(
        &self,
        tx: &Connection,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> rusqlite::Result<Option<Current>> {
        match self {
            Keys::Index => current(tx, resource_type, id),
            Keys::Bulk(index, written) => index.current(tx, written, resource_type, id),
        }
    }
}

fn apply(
    tx: &Connection,
    clock: &WriteClock,
    keys: &Keys<'_>,
    op: &WriteOp,
) -> Result<WriteOutcome, StoreError> {
    let seq = clock.last_seq + 1;
    let sql = |e| sql_error("write a resource version", e);
    let check_if_match = |resource_type: ResourceType,
                          id: &ResourceId,
                          cur: &Option<Current>,
                          if_match: Option<u64>| {
        let current = cur.as_ref().map(|c| (to_u64(c.version), c.deleted));
        bulkfhir_store::check_if_match(resource_type, id, current, if_match)
    };
    match op {
        WriteOp::Create { resource, id } | WriteOp::Update { resource, id, .. } => {
            let resource_type = resource.resource_type();
            let cur = keys.current(tx, resource_type, id).map_err(sql)?;
            match op {
                WriteOp::Create { .. } if cur.is_some() => {
                    return Err(StoreError::AlreadyExists { resource_type, id: id.clone() });
                }
                WriteOp::Update { if_match, .. } => {
                    check_if_match(resource_type, id, &cur, *if_match)?
                }
                _ => {}
            }
            let version = cur.as_ref().map_or(1, |c| c.version + 1);
            let body = resource.stamp(id, to_u64(version), clock.time);
            let patients = resource.compartment_patients(id);
            let patients_text = (!patients.is_empty())
                .then(|| patients.iter().map(ResourceId::as_str).collect::<Vec<_>>().join(" "));
            insert_version(
                tx,
                seq,
                resource_type,
                id,
                version,
                clock.time,
                false,
                patients_text.as_deref(),
                Some(&body),
            )
            .map_err(sql)?;
            if let Some(c) = &cur {
                supersede(tx, c.seq, seq).map_err(sql)?;
            }
            Ok(WriteOutcome {
                resource_type,
                id: id.clone(),
                version: to_u64(version),
                last_updated: Some(clock.time),
                seq: Some(to_u64(seq)),
                created: cur.as_ref().is_none_or(|c| c.deleted),
                body: Some(Bytes::from(body)),
            })
        }
        WriteOp::Delete { resource_type, id, if_match } => {
            let cur = keys.current(tx, *resource_type, id).map_err(sql)?;
            check_if_match(*resource_type, id, &cur, *if_match)?;
            let nothing = |version: i64| WriteOutcome {
                resource_type: *resource_type,
                id: id.clone(),
                version: to_u64(version),
                last_updated: None,
                seq: None,
                created: false,
                body: None,
            };
            let Some(c) = cur else { return Ok(nothing(0)) };
            if c.deleted {
                return Ok(nothing(c.version));
            }
            let version = c.version + 1;
            insert_version(
                tx,
                seq,
                *resource_type,
                id,
                version,
                clock.time,
                true,
                c.patients.as_deref(),
                None,
            )
            .map_err(sql)?;
            supersede(tx, c.seq, seq).map_err(sql)?;
            Ok(WriteOutcome {
                resource_type: *resource_type,
                id: id.clone(),
                version: to_u64(version),
                last_updated: Some(clock.time),
                seq: Some(to_u64(seq)),
                created: false,
                body: None,
            })
        }
    }
}

const INSERT_VERSION_SQL: &str = "INSERT INTO resource_version
     (seq, rtype, id, version, last_updated, next_seq, deleted, patients, body)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const INSERT_COMPARTMENT_SQL: &str =
    "INSERT INTO compartment (patient_id, rtype, seq) VALUES (?1, ?2, ?3)";
const SUPERSEDE_SQL: &str = "UPDATE resource_version SET next_seq = ?2 WHERE seq = ?1";

#[allow(clippy::too_many_arguments)]
fn insert_version(
    tx: &Connection,
    seq: i64,
    resource_type: ResourceType,
    id: &ResourceId,
    version: i64,
    time: Instant,
    deleted: bool,
    patients: Option<&str>,
    body: Option<&[u8]>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(INSERT_VERSION_SQL)?.execute(params![
        seq,
        resource_type.as_str(),
        id.as_str(),
        version,
        time.as_micros(),
        CURRENT,
        deleted,
        patients,
        body
    ])?;
    if let Some(patients) = patients {
        let mut insert = tx.prepare_cached(INSERT_COMPARTMENT_SQL)?;
        for patient in patients.split(' ') {
            insert.execute(params![patient, resource_type.as_str(), seq])?;
        }
    }
    Ok(())
}

fn supersede(tx: &Connection, old_seq: i64, new_seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(SUPERSEDE_SQL)?.execute(params![old_seq, new_seq])?;
    Ok(())
}

fn transact_blocking(
    conn: &mut Connection,
    mut bulk: Option<&mut BulkIndex>,
    ops: Vec<WriteOp>,
    atomicity: Atomicity,
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    if atomicity == Atomicity::EachOnItsOwn {
        // Optimistic: a batch in which every op succeeds (a bulk load, nearly always) needs no
        // savepoint per op. If one fails, nothing was committed: redo it op by op.
        match run_transaction(conn, bulk.as_deref_mut(), &ops, Atomicity::AllOrNothing) {
            Err(StoreError::OpFailed { .. }) => {}
            done => return done,
        }
    }
    run_transaction(conn, bulk, &ops, atomicity)
}

fn run_transaction(
    conn: &mut Connection,
    bulk: Option<&mut BulkIndex>,
    ops: &[WriteOp],
    atomicity: Atomicity,
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let mut tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| sql_error("begin a write transaction", e))?;
    if bulk.is_none()
        && !bulk::has_key_index(&tx).map_err(|e| sql_error("look for the key index", e))?
    {
        return Err(StoreError::Unavailable {
            context:
                "write while another process loads in bulk mode (the key index is not built yet)"
                    .to_owned(),
            source: "retry when the load has ended".into(),
        });
    }
    let mut clock = WriteClock::start(&tx).map_err(|e| sql_error("read the write clock", e))?;
    let mut results = Vec::with_capacity(ops.len());
    // Bulk mode: this transaction's writes, for the ops after them and, once committed, the map.
    let mut written = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        let keys = match &bulk {
            Some(index) => Keys::Bulk(index, &written),
            None => Keys::Index,
        };
        let result = match atomicity {
            Atomicity::AllOrNothing => apply(&tx, &clock, &keys, op),
            Atomicity::EachOnItsOwn => {
                let savepoint = tx.savepoint().map_err(|e| sql_error("open a savepoint", e))?;
                let result = apply(&savepoint, &clock, &keys, op);
                if result.is_ok() {
                    savepoint.commit().map_err(|e| sql_error("release a savepoint", e))?;
                }
                result
            }
        };
        match result {
            Ok(outcome) => {
                if let Some(seq) = outcome.seq {
                    clock.last_seq += 1;
                    if bulk.is_some() {
                        written.insert((outcome.resource_type, outcome.id.clone()), to_i64(seq));
                    }
                }
                results.push(Ok(outcome));
            }
            Err(error) if atomicity == Atomicity::AllOrNothing => {
                // Dropping `tx` rolls everything back.
                return Err(StoreError::OpFailed { index, source: Box::new(error) });
            }
            Err(error) => results.push(Err(error)),
        }
    }
    tx.commit().map_err(|e| sql_error("commit a write transaction", e))?;
    if let Some(index) = bulk {
        index.commit(conn, written).map_err(|e| sql_error("record a bulk write", e))?;
    }
    Ok(results)
}

fn row_to_stored(
    resource_type: ResourceType,
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<StoredResource, StoreError>> {
    row_to_stored_opts(resource_type, row, false)
}

fn row_to_stored_opts(
    resource_type: ResourceType,
    row: &rusqlite::Row<'_>,
    with_patients: bool,
) -> rusqlite::Result<Result<StoredResource, StoreError>> {
    let mut body = Vec::new();
    Ok(decode_row(resource_type, row, with_patients, &mut body)?.map(|(mut stored, _)| {
        stored.body = Bytes::from(body);
        stored
    }))
}

/// Decodes one row of a query that selects `seq, id, version, last_updated, body, patients`
/// first, in this order (by index: a by-name lookup per column per row showed up in
/// profiles). The body is appended to `bodies` and its range returned; the resource's own
/// `body` is left empty for the caller to fill (a scan page slices one shared buffer).
fn decode_row(
    resource_type: ResourceType,
    row: &rusqlite::Row<'_>,
    with_patients: bool,
    bodies: &mut Vec<u8>,
) -> rusqlite::Result<Result<(StoredResource, std::ops::Range<usize>), StoreError>> {
    let seq: i64 = row.get(0)?;
    let id = match ResourceId::parse(row.get_ref(1)?.as_str()?) {
        Ok(id) => id,
        Err(e) => {
            return Ok(Err(StoreError::Invalid(format!("stored row {seq} has a bad id: {e}"))));
        }
    };
    let version: i64 = row.get(2)?;
    let last_updated: i64 = row.get(3)?;
    let start = bodies.len();
    if let Some(body) = row.get_ref(4)?.as_blob_or_null()? {
        bodies.extend_from_slice(body);
    }
    let patients: Option<String> = if with_patients { row.get(5)? } else { None };
    let stored = StoredResource {
        resource_type,
        id,
        version: to_u64(version),
        seq: to_u64(seq),
        last_updated: Instant::from_micros(last_updated),
        body: Bytes::new(),
        patients: patients.map(String::into_boxed_str),
    };
    Ok(Ok((stored, start..bodies.len())))
}

const READ_VERSION_SQL: &str = "SELECT seq, id, version, last_updated, body, patients, deleted
     FROM resource_version WHERE rtype = ?1 AND id = ?2 AND (?3 IS NULL OR version = ?3)
     ORDER BY version DESC LIMIT 1";

fn read_version(
    conn: &Connection,
    resource_type: ResourceType,
    id: &ResourceId,
    version: Option<u64>,
) -> Result<StoredResource, StoreError> {
    let sql = |e| sql_error("read a resource", e);
    let mut statement = conn.prepare_cached(READ_VERSION_SQL).map_err(sql)?;
    let row = statement
        .query_row(params![resource_type.as_str(), id.as_str(), version.map(to_i64)], |row| {
            let deleted: bool = row.get(6)?;
            Ok((deleted, row_to_stored(resource_type, row)?))
        })
        .optional()
        .map_err(sql)?;
    match (row, version) {
        (None, Some(version)) => {
            let exists: Option<i64> = conn
                .prepare_cached(
                    "SELECT 1 FROM resource_version WHERE rtype = ?1 AND id = ?2 LIMIT 1",
                )
                .map_err(sql)?
                .query_row(params![resource_type.as_str(), id.as_str()], |row| row.get(0))
                .optional()
                .map_err(sql)?;
            Err(match exists {
                Some(_) => StoreError::VersionNotFound { resource_type, id: id.clone(), version },
                None => StoreError::NotFound { resource_type, id: id.clone() },
            })
        }
        (None, None) => Err(StoreError::NotFound { resource_type, id: id.clone() }),
        (Some((true, stored)), _) => {
            let stored = stored?;
            Err(StoreError::Gone { resource_type, id: id.clone(), version: stored.version })
        }
        (Some((false, stored)), _) => stored,
    }
}

fn collect_page(
    statement: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    resource_type: ResourceType,
    options: &ScanOptions,
) -> Result<ScanPage, StoreError> {
    let sql = |e| sql_error("scan resources", e);
    let limit = options.limit;
    // The bodies of a page go into one buffer that every resource slices: one allocation per
    // page instead of one per row (per-row allocation showed up in export profiles).
    let mut bodies: Vec<u8> = Vec::with_capacity(PAGE_BUFFER_HINT);
    let mut rows_read: Vec<(StoredResource, std::ops::Range<usize>)> =
        Vec::with_capacity(limit.min(4096));
    let mut rows = statement.query(params).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        rows_read.push(
            decode_row(resource_type, row, options.with_patients, &mut bodies).map_err(sql)??,
        );
    }
    Ok(ScanPage::assemble(rows_read, bodies, limit))
}

/// A type's versions live (or, with `deleted`, deleted) as of snapshot `?3`, in a key range:
/// `seq` in `(?2, ?5)`, at most `?4`; walks the `resource_version_scan` index.
fn scan_sql(deleted: bool, in_any_compartment: bool) -> String {
    format!(
        "SELECT seq, id, version, last_updated, body, patients FROM resource_version
         WHERE rtype = ?1 AND seq > ?2 AND seq <= ?3 AND seq < ?5 AND next_seq > ?3
           AND deleted = {}{}
         ORDER BY seq LIMIT ?4",
        u8::from(deleted),
        if in_any_compartment { " AND patients IS NOT NULL" } else { "" },
    )
}

/// Patient `?1`'s compartment for type `?2` as of snapshot `?4`, after `seq` `?3`, at most
/// `?5`; walks the `compartment` primary key.
fn compartment_sql(deleted: bool) -> String {
    format!(
        "SELECT v.seq AS seq, v.id AS id, v.version AS version,
                v.last_updated AS last_updated, v.body AS body, v.patients AS patients
         FROM compartment c JOIN resource_version v ON v.seq = c.seq
         WHERE c.patient_id = ?1 AND c.rtype = ?2 AND c.seq > ?3 AND c.seq <= ?4
           AND v.next_seq > ?4 AND v.deleted = {}
         ORDER BY c.seq LIMIT ?5",
        u8::from(deleted)
    )
}

/// How many versions of type `?1` have a `seq` in `(?2, ?3]`, at most `?4`: read from the
/// covering `resource_version_scan` index alone, no row.
const COUNT_VERSIONS_SQL: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM resource_version
     WHERE rtype = ?1 AND seq > ?2 AND seq <= ?3 LIMIT ?4)";

/// Resource `?1`/`?2` as of snapshot `?3`, if live. `INDEXED BY`: without statistics the
/// planner took the `seq <= ?3` range of the scan index, reading every version of the type
/// per id (a Group kick-off of 268 members took 200-300 ms instead of 7 ms).
const READ_AS_OF_SQL: &str = "SELECT seq, id, version, last_updated, body, patients
     FROM resource_version INDEXED BY resource_version_key
     WHERE rtype = ?1 AND id = ?2 AND seq <= ?3 AND next_seq > ?3 AND deleted = 0";
/// [`READ_AS_OF_SQL`] in bulk mode, when the key index is not there.
const READ_AS_OF_BULK_SQL: &str = "SELECT seq, id, version, last_updated, body, patients
     FROM resource_version
     WHERE rtype = ?1 AND id = ?2 AND seq <= ?3 AND next_seq > ?3 AND deleted = 0";

/// One page of a type's versions, from `options.after_seq` (see [`ResourceStore::scan`]).
fn scan_blocking(
    conn: &Connection,
    snapshot: Snapshot,
    resource_type: ResourceType,
    options: &ScanOptions,
) -> Result<ScanPage, StoreError> {
    let sql = scan_sql(options.deleted, options.in_any_compartment);
    let mut statement = conn.prepare_cached(&sql).map_err(|e| sql_error("scan resources", e))?;
    collect_page(
        &mut statement,
        params![
            resource_type.as_str(),
            to_i64(options.after_seq),
            to_i64(snapshot.seq),
            to_i64(options.limit as u64),
            to_i64(options.before_seq)
        ],
        resource_type,
        options,
    )
}

/// One patient's compartment for one type, from `options.after_seq` (see
/// [`ResourceStore::scan_compartment`]).
fn scan_compartment_blocking(
    conn: &Connection,
    snapshot: Snapshot,
    patient: &ResourceId,
    resource_type: ResourceType,
    options: &ScanOptions,
) -> Result<ScanPage, StoreError> {
    let sql = compartment_sql(options.deleted);
    let mut statement =
        conn.prepare_cached(&sql).map_err(|e| sql_error("scan a patient compartment", e))?;
    collect_page(
        &mut statement,
        params![
            patient.as_str(),
            resource_type.as_str(),
            to_i64(options.after_seq),
            to_i64(snapshot.seq),
            to_i64(options.limit as u64)
        ],
        resource_type,
        options,
    )
}

#[async_trait]
impl ResourceStore for EmbeddedStore {
    async fn transact(
        &self,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        self.with_writer("run a write transaction", move |conn| {
            let mut bulk = lock(&inner.bulk);
            transact_blocking(conn, bulk.as_mut().map(|b| &mut b.index), ops, atomicity)
        })
        .await
    }

    async fn read(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredResource, StoreError> {
        let id = id.clone();
        self.with_reader("read a resource", move |conn| {
            read_version(conn, resource_type, &id, None)
        })
        .await
    }

    async fn vread(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        version: u64,
    ) -> Result<StoredResource, StoreError> {
        let id = id.clone();
        self.with_reader("read a resource version", move |conn| {
            read_version(conn, resource_type, &id, Some(version))
        })
        .await
    }

    async fn history(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let id = id.clone();
        self.with_reader("read a resource history", move |conn| {
            let sql = |e| sql_error("read a resource history", e);
            let mut statement = conn
                .prepare_cached(
                    "SELECT version, last_updated, deleted, body FROM resource_version
                     WHERE rtype = ?1 AND id = ?2 ORDER BY version DESC LIMIT ?3",
                )
                .map_err(sql)?;
            let entries = statement
                .query_map(
                    params![resource_type.as_str(), id.as_str(), to_i64(limit as u64)],
                    |row| {
                        let deleted: bool = row.get(2)?;
                        let body: Option<Vec<u8>> = row.get(3)?;
                        Ok(HistoryEntry {
                            version: to_u64(row.get(0)?),
                            last_updated: Instant::from_micros(row.get(1)?),
                            body: if deleted { None } else { body.map(Bytes::from) },
                        })
                    },
                )
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            if entries.is_empty() && limit > 0 {
                return Err(StoreError::NotFound { resource_type, id: id.clone() });
            }
            Ok(entries)
        })
        .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.with_writer("take a snapshot", |conn| {
            let sql = |e| sql_error("take a snapshot", e);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            let clock = WriteClock::start(&tx).map_err(sql)?;
            // `clock.time` is after every committed write; no later write may share it.
            tx.execute("UPDATE clock SET floor = ?1 WHERE id = 1", params![clock.time.as_micros()])
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(Snapshot { seq: to_u64(clock.last_seq), time: clock.time })
        })
        .await
    }

    async fn scan(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError> {
        self.with_reader("scan resources", move |conn| {
            scan_blocking(conn, snapshot, resource_type, &options)
        })
        .await
    }

    async fn scan_compartment(
        &self,
        snapshot: Snapshot,
        patient: &ResourceId,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError> {
        let patient = patient.clone();
        self.with_reader("scan a patient compartment", move |conn| {
            scan_compartment_blocking(conn, snapshot, &patient, resource_type, &options)
        })
        .await
    }

    async fn scan_compartments(
        &self,
        snapshot: Snapshot,
        patients: &[ResourceId],
        resource_type: ResourceType,
        options: ScanOptions,
        restart_after: u64,
    ) -> Result<Vec<ScanPage>, StoreError> {
        // One blocking call for the whole batch: most members have a handful of resources of
        // a type, so a round trip per member cost more than the query.
        let patients = patients.to_vec();
        self.with_reader("scan patient compartments", move |conn| {
            let mut pages = Vec::new();
            let mut budget = options.limit.max(1);
            for (index, patient) in patients.iter().enumerate() {
                let after_seq = if index == 0 { options.after_seq } else { restart_after };
                let page_options = ScanOptions { after_seq, limit: budget, ..options };
                let page = scan_compartment_blocking(
                    conn,
                    snapshot,
                    patient,
                    resource_type,
                    &page_options,
                )?;
                budget = budget.saturating_sub(page.resources.len());
                let full = page.next.is_some() || budget == 0;
                pages.push(page);
                if full {
                    break;
                }
            }
            Ok(pages)
        })
        .await
    }

    async fn read_many_at(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        ids: &[ResourceId],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let ids = ids.to_vec();
        let query = if self.inner.in_bulk_mode.load(Ordering::Acquire) {
            READ_AS_OF_BULK_SQL
        } else {
            READ_AS_OF_SQL
        };
        self.with_reader("read resources as of a snapshot", move |conn| {
            let sql = |e| sql_error("read resources as of a snapshot", e);
            let mut statement = conn.prepare_cached(query).map_err(sql)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                let found = statement
                    .query_row(
                        params![resource_type.as_str(), id.as_str(), to_i64(snapshot.seq)],
                        |row| row_to_stored_opts(resource_type, row, true),
                    )
                    .optional()
                    .map_err(sql)?;
                if let Some(stored) = found {
                    out.push(stored?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn seq_bounds(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        self.with_reader("find the key range of a type", move |conn| {
            let sql = |e| sql_error("find the key range of a type", e);
            // Two statements: SQLite answers a lone MIN or MAX from the index in O(log n).
            let bound = |query: &str| -> Result<Option<i64>, StoreError> {
                conn.prepare_cached(query)
                    .map_err(sql)?
                    .query_row(params![resource_type.as_str(), to_i64(snapshot.seq)], |row| {
                        row.get(0)
                    })
                    .map_err(sql)
            };
            let low =
                bound("SELECT MIN(seq) FROM resource_version WHERE rtype = ?1 AND seq <= ?2")?;
            let high =
                bound("SELECT MAX(seq) FROM resource_version WHERE rtype = ?1 AND seq <= ?2")?;
            Ok(low.zip(high).map(|(low, high)| (to_u64(low), to_u64(high))))
        })
        .await
    }

    async fn count_versions(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        after_seq: u64,
        at_most: u64,
    ) -> Result<u64, StoreError> {
        self.with_reader("count the versions of a type", move |conn| {
            let count: i64 = conn
                .prepare_cached(COUNT_VERSIONS_SQL)
                .and_then(|mut statement| {
                    statement.query_row(
                        params![
                            resource_type.as_str(),
                            to_i64(after_seq),
                            to_i64(snapshot.seq),
                            to_i64(at_most)
                        ],
                        |row| row.get(0),
                    )
                })
                .map_err(|e| sql_error("count the versions of a type", e))?;
            Ok(to_u64(count))
        })
        .await
    }

    async fn begin_bulk_load(&self) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.with_writer("enter bulk mode", move |conn| {
            let mut bulk = lock(&inner.bulk);
            if bulk.is_some() {
                return Ok(true);
            }
            let path = inner.path.clone();
            let Some(lock) = bulk::BulkLock::try_take(&path)
                .map_err(|e| StoreError::backend("take the bulk-load lock", e))?
            else {
                return Ok(false);
            };
            if !bulk::drop_key_index_if_empty(conn).map_err(|e| sql_error("enter bulk mode", e))? {
                return Ok(false);
            }
            *bulk = Some(Bulk { index: BulkIndex::default(), _lock: lock });
            inner.in_bulk_mode.store(true, Ordering::Release);
            Ok(true)
        })
        .await
    }

    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        self.with_writer("leave bulk mode", move |conn| {
            let mut bulk = lock(&inner.bulk);
            if bulk.is_none() {
                return Ok(());
            }
            let started = std::time::Instant::now();
            bulk::build_key_index(conn).map_err(|e| sql_error("build the key index", e))?;
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "built the key index");
            // The map, and then the lock: the index is there for whoever opens the store next.
            inner.in_bulk_mode.store(false, Ordering::Release);
            *bulk = None;
            Ok(())
        })
        .await
    }

    async fn seq_at(&self, time: Instant) -> Result<u64, StoreError> {
        self.with_reader("find the sequence number of an instant", move |conn| {
            let sql = |e| sql_error("find the sequence number of an instant", e);
            // Sequence numbers are contiguous from 1 and lastUpdated never decreases with seq,
            // so a binary search over seq finds the last write at or before `time`.
            let max_seq: i64 = conn
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM resource_version", [], |row| {
                    row.get(0)
                })
                .map_err(sql)?;
            let mut time_of = conn
                .prepare_cached("SELECT last_updated FROM resource_version WHERE seq = ?1")
                .map_err(sql)?;
            let (mut lo, mut hi) = (0i64, max_seq);
            while lo < hi {
                let mid = lo + (hi - lo + 1) / 2;
                let at: i64 = time_of.query_row(params![mid], |row| row.get(0)).map_err(sql)?;
                if at <= time.as_micros() { lo = mid } else { hi = mid - 1 }
            }
            Ok(to_u64(lo))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = statement.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("\n")
    }

    /// Every export read walks the index it was written for, on a fresh database (no
    /// statistics): a wrong choice turns a point read into a scan of a whole type.
    #[test]
    fn export_reads_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let conn = open_connection(store.path(), true).unwrap();
        let point = plan(&conn, READ_AS_OF_SQL);
        assert!(point.contains("INDEX resource_version_key (rtype=? AND id=?)"), "{point}");
        for (deleted, in_any_compartment) in [(false, false), (false, true), (true, false)] {
            let scan = plan(&conn, &scan_sql(deleted, in_any_compartment));
            assert!(
                scan.contains("INDEX resource_version_scan (rtype=? AND seq>? AND seq<?)"),
                "{scan}"
            );
            assert!(!scan.contains("TEMP B-TREE"), "no sort: {scan}");
        }
        let compartment = plan(&conn, &compartment_sql(false));
        assert!(
            compartment.contains(
                "SEARCH c USING PRIMARY KEY (patient_id=? AND rtype=? AND seq>? AND seq<?)"
            ),
            "{compartment}"
        );
        assert!(
            compartment.contains("SEARCH v USING INTEGER PRIMARY KEY (rowid=?)"),
            "{compartment}"
        );
        assert!(!compartment.contains("TEMP B-TREE"), "no sort: {compartment}");
        let count = plan(&conn, COUNT_VERSIONS_SQL);
        assert!(
            count.contains(
                "USING COVERING INDEX resource_version_scan (rtype=? AND seq>? AND seq<?)"
            ),
            "counted from the index alone: {count}"
        );
    }

    /// Cached statements are planned once per connection, not once per use: see the query
    /// planner stability guarantee in `open_connection`.
    #[test]
    fn cached_statements_are_not_prepared_again_at_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut conn = lock(&store.inner.writer);
        let observation = ResourceType::parse("Observation").unwrap();
        let id = |i: usize| ResourceId::parse(&format!("o{i}")).unwrap();
        let ops = |round: usize| -> Vec<WriteOp> {
            (0..40)
                .map(|i| {
                    let json = format!(
                        r#"{{"resourceType":"Observation","id":"o{i}","status":"final","subject":{{"reference":"Patient/p{}"}},"valueInteger":{round}}}"#,
                        i % 7
                    );
                    WriteOp::Update {
                        resource: bulkfhir_model::PreparedResource::parse(json.as_bytes()).unwrap(),
                        id: id(i),
                        if_match: None,
                    }
                })
                .collect()
        };
        for round in 0..3 {
            let results =
                transact_blocking(&mut conn, None, ops(round), Atomicity::AllOrNothing).unwrap();
            assert!(results.iter().all(Result::is_ok));
        }
        let snapshot = Snapshot { seq: 120, time: Instant::now() };
        for i in 0..7 {
            let patient = ResourceId::parse(&format!("p{i}")).unwrap();
            let page = scan_compartment_blocking(
                &conn,
                snapshot,
                &patient,
                observation,
                &ScanOptions::live(0, 100),
            )
            .unwrap();
            assert!(!page.resources.is_empty());
            let after_seq = 10 * i as u64;
            let page =
                scan_blocking(&conn, snapshot, observation, &ScanOptions::live(after_seq, 5))
                    .unwrap();
            assert_eq!(page.resources.len(), 5);
            read_version(&conn, observation, &id(i), None).unwrap();
            let mut as_of = conn.prepare_cached(READ_AS_OF_SQL).unwrap();
            let found = as_of
                .query_row(params![observation.as_str(), id(i).as_str(), 120], |_| Ok(()))
                .optional()
                .unwrap();
            assert!(found.is_some());
        }
        let compartment = compartment_sql(false);
        let scan = scan_sql(false, false);
        for sql in [
            CURRENT_SQL,
            INSERT_VERSION_SQL,
            INSERT_COMPARTMENT_SQL,
            SUPERSEDE_SQL,
            READ_VERSION_SQL,
            READ_AS_OF_SQL,
            compartment.as_str(),
            scan.as_str(),
        ] {
            let statement = conn.prepare_cached(sql).unwrap();
            let runs = statement.get_status(rusqlite::StatementStatus::Run);
            assert!(runs >= 7, "{runs} runs of {sql}");
            let again = statement.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(again, 0, "{sql}: prepared again {again} times in {runs} runs");
        }
    }

    /// Bulk mode keeps every method's contract: the whole store suite, with the map alone and
    /// with every resource's hash colliding (so each lookup goes through the collision map).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_mode_passes_the_store_suite_even_when_every_hash_collides() {
        for collide_all in [false, true] {
            for (name, test) in bulkfhir_store::testsuite::ALL {
                let dir = tempfile::tempdir().unwrap();
                let store = EmbeddedStore::open(dir.path()).unwrap();
                assert!(store.begin_bulk_load().await.unwrap(), "an empty store goes bulk");
                if let Some(bulk) = lock(&store.inner.bulk).as_mut() {
                    bulk.index.collide_all = collide_all;
                }
                eprintln!("bulk mode (collide_all = {collide_all}): {name}");
                test(Arc::new(store.clone())).await;
                store.end_bulk_load().await.unwrap();
                let conn = open_connection(store.path(), true).unwrap();
                assert!(bulk::has_key_index(&conn).unwrap(), "{name}: the index is back");
            }
        }
    }

    fn observation(id: &str) -> WriteOp {
        let json = format!(r#"{{"resourceType":"Observation","id":"{id}","status":"final"}}"#);
        WriteOp::Update {
            resource: bulkfhir_model::PreparedResource::parse(json.as_bytes()).unwrap(),
            id: ResourceId::parse(id).unwrap(),
            if_match: None,
        }
    }

    /// A bulk load that dies before building its index (here: dropped) leaves its committed
    /// writes, and the next store to open builds the index; while a bulk load runs, another
    /// store on the same file (another process) reads but does not write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_load_killed_before_its_index_leaves_it_to_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let observation_type = ResourceType::parse("Observation").unwrap();
        let loading = EmbeddedStore::open(dir.path()).unwrap();
        assert!(loading.begin_bulk_load().await.unwrap());
        let ops = (0..30).map(|i| observation(&format!("o{i}"))).collect();
        let written = loading.transact(ops, Atomicity::EachOnItsOwn).await.unwrap();
        assert!(written.iter().all(Result::is_ok));

        let other = EmbeddedStore::open(dir.path()).unwrap();
        let conn = open_connection(other.path(), true).unwrap();
        assert!(!bulk::has_key_index(&conn).unwrap(), "left alone while the load runs");
        let refused = other.transact(vec![observation("x")], Atomicity::AllOrNothing).await;
        assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
        let read = other.read(observation_type, &ResourceId::parse("o7").unwrap()).await.unwrap();
        assert_eq!(read.version, 1);
        drop(other);

        drop(loading); // killed: the lock goes with the process, the index was never built
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        let conn = open_connection(reopened.path(), true).unwrap();
        assert!(bulk::has_key_index(&conn).unwrap(), "built at open");
        let again = reopened.transact(vec![observation("o7")], Atomicity::AllOrNothing).await;
        assert_eq!(again.unwrap()[0].as_ref().unwrap().version, 2, "o7 was found through it");
        assert!(!reopened.begin_bulk_load().await.unwrap(), "a store with data stays as it is");
        assert!(bulk::has_key_index(&conn).unwrap());
    }

    /// A load often holds the same resource twice, even in one batch: the later line is its
    /// next version, in bulk mode as with the index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_mode_versions_a_resource_written_twice_in_one_batch() {
        let observation_type = ResourceType::parse("Observation").unwrap();
        for collide_all in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            assert!(store.begin_bulk_load().await.unwrap());
            if let Some(bulk) = lock(&store.inner.bulk).as_mut() {
                bulk.index.collide_all = collide_all;
            }
            let delete = |id: &str| WriteOp::Delete {
                resource_type: observation_type,
                id: ResourceId::parse(id).unwrap(),
                if_match: None,
            };
            let batch = vec![
                observation("a"),
                observation("b"),
                observation("a"),
                delete("b"),
                observation("b"),
                observation("a"),
            ];
            let versions: Vec<u64> = store
                .transact(batch, Atomicity::EachOnItsOwn)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap().version)
                .collect();
            assert_eq!(versions, [1, 1, 2, 2, 3, 3], "collide_all = {collide_all}");
            let next = store.transact(vec![observation("b")], Atomicity::AllOrNothing).await;
            assert_eq!(next.unwrap()[0].as_ref().unwrap().version, 4, "across batches");
            store.end_bulk_load().await.unwrap();
            let a = store.read(observation_type, &ResourceId::parse("a").unwrap()).await;
            assert_eq!(a.unwrap().version, 3);
        }
    }
}
