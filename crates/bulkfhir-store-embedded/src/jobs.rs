//! [`JobStore`] on the embedded database: tables `export_job` and `export_unit`.

use std::time::Duration;

use async_trait::async_trait;
use bulkfhir_model::Instant;
use bulkfhir_store::{
    JobId, JobQuery, JobRecord, JobStatus, JobStore, NewJob, Snapshot, StoreError, UnitRecord,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::sqlite::{EmbeddedStore, sql_error, to_i64, to_u64};

const JOB_COLUMNS: &str = "id, status, requester, request, plan, request_time, snapshot_seq, snapshot_time,
    progress_percent, progress_text, manifest, error_message, finished_at, expires_at, files_deleted, lease_owner";

fn row_to_job(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: String = row.get(0)?;
    let status: String = row.get(1)?;
    Ok(JobRecord {
        id: JobId::parse(&id).unwrap_or_default(),
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Error),
        requester: row.get(2)?,
        request: row.get(3)?,
        plan: row.get(4)?,
        request_time: Instant::from_micros(row.get(5)?),
        snapshot: Snapshot { seq: to_u64(row.get(6)?), time: Instant::from_micros(row.get(7)?) },
        progress_percent: u8::try_from(row.get::<_, i64>(8)?).unwrap_or(0),
        progress_text: row.get(9)?,
        manifest: row.get(10)?,
        error_message: row.get(11)?,
        finished_at: row.get::<_, Option<i64>>(12)?.map(Instant::from_micros),
        expires_at: row.get::<_, Option<i64>>(13)?.map(Instant::from_micros),
        files_deleted: row.get(14)?,
        lease_owner: row.get(15)?,
        taken_over_from: None,
    })
}

fn get_job(conn: &Connection, id: &JobId) -> Result<JobRecord, StoreError> {
    conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM export_job WHERE id = ?1"))
        .and_then(|mut s| s.query_row(params![id.as_str()], row_to_job).optional())
        .map_err(|e| sql_error("read an export job", e))?
        .ok_or_else(|| StoreError::JobNotFound { job: id.to_string() })
}

fn read_pages(conn: &Connection, id: &JobId) -> Result<Vec<String>, StoreError> {
    let sql = |e| sql_error("read manifest pages", e);
    conn.prepare_cached("SELECT page FROM export_manifest_page WHERE job_id = ?1 ORDER BY page_no")
        .map_err(sql)?
        .query_map(params![id.as_str()], |row| row.get(0))
        .map_err(sql)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sql)
}

/// Runs a fenced update: it must touch exactly one row of an active job leased to `owner`.
fn fenced(id: &JobId, changed: rusqlite::Result<usize>) -> Result<(), StoreError> {
    match changed.map_err(|e| sql_error("update an export job", e))? {
        0 => Err(StoreError::LeaseLost { job: id.to_string() }),
        _ => Ok(()),
    }
}

