//! [`ResourceStore`] on PostgreSQL: the same layout as the embedded store (`resource_version`
//! keyed by `seq`, with `next_seq`; `compartment`), so a snapshot read is the same range filter
//! `seq <= S AND next_seq > S`.
//!
//! A write transaction first locks the one `clock` row, which holds the highest committed `seq`.
//! Sequence numbers are therefore handed out one transaction at a time, in commit order, and
//! contiguous: a snapshot (taken under the same lock) that says "every version with
//! `seq <= S`" can never later gain a row below `S` from a writer that was still in flight.
//! The ops of a call are planned in memory against the current versions of the ids they touch
//! (one query for all of them), then written with binary `COPY`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use bulkfhir_model::{Instant, ResourceId, ResourceType};
use bulkfhir_store::{
    Atomicity, HistoryEntry, ResourceStore, ScanOptions, ScanPage, Snapshot, StoreError,
    StoredResource, WriteOp, WriteOutcome,
};
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures::pin_mut;
use tokio_postgres::{Row, Transaction, binary_copy::BinaryCopyInWriter, types::Type};

use crate::tls::{DatabaseUrl, parse_url};

use crate::{
    error::{pg_error, pool_error, to_i64, to_u64},
    schema,
};

/// `next_seq` of a version nothing has replaced.
const CURRENT: i64 = i64::MAX;
/// Connections per node: HTTP handlers, export units and the job runner share them.
const POOL_SIZE: usize = 24;
/// Compartment queries sent together (pipelined on one connection) for a Group's members.
const COMPARTMENT_PIPELINE: usize = 64;

/// How write transactions get their sequence numbers.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequencing {
    /// The `clock` row lock: seq order is commit order (the only mode for real use).
    Serialized,
    /// A PostgreSQL `SEQUENCE` and no lock, and a snapshot that is `MAX(seq)`: the naive design
    /// whose snapshots are wrong under concurrent writers. Kept only so that a test can show
    /// the snapshot test catches it.
    NaiveSequence,
}

/// The PostgreSQL-backed store. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    sequencing: Sequencing,
    /// How to open a connection of its own (for `LISTEN`).
    listen: DatabaseUrl,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or
    /// key=value form) and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, Sequencing::Serialized).await
    }

    /// [`connect`](Self::connect) with a chosen [`Sequencing`] (tests only).
    #[doc(hidden)]
    pub async fn connect_with(url: &str, sequencing: Sequencing) -> Result<Self, StoreError> {
        Self::open(parse_url(url)?, sequencing).await
    }

    /// The store whose tables are in `schema` of the database at `url` (a tenant's), which
    /// must exist ([`create_schema`]); its tables are created or upgraded as on
    /// [`connect`](Self::connect).
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        let mut url = parse_url(url)?;
        check_schema_name(schema)?;
        // Every connection of the pool resolves unqualified names in the schema only.
        url.config.options(format!("-c search_path={schema}"));
        Self::open(url, Sequencing::Serialized).await
    }

    async fn open(url: DatabaseUrl, sequencing: Sequencing) -> Result<Self, StoreError> {
        let listen = url.clone();
        let manager = Manager::from_config(
            url.config,
            url.tls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::backend("build the PostgreSQL connection pool", e))?;
        let store = PostgresStore { inner: Arc::new(Inner { pool, sequencing, listen }) };
        let mut client = store.client("connect to PostgreSQL").await?;
        schema::migrate(&mut client).await?;
        if sequencing == Sequencing::NaiveSequence {
            client
                .batch_execute("CREATE SEQUENCE IF NOT EXISTS naive_seq")
                .await
                .map_err(|e| pg_error("create the naive sequence", e))?;
        }
        Ok(store)
    }

    /// A connection of its own that `LISTEN`s on the work channel and turns each notification
    /// into a message on the returned channel (capacity 1, so wake-ups coalesce). After
    /// (re)connecting it sends one message at once, for what it may have missed. It reconnects
    /// after an error, waiting 0.5 s and then twice as long each time up to 30 s, and ends when
    /// the receiver is dropped.
    pub(crate) fn listen_for_work(&self) -> tokio::sync::mpsc::Receiver<()> {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let DatabaseUrl { config, tls } = self.inner.listen.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(500);
            while !sender.is_closed() {
                match listen_once(&config, tls.clone(), &sender).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(%error, "listening for export work from other nodes");
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = sender.closed() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        receiver
    }

    /// Whether the server sees this store's connections as encrypted (`pg_stat_ssl`), for the
    /// start-up log and the TLS tests.
    pub async fn connection_is_encrypted(&self) -> Result<bool, StoreError> {
        let sql = |e| pg_error("look up the connection's TLS", e);
        let client = self.client("look up the connection's TLS").await?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .map_err(sql)?;
        Ok(row.get(0))
    }

    /// Closes the pool's connections (a removed tenant's store).
    pub fn close(&self) {
        self.inner.pool.close();
    }

    /// A pooled connection.
    pub(crate) async fn client(&self, context: &str) -> Result<Object, StoreError> {
        self.inner.pool.get().await.map_err(|e| pool_error(context, e))
    }
}

/// The newest version of one resource, as the planner tracks it through a call.
#[derive(Debug, Clone)]
struct Current {
    seq: i64,
    version: i64,
    deleted: bool,
    patients: Option<String>,
    /// Its index in the rows this call writes, when this call wrote it.
    pending: Option<usize>,
}

/// One version row to write.
struct NewRow {
    seq: i64,
    resource_type: ResourceType,
    id: ResourceId,
    version: i64,
    last_updated: i64,
    deleted: bool,
    patients: Option<String>,
    body: Option<Bytes>,
    next_seq: i64,
}

/// Where a call's sequence numbers come from.
enum Seqs {
    /// Contiguous after the last committed one.
    After(i64),
    /// Taken from the naive sequence, in order.
    Drawn(std::vec::IntoIter<i64>),
}

impl Seqs {
    fn next(&mut self) -> i64 {
        match self {
            Seqs::After(last) => {
                *last += 1;
                *last
            }
            Seqs::Drawn(values) => values.next().unwrap_or(i64::MAX),
        }
    }
}

/// What a call writes, planned in memory.
struct Plan {
    rows: Vec<NewRow>,
    /// (old seq, new seq) for versions committed before this call.
    superseded: Vec<(i64, i64)>,
    results: Vec<Result<WriteOutcome, StoreError>>,
}

fn precondition(
    resource_type: ResourceType,
    id: &ResourceId,
    current: Option<&Current>,
    if_match: Option<u64>,
) -> Result<(), StoreError> {
    let current = current.map(|c| (to_u64(c.version), c.deleted));
    bulkfhir_store::check_if_match(resource_type, id, current, if_match)
}

/// Plans `ops` in order against `currents` (every id they touch that exists), at `time`.
fn plan(
    ops: &[WriteOp],
    atomicity: Atomicity,
    mut currents: HashMap<(ResourceType, ResourceId), Current>,
    seqs: &mut Seqs,
    time: Instant,
) -> Result<Plan, StoreError> {
    let mut plan = Plan { rows: Vec::new(), superseded: Vec::new(), results: Vec::new() };
    for (index, op) in ops.iter().enumerate() {
        let result = plan_one(op, &mut currents, seqs, time, &mut plan);
        match result {
            Ok(outcome) => plan.results.push(Ok(outcome)),
            Err(error) if atomicity == Atomicity::AllOrNothing => {
                return Err(StoreError::OpFailed { index, source: Box::new(error) });
            }
            Err(error) => plan.results.push(Err(error)),
        }
    }
    Ok(plan)
}