fn lease_end(now: Instant, lease: Duration) -> i64 {
    now.as_micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

#[async_trait]
impl JobStore for EmbeddedStore {
    async fn create(&self, job: NewJob, max_active: usize) -> Result<(), StoreError> {
        self.with_writer("create an export job", move |conn| {
            let sql = |e| sql_error("create an export job", e);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
            let active: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM export_job WHERE status IN ('accepted', 'in-progress')",
                    [],
                    |row| row.get(0),
                )
                .map_err(sql)?;
            if to_u64(active) >= max_active as u64 {
                return Err(StoreError::TooManyJobs { active: to_u64(active), limit: max_active });
            }
            tx.execute(
                "INSERT INTO export_job (id, status, requester, request, plan, request_time, snapshot_seq, snapshot_time)
                 VALUES (?1, 'accepted', ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    job.id.as_str(),
                    job.requester,
                    job.request,
                    job.plan,
                    job.request_time.as_micros(),
                    to_i64(job.snapshot.seq),
                    job.snapshot.time.as_micros()
                ],
            )
            .map_err(sql)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO export_unit (job_id, idx, spec) VALUES (?1, ?2, ?3)")
                    .map_err(sql)?;
                for (idx, spec) in job.units.iter().enumerate() {
                    insert.execute(params![job.id.as_str(), idx as i64, spec]).map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    async fn get(&self, id: &JobId) -> Result<JobRecord, StoreError> {
        let id = id.clone();
        self.with_reader("read an export job", move |conn| get_job(conn, &id)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.with_reader("count export jobs", move |conn| {
            let sql = |e| sql_error("count export jobs", e);
            let mut statement = conn
                .prepare_cached("SELECT status, count(*) FROM export_job GROUP BY status")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            Ok(rows
                .into_iter()
                .filter_map(|(status, n)| JobStatus::parse(&status).map(|s| (s, to_u64(n))))
                .collect())
        })
        .await
    }

    async fn search(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        let query = query.clone();
        self.with_reader("search export jobs", move |conn| {
            let sql = |e| sql_error("search export jobs", e);
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM export_job
                     WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR requester = ?2)
                     ORDER BY id DESC LIMIT ?3"
                ))
                .map_err(sql)?;
            statement
                .query_map(
                    params![
                        query.status.map(JobStatus::as_str),
                        query.requester,
                        to_i64(query.limit as u64)
                    ],
                    row_to_job,
                )
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)
        })
        .await
    }

    async fn claim(
        &self,
        owner: &str,
        reclaim_prefix: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<Option<JobRecord>, StoreError> {
        let (owner, reclaim_prefix) = (owner.to_owned(), reclaim_prefix.to_owned());
        self.with_writer("claim an export job", move |conn| {
            let sql = |e| sql_error("claim an export job", e);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
            let found: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT id, lease_owner FROM export_job
                     WHERE status IN ('accepted', 'in-progress')
                       AND (lease_owner IS NULL OR lease_expires < ?1
                            OR (?2 <> '' AND substr(lease_owner, 1, length(?2)) = ?2 AND lease_owner <> ?3))
                     ORDER BY id LIMIT 1",
                    params![now.as_micros(), reclaim_prefix, owner],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(sql)?;
            let Some((id, previous_owner)) = found else { return Ok(None) };
            tx.execute(
                "UPDATE export_job SET status = 'in-progress', lease_owner = ?2, lease_expires = ?3 WHERE id = ?1",
                params![id, owner, lease_end(now, lease)],
            )
            .map_err(sql)?;
            let job_id = JobId::parse(&id).unwrap_or_default();
            let mut job = get_job(&tx, &job_id)?;
            tx.commit().map_err(sql)?;
            job.taken_over_from = previous_owner.filter(|previous| *previous != owner);
            Ok(Some(job))
        })
        .await
    }

    async fn renew(
        &self,
        id: &JobId,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        let (id, owner) = (id.clone(), owner.to_owned());
        self.with_writer("renew an export job lease", move |conn| {
            let changed = conn.execute(
                "UPDATE export_job SET lease_expires = ?3
                 WHERE id = ?1 AND lease_owner = ?2 AND status = 'in-progress'",
                params![id.as_str(), owner, lease_end(now, lease)],
            );
            fenced(&id, changed)
        })
        .await
    }

    async fn release(&self, id: &JobId, owner: &str) -> Result<(), StoreError> {
        let (id, owner) = (id.clone(), owner.to_owned());
        self.with_writer("release an export job lease", move |conn| {
            conn.execute(
                "UPDATE export_job SET lease_owner = NULL, lease_expires = NULL WHERE id = ?1 AND lease_owner = ?2",
                params![id.as_str(), owner],
            )
            .map_err(|e| sql_error("release an export job lease", e))?;
            Ok(())
        })
        .await
    }

    async fn units(&self, id: &JobId) -> Result<Vec<UnitRecord>, StoreError> {
        let id = id.clone();
        self.with_reader("read export units", move |conn| {
            let sql = |e| sql_error("read export units", e);
            let mut statement = conn
                .prepare_cached(
                    "SELECT idx, spec, checkpoint, done, lease_owner, lease_expires
                     FROM export_unit WHERE job_id = ?1 ORDER BY idx",
                )
                .map_err(sql)?;
            statement
                .query_map(params![id.as_str()], |row| {
                    Ok(UnitRecord {
                        index: u32::try_from(row.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                        spec: row.get(1)?,
                        checkpoint: row.get(2)?,
                        done: row.get(3)?,
                        lease_owner: row.get(4)?,
                        lease_expires: row.get::<_, Option<i64>>(5)?.map(Instant::from_micros),
                    })
                })
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)
        })
        .await
    }

    async fn lease_unit(
        &self,
        id: &JobId,
        unit: u32,
        owner: &str,
        reclaim_prefix: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<bool, StoreError> {
        let (id, owner, reclaim_prefix) = (id.clone(), owner.to_owned(), reclaim_prefix.to_owned());
        self.with_writer("lease an export unit", move |conn| {
            let changed = conn
                .execute(
                    "UPDATE export_unit SET lease_owner = ?3, lease_expires = ?5
                     WHERE job_id = ?1 AND idx = ?2 AND done = 0
                       AND (lease_owner IS NULL OR lease_owner = ?3 OR lease_expires < ?6
                            OR (?4 <> '' AND substr(lease_owner, 1, length(?4)) = ?4))
                       AND EXISTS (SELECT 1 FROM export_job WHERE id = ?1 AND status = 'in-progress')",
                    params![
                        id.as_str(),
                        i64::from(unit),
                        owner,
                        reclaim_prefix,
                        lease_end(now, lease),
                        now.as_micros()
                    ],
                )
                .map_err(|e| sql_error("lease an export unit", e))?;
            Ok(changed == 1)
        })
        .await
    }

    async fn renew_unit(
        &self,
        id: &JobId,
        unit: u32,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        let (id, owner) = (id.clone(), owner.to_owned());
        self.with_writer("renew an export unit lease", move |conn| {
            let changed = conn.execute(
                "UPDATE export_unit SET lease_expires = ?4
                 WHERE job_id = ?1 AND idx = ?2 AND lease_owner = ?3 AND done = 0
                   AND EXISTS (SELECT 1 FROM export_job WHERE id = ?1 AND status = 'in-progress')",
                params![id.as_str(), i64::from(unit), owner, lease_end(now, lease)],
            );
            fenced(&id, changed)
        })
        .await
    }

    async fn release_unit(&self, id: &JobId, unit: u32, owner: &str) -> Result<(), StoreError> {
        let (id, owner) = (id.clone(), owner.to_owned());
        self.with_writer("release an export unit lease", move |conn| {
            conn.execute(
                "UPDATE export_unit SET lease_owner = NULL, lease_expires = NULL
                 WHERE job_id = ?1 AND idx = ?2 AND lease_owner = ?3 AND done = 0",
                params![id.as_str(), i64::from(unit), owner],
            )
            .map_err(|e| sql_error("release an export unit lease", e))?;
            Ok(())
        })
        .await
    }

    async fn checkpoint(
        &self,
        id: &JobId,
        owner: &str,
        unit: u32,
        checkpoint: &str,
        done: bool,
    ) -> Result<(), StoreError> {
        let (id, owner, checkpoint) = (id.clone(), owner.to_owned(), checkpoint.to_owned());
        self.with_writer("checkpoint an export unit", move |conn| {
            // The fence and the write in one statement: the unit changes only while `owner`
            // holds its lease and the job is in progress.
            let changed = conn.execute(
                "UPDATE export_unit SET checkpoint = ?4, done = ?5
                 WHERE job_id = ?1 AND idx = ?2 AND lease_owner = ?3
                   AND EXISTS (SELECT 1 FROM export_job WHERE id = ?1 AND status = 'in-progress')",
                params![id.as_str(), i64::from(unit), owner, checkpoint, done],
            );
            fenced(&id, changed)
        })
        .await
    }

    async fn set_progress(
        &self,
        id: &JobId,
        owner: &str,
        percent: u8,
        text: &str,
    ) -> Result<(), StoreError> {
        let (id, owner, text) = (id.clone(), owner.to_owned(), text.to_owned());
        self.with_writer("record export progress", move |conn| {
            let changed = conn.execute(
                "UPDATE export_job SET progress_percent = ?3, progress_text = ?4
                 WHERE id = ?1 AND lease_owner = ?2 AND status = 'in-progress'",
                params![id.as_str(), owner, i64::from(percent.min(100)), text],
            );
            fenced(&id, changed)
        })
        .await
    }

    async fn complete(
        &self,
        id: &JobId,
        owner: &str,
        manifest: &str,
        now: Instant,
        expires_at: Instant,
    ) -> Result<(), StoreError> {
        let (id, owner, manifest) = (id.clone(), owner.to_owned(), manifest.to_owned());
        self.with_writer("complete an export job", move |conn| {
            let changed = conn.execute(
                "UPDATE export_job SET status = 'completed', manifest = ?3, finished_at = ?4, expires_at = ?5,
                        progress_percent = 100, progress_text = 'complete', lease_owner = NULL, lease_expires = NULL
                 WHERE id = ?1 AND lease_owner = ?2 AND status = 'in-progress'",
                params![id.as_str(), owner, manifest, now.as_micros(), expires_at.as_micros()],
            );
            fenced(&id, changed)
        })
        .await
    }

    async fn fail(
        &self,
        id: &JobId,
        owner: &str,
        message: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        let (id, owner, message) = (id.clone(), owner.to_owned(), message.to_owned());
        self.with_writer("fail an export job", move |conn| {
            let changed = conn.execute(
                "UPDATE export_job SET status = 'error', error_message = ?3, finished_at = ?4,
                        lease_owner = NULL, lease_expires = NULL
                 WHERE id = ?1 AND lease_owner = ?2 AND status = 'in-progress'",
                params![id.as_str(), owner, message, now.as_micros()],
            );
            fenced(&id, changed)
        })
        .await
    }

    async fn cancel(&self, id: &JobId, now: Instant) -> Result<JobRecord, StoreError> {
        let id = id.clone();
        self.with_writer("cancel an export job", move |conn| {
            let sql = |e| sql_error("cancel an export job", e);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
            let job = get_job(&tx, &id)?;
            if job.status == JobStatus::Cancelled {
                return Err(StoreError::JobNotFound { job: id.to_string() });
            }
            tx.execute(
                "UPDATE export_job SET status = 'cancelled', finished_at = COALESCE(finished_at, ?2),
                        lease_owner = NULL, lease_expires = NULL WHERE id = ?1",
                params![id.as_str(), now.as_micros()],
            )
            .map_err(sql)?;
            let job = get_job(&tx, &id)?;
            tx.commit().map_err(sql)?;
            Ok(job)
        })
        .await
    }

    async fn files_to_delete(&self, now: Instant, limit: usize) -> Result<Vec<JobId>, StoreError> {
        self.with_reader("list expired export jobs", move |conn| {
            let sql = |e| sql_error("list expired export jobs", e);
            let mut statement = conn
                .prepare_cached(
                    "SELECT id FROM export_job WHERE files_deleted = 0
                       AND ((status = 'completed' AND expires_at < ?1) OR status IN ('cancelled', 'error'))
                     ORDER BY id LIMIT ?2",
                )
                .map_err(sql)?;
            let ids = statement
                .query_map(params![now.as_micros(), to_i64(limit as u64)], |row| row.get::<_, String>(0))
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)?;
            Ok(ids.iter().filter_map(|id| JobId::parse(id)).collect())
        })
        .await
    }

    async fn manifest_pages(&self, id: &JobId) -> Result<Vec<String>, StoreError> {
        let id = id.clone();
        self.with_reader("read manifest pages", move |conn| read_pages(conn, &id)).await
    }

    async fn freeze_manifest_page(
        &self,
        id: &JobId,
        page: u32,
        page_json: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (id, page_json) = (id.clone(), page_json.to_owned());
        self.with_writer("freeze a manifest page", move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO export_manifest_page (job_id, page_no, page) VALUES (?1, ?2, ?3)",
                params![id.as_str(), i64::from(page), page_json],
            )
            .map_err(|e| sql_error("freeze a manifest page", e))?;
            read_pages(conn, &id)
        })
        .await
    }

    async fn mark_files_deleted(&self, id: &JobId) -> Result<(), StoreError> {
        let id = id.clone();
        self.with_writer("mark export files deleted", move |conn| {
            conn.execute(
                "UPDATE export_job SET files_deleted = 1 WHERE id = ?1",
                params![id.as_str()],
            )
            .map_err(|e| sql_error("mark export files deleted", e))?;
            Ok(())
        })
        .await
    }
}