fn plan_one(
    op: &WriteOp,
    currents: &mut HashMap<(ResourceType, ResourceId), Current>,
    seqs: &mut Seqs,
    time: Instant,
    plan: &mut Plan,
) -> Result<WriteOutcome, StoreError> {
    let (resource_type, id) = match op {
        WriteOp::Create { resource, id } | WriteOp::Update { resource, id, .. } => {
            (resource.resource_type(), id)
        }
        WriteOp::Delete { resource_type, id, .. } => (*resource_type, id),
    };
    let key = (resource_type, id.clone());
    let current = currents.get(&key);
    let (deleted, body, patients, created) = match op {
        WriteOp::Create { resource, .. } | WriteOp::Update { resource, .. } => {
            match op {
                WriteOp::Create { .. } if current.is_some() => {
                    return Err(StoreError::AlreadyExists { resource_type, id: id.clone() });
                }
                WriteOp::Update { if_match, .. } => {
                    precondition(resource_type, id, current, *if_match)?;
                }
                _ => {}
            }
            let version = current.map_or(1, |c| c.version + 1);
            let body = Bytes::from(resource.stamp(id, to_u64(version), time));
            let patients = resource.compartment_patients(id);
            let patients = (!patients.is_empty())
                .then(|| patients.iter().map(ResourceId::as_str).collect::<Vec<_>>().join(" "));
            (false, Some(body), patients, current.is_none_or(|c| c.deleted))
        }
        WriteOp::Delete { if_match, .. } => {
            precondition(resource_type, id, current, *if_match)?;
            let nothing = |version: i64| WriteOutcome {
                resource_type,
                id: id.clone(),
                version: to_u64(version),
                last_updated: None,
                seq: None,
                created: false,
                body: None,
            };
            match current {
                None => return Ok(nothing(0)),
                Some(c) if c.deleted => return Ok(nothing(c.version)),
                Some(c) => (true, None, c.patients.clone(), false),
            }
        }
    };
    let seq = seqs.next();
    let version = current.map_or(1, |c| c.version + 1);
    if let Some(c) = current {
        match c.pending {
            Some(row) => plan.rows[row].next_seq = seq,
            None => plan.superseded.push((c.seq, seq)),
        }
    }
    currents.insert(
        key,
        Current {
            seq,
            version,
            deleted,
            patients: patients.clone(),
            pending: Some(plan.rows.len()),
        },
    );
    plan.rows.push(NewRow {
        seq,
        resource_type,
        id: id.clone(),
        version,
        last_updated: time.as_micros(),
        deleted,
        patients,
        body: body.clone(),
        next_seq: CURRENT,
    });
    Ok(WriteOutcome {
        resource_type,
        id: id.clone(),
        version: to_u64(version),
        last_updated: Some(time),
        seq: Some(to_u64(seq)),
        created,
        body,
    })
}

/// The newest version of each `(type, id)` in `$1`/`$2`: one lookup per key, which `LIMIT 1`
/// in a LATERAL subquery keeps the planner from turning into a join. As a plain join, once
/// ANALYZE had seen a few hundred thousand rows, the planner guessed many matches per key and
/// hashed or merged the whole table against each batch (300-700 ms a batch of 5,000, a third of
/// a 1M load). Public only for the test that checks its plan.
#[doc(hidden)]
pub const CURRENTS_SQL: &str = "SELECT k.rtype, k.id, v.seq, v.version, v.deleted, v.patients
     FROM unnest($1::text[], $2::text[]) AS k(rtype, id)
     CROSS JOIN LATERAL (
         SELECT seq, version, deleted, patients FROM resource_version
         WHERE rtype = k.rtype AND id = k.id ORDER BY version DESC LIMIT 1
     ) AS v";

/// The current versions of every resource `ops` touch, in one query.
async fn currents(
    tx: &Transaction<'_>,
    ops: &[WriteOp],
) -> Result<HashMap<(ResourceType, ResourceId), Current>, StoreError> {
    let mut types = Vec::with_capacity(ops.len());
    let mut ids = Vec::with_capacity(ops.len());
    for op in ops {
        let (resource_type, id) = match op {
            WriteOp::Create { resource, id } | WriteOp::Update { resource, id, .. } => {
                (resource.resource_type(), id)
            }
            WriteOp::Delete { resource_type, id, .. } => (*resource_type, id),
        };
        types.push(resource_type.as_str());
        ids.push(id.as_str());
    }
    let rows = tx
        .query(CURRENTS_SQL, &[&types, &ids])
        .await
        .map_err(|e| pg_error("read the current versions", e))?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let resource_type = ResourceType::parse(row.get::<_, &str>(0))
            .map_err(|e| StoreError::Invalid(format!("a stored row has a bad type: {e}")))?;
        let id = ResourceId::parse(row.get::<_, &str>(1))
            .map_err(|e| StoreError::Invalid(format!("a stored row has a bad id: {e}")))?;
        out.insert(
            (resource_type, id),
            Current {
                seq: row.get(2),
                version: row.get(3),
                deleted: row.get(4),
                patients: row.get(5),
                pending: None,
            },
        );
    }
    Ok(out)
}

/// Writes a plan's rows with binary `COPY` and links the versions they replace.
async fn write(tx: &Transaction<'_>, plan: &Plan) -> Result<(), StoreError> {
    let sql = |e| pg_error("write resource versions", e);
    if plan.rows.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in(
            "COPY resource_version (seq, rtype, id, version, last_updated, next_seq, deleted, patients, body)
             FROM STDIN BINARY",
        )
        .await
        .map_err(sql)?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BOOL,
            Type::TEXT,
            Type::BYTEA,
        ],
    );
    pin_mut!(writer);
    for row in &plan.rows {
        let body: Option<&[u8]> = row.body.as_deref();
        writer
            .as_mut()
            .write(&[
                &row.seq,
                &row.resource_type.as_str(),
                &row.id.as_str(),
                &row.version,
                &row.last_updated,
                &row.next_seq,
                &row.deleted,
                &row.patients,
                &body,
            ])
            .await
            .map_err(sql)?;
    }
    writer.finish().await.map_err(sql)?;
    let compartment_rows: Vec<(&str, &str, i64)> = plan
        .rows
        .iter()
        .filter_map(|row| row.patients.as_deref().map(|p| (row, p)))
        .flat_map(|(row, patients)| {
            patients.split(' ').map(move |patient| (patient, row.resource_type.as_str(), row.seq))
        })
        .collect();
    if !compartment_rows.is_empty() {
        let sink = tx
            .copy_in("COPY compartment (patient_id, rtype, seq) FROM STDIN BINARY")
            .await
            .map_err(sql)?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::INT8]);
        pin_mut!(writer);
        for (patient, rtype, seq) in &compartment_rows {
            writer.as_mut().write(&[patient, rtype, seq]).await.map_err(sql)?;
        }
        writer.finish().await.map_err(sql)?;
    }
    if !plan.superseded.is_empty() {
        let (old, new): (Vec<i64>, Vec<i64>) = plan.superseded.iter().copied().unzip();
        tx.execute(
            "UPDATE resource_version v SET next_seq = s.new
             FROM unnest($1::bigint[], $2::bigint[]) AS s(old, new) WHERE v.seq = s.old",
            &[&old, &new],
        )
        .await
        .map_err(sql)?;
    }
    Ok(())
}

/// Locks the clock and picks the call's time: after every committed write and snapshot.
async fn lock_clock(tx: &Transaction<'_>) -> Result<(i64, Instant), StoreError> {
    let row = tx
        .query_one("SELECT last_seq, last_time, floor FROM clock WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(|e| pg_error("lock the write clock", e))?;
    let (last_seq, last_time, floor): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let earliest = Instant::from_micros(last_time.max(floor)).next();
    Ok((last_seq, Instant::now().max(earliest)))
}

impl PostgresStore {
    async fn transact_once(
        &self,
        ops: &[WriteOp],
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let sql = |e| pg_error("run a write transaction", e);
        let mut client = self.client("run a write transaction").await?;
        let tx = client.transaction().await.map_err(sql)?;
        let (mut seqs, time) = match self.inner.sequencing {
            Sequencing::Serialized => {
                let (last_seq, time) = lock_clock(&tx).await?;
                (Seqs::After(last_seq), time)
            }
            Sequencing::NaiveSequence => {
                let count = i64::try_from(ops.len()).unwrap_or(i64::MAX);
                let drawn: Vec<i64> = tx
                    .query(
                        "SELECT nextval('naive_seq') FROM generate_series(1, $1::bigint)",
                        &[&count],
                    )
                    .await
                    .map_err(sql)?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                (Seqs::Drawn(drawn.into_iter()), Instant::now())
            }
        };
        let currents = currents(&tx, ops).await?;
        let plan = plan(ops, atomicity, currents, &mut seqs, time)?;
        write(&tx, &plan).await?;
        if let (Seqs::After(last_seq), Some(_)) = (&seqs, plan.rows.last()) {
            tx.execute(
                "UPDATE clock SET last_seq = $1, last_time = $2 WHERE id = 1",
                &[last_seq, &time.as_micros()],
            )
            .await
            .map_err(sql)?;
        }
        tx.commit().await.map_err(|e| pg_error("commit a write transaction", e))?;
        Ok(plan.results)
    }
}

/// Decodes a row that selects `seq, id, version, last_updated, body, patients` in this order,
/// appending its body to `bodies`.
fn decode(
    resource_type: ResourceType,
    row: &Row,
    with_patients: bool,
    bodies: &mut Vec<u8>,
) -> Result<(StoredResource, std::ops::Range<usize>), StoreError> {
    let seq: i64 = row.get(0);
    let id = ResourceId::parse(row.get::<_, &str>(1))
        .map_err(|e| StoreError::Invalid(format!("stored row {seq} has a bad id: {e}")))?;
    let start = bodies.len();
    if let Some(body) = row.get::<_, Option<&[u8]>>(4) {
        bodies.extend_from_slice(body);
    }
    let patients: Option<String> = if with_patients { row.get(5) } else { None };
    let stored = StoredResource {
        resource_type,
        id,
        version: to_u64(row.get(2)),
        seq: to_u64(seq),
        last_updated: Instant::from_micros(row.get(3)),
        body: Bytes::new(),
        patients: patients.map(String::into_boxed_str),
    };
    Ok((stored, start..bodies.len()))
}

/// A page of rows, in order, with their bodies in one shared buffer.
fn page<'r>(
    resource_type: ResourceType,
    rows: impl ExactSizeIterator<Item = &'r Row>,
    with_patients: bool,
    limit: usize,
) -> Result<ScanPage, StoreError> {
    let mut bodies = Vec::with_capacity(rows.len() * 1024);
    let decoded = rows
        .map(|row| decode(resource_type, row, with_patients, &mut bodies))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScanPage::assemble(decoded, bodies, limit))
}

fn scan_sql(deleted: bool, in_any_compartment: bool) -> String {
    format!(
        "SELECT seq, id, version, last_updated, body, patients FROM resource_version
         WHERE rtype = $1 AND seq > $2 AND seq <= $3 AND seq < $5 AND next_seq > $3
           AND deleted = {deleted}{}
         ORDER BY seq LIMIT $4",
        if in_any_compartment { " AND patients IS NOT NULL" } else { "" },
    )
}

/// Patient `$1`'s compartment entries of type `$2` after `seq` `$3`, at most `$4` (the
/// snapshot), the first `$5`: read from the `compartment` primary key alone.
const COMPARTMENT_ENTRIES_SQL: &str = "SELECT seq FROM compartment
     WHERE patient_id = $1 AND rtype = $2 AND seq > $3 AND seq <= $4
     ORDER BY seq LIMIT $5";

/// The versions of type `$1` among the sequence numbers `$2` that are live (or, with `deleted`,
/// deletions) as of snapshot `$3`, in no order: walks `resource_version_scan`.
fn compartment_rows_sql(deleted: bool) -> String {
    format!(
        "SELECT seq, id, version, last_updated, body, patients FROM resource_version
         WHERE rtype = $1 AND seq = ANY($2::bigint[]) AND next_seq > $3 AND deleted = {deleted}"
    )
}

fn limit_param(limit: usize) -> i64 {
    to_i64(limit as u64)
}

impl PostgresStore {
    async fn read_version(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        version: Option<u64>,
    ) -> Result<StoredResource, StoreError> {
        let sql = |e| pg_error("read a resource", e);
        let client = self.client("read a resource").await?;
        let statement = client
            .prepare_cached(
                "SELECT seq, id, version, last_updated, body, patients, deleted FROM resource_version
                 WHERE rtype = $1 AND id = $2 AND ($3::bigint IS NULL OR version = $3)
                 ORDER BY version DESC LIMIT 1",
            )
            .await
            .map_err(sql)?;
        let row = client
            .query_opt(&statement, &[&resource_type.as_str(), &id.as_str(), &version.map(to_i64)])
            .await
            .map_err(sql)?;
        match (row, version) {
            (None, Some(version)) => {
                let exists = client
                    .query_opt(
                        "SELECT 1 FROM resource_version WHERE rtype = $1 AND id = $2 LIMIT 1",
                        &[&resource_type.as_str(), &id.as_str()],
                    )
                    .await
                    .map_err(sql)?;
                Err(match exists {
                    Some(_) => {
                        StoreError::VersionNotFound { resource_type, id: id.clone(), version }
                    }
                    None => StoreError::NotFound { resource_type, id: id.clone() },
                })
            }
            (None, None) => Err(StoreError::NotFound { resource_type, id: id.clone() }),
            (Some(row), _) => {
                let mut body = Vec::new();
                let (mut stored, _) = decode(resource_type, &row, false, &mut body)?;
                if row.get::<_, bool>(6) {
                    return Err(StoreError::Gone {
                        resource_type,
                        id: id.clone(),
                        version: stored.version,
                    });
                }
                stored.body = Bytes::from(body);
                Ok(stored)
            }
        }
    }
}

#[async_trait]
impl ResourceStore for PostgresStore {
    async fn transact(
        &self,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        // Planning decides every op's fate before anything is written, so `EachOnItsOwn`
        // needs no savepoints: failing ops are simply left out of the rows written.
        self.transact_once(&ops, atomicity).await
    }

    async fn read(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredResource, StoreError> {
        self.read_version(resource_type, id, None).await
    }

    async fn vread(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        version: u64,
    ) -> Result<StoredResource, StoreError> {
        self.read_version(resource_type, id, Some(version)).await
    }

    async fn history(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let sql = |e| pg_error("read a resource history", e);
        let client = self.client("read a resource history").await?;
        let rows = client
            .query(
                "SELECT version, last_updated, deleted, body FROM resource_version
                 WHERE rtype = $1 AND id = $2 ORDER BY version DESC LIMIT $3",
                &[&resource_type.as_str(), &id.as_str(), &limit_param(limit)],
            )
            .await
            .map_err(sql)?;
        if rows.is_empty() && limit > 0 {
            return Err(StoreError::NotFound { resource_type, id: id.clone() });
        }
        Ok(rows
            .iter()
            .map(|row| {
                let deleted: bool = row.get(2);
                let body: Option<&[u8]> = row.get(3);
                HistoryEntry {
                    version: to_u64(row.get(0)),
                    last_updated: Instant::from_micros(row.get(1)),
                    body: if deleted { None } else { body.map(Bytes::copy_from_slice) },
                }
            })
            .collect())
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let sql = |e| pg_error("take a snapshot", e);
        let mut client = self.client("take a snapshot").await?;
        let tx = client.transaction().await.map_err(sql)?;
        let snapshot = match self.inner.sequencing {
            Sequencing::Serialized => {
                // Waits for the writer in flight, if any: it holds the clock row until it
                // commits, and `last_seq` then counts its rows.
                let (last_seq, time) = lock_clock(&tx).await?;
                tx.execute("UPDATE clock SET floor = $1 WHERE id = 1", &[&time.as_micros()])
                    .await
                    .map_err(sql)?;
                Snapshot { seq: to_u64(last_seq), time }
            }
            Sequencing::NaiveSequence => {
                let row = tx
                    .query_one("SELECT COALESCE(MAX(seq), 0) FROM resource_version", &[])
                    .await
                    .map_err(sql)?;
                Snapshot { seq: to_u64(row.get(0)), time: Instant::now() }
            }
        };
        tx.commit().await.map_err(sql)?;
        Ok(snapshot)
    }

    async fn scan(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError> {
        let sql = |e| pg_error("scan resources", e);
        let client = self.client("scan resources").await?;
        let statement = client
            .prepare_cached(&scan_sql(options.deleted, options.in_any_compartment))
            .await
            .map_err(sql)?;
        let rows = client
            .query(
                &statement,
                &[
                    &resource_type.as_str(),
                    &to_i64(options.after_seq),
                    &to_i64(snapshot.seq),
                    &limit_param(options.limit),
                    &to_i64(options.before_seq),
                ],
            )
            .await
            .map_err(sql)?;
        page(resource_type, rows.iter(), options.with_patients, options.limit)
    }

    async fn scan_compartment(
        &self,
        snapshot: Snapshot,
        patient: &ResourceId,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError> {
        let pages = self
            .scan_compartments(snapshot, std::slice::from_ref(patient), resource_type, options, 0)
            .await?;
        Ok(pages.into_iter().next().unwrap_or_default())
    }

    async fn scan_compartments(
        &self,
        snapshot: Snapshot,
        patients: &[ResourceId],
        resource_type: ResourceType,
        options: ScanOptions,
        restart_after: u64,
    ) -> Result<Vec<ScanPage>, StoreError> {
        let sql = |e| pg_error("scan patient compartments", e);
        let client = self.client("scan patient compartments").await?;
        let entries_statement =
            client.prepare_cached(COMPARTMENT_ENTRIES_SQL).await.map_err(sql)?;
        let rows_statement =
            client.prepare_cached(&compartment_rows_sql(options.deleted)).await.map_err(sql)?;
        let mut budget = options.limit.max(1);
        let mut pages = Vec::new();
        // A wave of patients at a time: their compartment entries (index-only reads, sent
        // together: tokio-postgres pipelines them on the connection), then the rows of all of
        // them in one read by `(rtype, seq)`. A join read each row through its own index probe
        // and cost twice as much on the server. Each patient's entries are read up to the
        // budget left when the wave starts; the pages are then cut exactly as one query per
        // patient, in turn, would cut them. Waves are sized from the rows per patient seen so
        // far, so that a type with hundreds of resources per patient is not read many times.
        let (mut next, mut wave, mut rows_seen, mut patients_seen) = (0, 4, 0_usize, 0_usize);
        let seq = to_i64(snapshot.seq);
        let rtype = resource_type.as_str();
        while next < patients.len() {
            let batch = &patients[next..(next + wave).min(patients.len())];
            let limit = limit_param(budget);
            let afters: Vec<i64> = (next..next + batch.len())
                .map(|index| to_i64(if index == 0 { options.after_seq } else { restart_after }))
                .collect();
            let (client, entries_statement) = (&client, &entries_statement);
            let queries = batch.iter().zip(&afters).map(|(patient, after)| async move {
                let patient = patient.as_str();
                client.query(entries_statement, &[&patient, &rtype, after, &seq, &limit]).await
            });
            let entries: Vec<Vec<i64>> = futures::future::try_join_all(queries)
                .await
                .map_err(sql)?
                .iter()
                .map(|rows| rows.iter().map(|row| row.get(0)).collect())
                .collect();
            let wanted: Vec<i64> = entries.iter().flatten().copied().collect();
            let rows = if wanted.is_empty() {
                Vec::new()
            } else {
                client.query(&rows_statement, &[&rtype, &wanted, &seq]).await.map_err(sql)?
            };
            let by_seq: HashMap<i64, &Row> = rows.iter().map(|row| (row.get(0), row)).collect();
            for member_entries in &entries {
                patients_seen += 1;
                // The patient's live rows in seq order, at most the budget left.
                let taken: Vec<&Row> = member_entries
                    .iter()
                    .filter_map(|seq| by_seq.get(seq).copied())
                    .take(budget)
                    .collect();
                rows_seen += taken.len();
                let mut page =
                    page(resource_type, taken.into_iter(), options.with_patients, budget)?;
                budget = budget.saturating_sub(page.resources.len());
                // Entries read up to the limit: the patient may have more, after the last.
                let cut = member_entries.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
                if page.next.is_none() && cut {
                    page.next = member_entries.last().map(|seq| to_u64(*seq));
                }
                let full = page.next.is_some() || budget == 0;
                pages.push(page);
                if full {
                    return Ok(pages);
                }
            }
            next += batch.len();
            let per_patient = rows_seen.div_ceil(patients_seen.max(1)).max(1);
            wave = budget.div_ceil(per_patient).clamp(1, COMPARTMENT_PIPELINE);
        }
        Ok(pages)
    }

    async fn read_many_at(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        ids: &[ResourceId],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let sql = |e| pg_error("read resources as of a snapshot", e);
        let client = self.client("read resources as of a snapshot").await?;
        let ids: Vec<&str> = ids.iter().map(ResourceId::as_str).collect();
        let statement = client
            .prepare_cached(
                "SELECT seq, id, version, last_updated, body, patients FROM resource_version
                 WHERE rtype = $1 AND id = ANY($2) AND seq <= $3 AND next_seq > $3 AND NOT deleted",
            )
            .await
            .map_err(sql)?;
        let rows = client
            .query(&statement, &[&resource_type.as_str(), &ids, &to_i64(snapshot.seq)])
            .await
            .map_err(sql)?;
        Ok(page(resource_type, rows.iter(), true, usize::MAX)?.resources)
    }

    async fn seq_bounds(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let sql = |e| pg_error("find the key range of a type", e);
        let client = self.client("find the key range of a type").await?;
        // Prepared once per connection (as every query a kick-off or an export repeats): a
        // statement given as text costs a round trip more per call to parse it again.
        let statement = client
            .prepare_cached(
                "SELECT MIN(seq), MAX(seq) FROM resource_version WHERE rtype = $1 AND seq <= $2",
            )
            .await
            .map_err(sql)?;
        let row = client
            .query_one(&statement, &[&resource_type.as_str(), &to_i64(snapshot.seq)])
            .await
            .map_err(sql)?;
        let (low, high): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        Ok(low.zip(high).map(|(low, high)| (to_u64(low), to_u64(high))))
    }

    async fn count_versions(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        after_seq: u64,
        at_most: u64,
    ) -> Result<u64, StoreError> {
        let sql = |e| pg_error("count the versions of a type", e);
        let client = self.client("count the versions of a type").await?;
        // The (rtype, seq) index answers it (an index-only scan once the table is vacuumed).
        let statement = client
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM resource_version
                 WHERE rtype = $1 AND seq > $2 AND seq <= $3 LIMIT $4) AS v",
            )
            .await
            .map_err(sql)?;
        let row = client
            .query_one(
                &statement,
                &[
                    &resource_type.as_str(),
                    &to_i64(after_seq),
                    &to_i64(snapshot.seq),
                    &to_i64(at_most),
                ],
            )
            .await
            .map_err(sql)?;
        Ok(to_u64(row.get(0)))
    }

    async fn seq_at(&self, time: Instant) -> Result<u64, StoreError> {
        let sql = |e| pg_error("find the sequence number of an instant", e);
        let client = self.client("find the sequence number of an instant").await?;
        // Sequence numbers are contiguous from 1 and lastUpdated never decreases with seq
        // (both hold because seq is handed out under the clock lock), so a binary search over
        // seq finds the last write at or before `time`.
        let max_seq: i64 = client
            .query_one("SELECT last_seq FROM clock WHERE id = 1", &[])
            .await
            .map_err(sql)?
            .get(0);
        let statement = client
            .prepare_cached("SELECT last_updated FROM resource_version WHERE seq = $1")
            .await
            .map_err(sql)?;
        let (mut lo, mut hi) = (0i64, max_seq);
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            let at: Option<i64> =
                client.query_opt(&statement, &[&mid]).await.map_err(sql)?.map(|row| row.get(0));
            match at {
                Some(at) if at <= time.as_micros() => lo = mid,
                _ => hi = mid - 1,
            }
        }
        Ok(to_u64(lo))
    }
}

/// Schema names are put into SQL text: only `[a-z0-9_]`, starting with a letter.
fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let valid = schema.len() <= 63
        && schema.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("'{schema}' is not a schema name this store uses")))
    }
}

/// One short-lived connection to the database at `url`, for schema management.
async fn admin_client(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let DatabaseUrl { config, tls } = parse_url(url)?;
    let (client, connection) =
        config.connect(tls).await.map_err(|e| pg_error("connect to PostgreSQL", e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a schema management connection ended");
        }
    });
    Ok(client)
}

/// Creates `schema` in the database at `url`; false when it existed already.
pub async fn create_schema(url: &str, schema: &str) -> Result<bool, StoreError> {
    check_schema_name(schema)?;
    let client = admin_client(url).await?;
    let existed = schema_exists_on(&client, schema).await?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .map_err(|e| pg_error("create a schema", e))?;
    Ok(!existed)
}

/// Drops `schema` and everything in it; false when there was none.
pub async fn drop_schema(url: &str, schema: &str) -> Result<bool, StoreError> {
    check_schema_name(schema)?;
    let client = admin_client(url).await?;
    let existed = schema_exists_on(&client, schema).await?;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .map_err(|e| pg_error("drop a schema", e))?;
    Ok(existed)
}

/// The schemas of the database at `url` whose names start with `prefix`, sorted.
pub async fn list_schemas(url: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
    let client = admin_client(url).await?;
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY nspname",
            &[&prefix],
        )
        .await
        .map_err(|e| pg_error("list schemas", e))?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

/// Whether `schema` exists in the database at `url`.
pub async fn schema_exists(url: &str, schema: &str) -> Result<bool, StoreError> {
    schema_exists_on(&admin_client(url).await?, schema).await
}

async fn schema_exists_on(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<bool, StoreError> {
    let row = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&schema])
        .await
        .map_err(|e| pg_error("look up a schema", e))?;
    Ok(row.get(0))
}

/// One `LISTEN` session (see [`PostgresStore::listen_for_work`]): `Ok` when the receiver is
/// gone, an error text when the connection failed or ended.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: rustls_tokio_postgres::MakeRustlsConnect,
    sender: &tokio::sync::mpsc::Sender<()>,
) -> Result<(), String> {
    use futures::StreamExt as _;
    let (client, mut connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = format!("LISTEN {}", crate::jobs::WORK_CHANNEL);
    let listen = client.batch_execute(&listen);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result.map_err(|e| e.to_string())?;
                listening = true;
                let _ = sender.try_send(());
            }
            message = messages.next() => match message {
                // A full channel already holds a wake-up.
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = sender.try_send(());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the connection ended".to_owned()),
            },
            () = sender.closed() => return Ok(()),
        }
    }
}
