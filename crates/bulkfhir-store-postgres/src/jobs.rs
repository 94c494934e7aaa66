//! [`JobStore`] on PostgreSQL: tables `export_job`, `export_unit`, `export_manifest_page`.
//!
//! Several nodes share the tables. A claim takes the oldest free job with
//! `FOR UPDATE SKIP LOCKED`, so two nodes claiming at once take different jobs; every write a
//! runner makes about its job is fenced by `lease_owner` in the same statement.

use std::time::Duration;

use async_trait::async_trait;
use bulkfhir_model::Instant;
use bulkfhir_store::{
    JobId, JobQuery, JobRecord, JobStatus, JobStore, NewJob, Snapshot, StoreError, UnitRecord,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::{
    error::{pg_error, to_i64, to_u64},
    store::PostgresStore,
};

/// The advisory lock key that makes the queue-limit check and the insert of a job atomic
/// across nodes.
const CREATE_LOCK: i64 = 0x6275_6c6b_6a6f_6273;

const JOB_COLUMNS: &str = "id, status, requester, request, plan, request_time, snapshot_seq, snapshot_time,
    progress_percent, progress_text, manifest, error_message, finished_at, expires_at, files_deleted, lease_owner";

fn row_to_job(row: &Row) -> JobRecord {
    let id: &str = row.get(0);
    let status: &str = row.get(1);
    JobRecord {
        id: JobId::parse(id).unwrap_or_default(),
        status: JobStatus::parse(status).unwrap_or(JobStatus::Error),
        requester: row.get(2),
        request: row.get(3),
        plan: row.get(4),
        request_time: Instant::from_micros(row.get(5)),
        snapshot: Snapshot { seq: to_u64(row.get(6)), time: Instant::from_micros(row.get(7)) },
        progress_percent: u8::try_from(row.get::<_, i32>(8)).unwrap_or(0),
        progress_text: row.get(9),
        manifest: row.get(10),
        error_message: row.get(11),
        finished_at: row.get::<_, Option<i64>>(12).map(Instant::from_micros),
        expires_at: row.get::<_, Option<i64>>(13).map(Instant::from_micros),
        files_deleted: row.get(14),
        lease_owner: row.get(15),
        taken_over_from: None,
    }
}

async fn get_job(client: &impl GenericClient, id: &JobId) -> Result<JobRecord, StoreError> {
    client
        .query_opt(&format!("SELECT {JOB_COLUMNS} FROM export_job WHERE id = $1"), &[&id.as_str()])
        .await
        .map_err(|e| pg_error("read an export job", e))?
        .map(|row| row_to_job(&row))
        .ok_or_else(|| StoreError::JobNotFound { job: id.to_string() })
}

async fn read_pages(client: &impl GenericClient, id: &JobId) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query(
            "SELECT page FROM export_manifest_page WHERE job_id = $1 ORDER BY page_no",
            &[&id.as_str()],
        )
        .await
        .map_err(|e| pg_error("read manifest pages", e))?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// A fenced update must touch exactly one row of an active job leased to its runner.
fn fenced(id: &JobId, changed: Result<u64, tokio_postgres::Error>) -> Result<(), StoreError> {
    match changed.map_err(|e| pg_error("update an export job", e))? {
        0 => Err(StoreError::LeaseLost { job: id.to_string() }),
        _ => Ok(()),
    }
}

fn lease_end(now: Instant, lease: Duration) -> i64 {
    now.as_micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

/// The channel on which nodes tell each other there may be export work (`LISTEN` in
/// [`PostgresStore::listen_for_work`]).
pub(crate) const WORK_CHANNEL: &str = "bulkfhir_export_work";

/// Tells the nodes listening on [`WORK_CHANNEL`] to look for work. Sent in a transaction,
/// PostgreSQL delivers it when that commits, and not at all if it rolls back.
async fn notify_work(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("NOTIFY {WORK_CHANNEL}")).await
}

#[async_trait]
impl JobStore for PostgresStore {
    fn work_signals(&self) -> Option<tokio::sync::mpsc::Receiver<()>> {
        Some(self.listen_for_work())
    }

    async fn create(&self, job: NewJob, max_active: usize) -> Result<(), StoreError> {
        let sql = |e| pg_error("create an export job", e);
        let mut client = self.client("create an export job").await?;
        let tx = client.transaction().await.map_err(sql)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK]).await.map_err(sql)?;
        let active: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM export_job WHERE status IN ('accepted', 'in-progress')",
                &[],
            )
            .await
            .map_err(sql)?
            .get(0);
        if to_u64(active) >= max_active as u64 {
            return Err(StoreError::TooManyJobs { active: to_u64(active), limit: max_active });
        }
        tx.execute(
            "INSERT INTO export_job (id, status, requester, request, plan, request_time, snapshot_seq, snapshot_time)
             VALUES ($1, 'accepted', $2, $3, $4, $5, $6, $7)",
            &[
                &job.id.as_str(),
                &job.requester,
                &job.request,
                &job.plan,
                &job.request_time.as_micros(),
                &to_i64(job.snapshot.seq),
                &job.snapshot.time.as_micros(),
            ],
        )
        .await
        .map_err(sql)?;
        let indexes: Vec<i32> =
            (0..job.units.len()).map(|i| i32::try_from(i).unwrap_or(i32::MAX)).collect();
        tx.execute(
            "INSERT INTO export_unit (job_id, idx, spec)
             SELECT $1, u.idx, u.spec FROM unnest($2::integer[], $3::text[]) AS u(idx, spec)",
            &[&job.id.as_str(), &indexes, &job.units],
        )
        .await
        .map_err(sql)?;
        notify_work(&tx).await.map_err(sql)?;
        tx.commit().await.map_err(sql)
    }

    async fn get(&self, id: &JobId) -> Result<JobRecord, StoreError> {
        get_job(&self.client("read an export job").await?, id).await
    }

    async fn count_by_status(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        let client = self.client("count export jobs").await?;
        let rows = client
            .query("SELECT status, COUNT(*) FROM export_job GROUP BY status", &[])
            .await
            .map_err(|e| pg_error("count export jobs", e))?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                JobStatus::parse(row.get::<_, &str>(0)).map(|s| (s, to_u64(row.get(1))))
            })
            .collect())
    }

    async fn search(&self, query: &JobQuery) -> Result<Vec<JobRecord>, StoreError> {
        let client = self.client("search export jobs").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM export_job
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR requester = $2)
                     ORDER BY id DESC LIMIT $3"
                ),
                &[
                    &query.status.map(JobStatus::as_str),
                    &query.requester,
                    &to_i64(query.limit as u64),
                ],
            )
            .await
            .map_err(|e| pg_error("search export jobs", e))?;
        Ok(rows.iter().map(row_to_job).collect())
    }

    async fn claim(
        &self,
        owner: &str,
        reclaim_prefix: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<Option<JobRecord>, StoreError> {
        let sql = |e| pg_error("claim an export job", e);
        let mut client = self.client("claim an export job").await?;
        let tx = client.transaction().await.map_err(sql)?;
        let found = tx
            .query_opt(
                "SELECT id, lease_owner FROM export_job
                 WHERE status IN ('accepted', 'in-progress')
                   AND (lease_owner IS NULL OR lease_expires < $1
                        OR ($2 <> '' AND starts_with(lease_owner, $2) AND lease_owner <> $3))
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[&now.as_micros(), &reclaim_prefix, &owner],
            )
            .await
            .map_err(sql)?;
        let Some(found) = found else { return Ok(None) };
        let (id, previous_owner): (String, Option<String>) = (found.get(0), found.get(1));
        tx.execute(
            "UPDATE export_job SET status = 'in-progress', lease_owner = $2, lease_expires = $3
             WHERE id = $1",
            &[&id, &owner, &lease_end(now, lease)],
        )
        .await
        .map_err(sql)?;
        let mut job = get_job(&tx, &JobId::parse(&id).unwrap_or_default()).await?;
        // Its units can be helped with now: the other nodes look at once.
        notify_work(&tx).await.map_err(sql)?;
        tx.commit().await.map_err(sql)?;
        job.taken_over_from = previous_owner.filter(|previous| previous != owner);
        Ok(Some(job))
    }

    async fn renew(
        &self,
        id: &JobId,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        let client = self.client("renew an export job lease").await?;
        let changed = client
            .execute(
                "UPDATE export_job SET lease_expires = $3
                 WHERE id = $1 AND lease_owner = $2 AND status = 'in-progress'",
                &[&id.as_str(), &owner, &lease_end(now, lease)],
            )
            .await;
        fenced(id, changed)
    }

    async fn release(&self, id: &JobId, owner: &str) -> Result<(), StoreError> {
        let client = self.client("release an export job lease").await?;
        client
            .execute(
                "UPDATE export_job SET lease_owner = NULL, lease_expires = NULL
                 WHERE id = $1 AND lease_owner = $2",
                &[&id.as_str(), &owner],
            )
            .await
            .map_err(|e| pg_error("release an export job lease", e))?;
        Ok(())
    }

    async fn units(&self, id: &JobId) -> Result<Vec<UnitRecord>, StoreError> {
        let client = self.client("read export units").await?;
        let rows = client
            .query(
                "SELECT idx, spec, checkpoint, done, lease_owner, lease_expires
                 FROM export_unit WHERE job_id = $1 ORDER BY idx",
                &[&id.as_str()],
            )
            .await
            .map_err(|e| pg_error("read export units", e))?;
        Ok(rows
            .iter()
            .map(|row| UnitRecord {
                index: u32::try_from(row.get::<_, i32>(0)).unwrap_or(u32::MAX),
                spec: row.get(1),
                checkpoint: row.get(2),
                done: row.get(3),
                lease_owner: row.get(4),
                lease_expires: row.get::<_, Option<i64>>(5).map(Instant::from_micros),
            })
            .collect())
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
        let client = self.client("lease an export unit").await?;
        let unit = i32::try_from(unit).unwrap_or(i32::MAX);
        // A conditional update: two nodes racing for one unit both wait for the row lock, and
        // the second re-checks the condition against the first's lease and changes nothing.
        let changed = client
            .execute(
                "UPDATE export_unit u SET lease_owner = $3, lease_expires = $5
                 FROM export_job j
                 WHERE u.job_id = $1 AND u.idx = $2 AND NOT u.done
                   AND (u.lease_owner IS NULL OR u.lease_owner = $3 OR u.lease_expires < $6
                        OR ($4 <> '' AND starts_with(u.lease_owner, $4)))
                   AND j.id = $1 AND j.status = 'in-progress'",
                &[
                    &id.as_str(),
                    &unit,
                    &owner,
                    &reclaim_prefix,
                    &lease_end(now, lease),
                    &now.as_micros(),
                ],
            )
            .await
            .map_err(|e| pg_error("lease an export unit", e))?;
        Ok(changed == 1)
    }

    async fn renew_unit(
        &self,
        id: &JobId,
        unit: u32,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Result<(), StoreError> {
        let client = self.client("renew an export unit lease").await?;
        let unit = i32::try_from(unit).unwrap_or(i32::MAX);
        let changed = client
            .execute(
                "UPDATE export_unit u SET lease_expires = $4
                 FROM export_job j
                 WHERE u.job_id = $1 AND u.idx = $2 AND u.lease_owner = $3 AND NOT u.done
                   AND j.id = $1 AND j.status = 'in-progress'",
                &[&id.as_str(), &unit, &owner, &lease_end(now, lease)],
            )
            .await;
        fenced(id, changed)
    }

    async fn release_unit(&self, id: &JobId, unit: u32, owner: &str) -> Result<(), StoreError> {
        let client = self.client("release an export unit lease").await?;
        let unit = i32::try_from(unit).unwrap_or(i32::MAX);
        client
            .execute(
                "UPDATE export_unit SET lease_owner = NULL, lease_expires = NULL
                 WHERE job_id = $1 AND idx = $2 AND lease_owner = $3 AND NOT done",
                &[&id.as_str(), &unit, &owner],
            )
            .await
            .map_err(|e| pg_error("release an export unit lease", e))?;
        // Another node may take it over now, rather than when its lease would have run out.
        notify_work(&client).await.map_err(|e| pg_error("release an export unit lease", e))?;
        Ok(())
    }

    async fn checkpoint(
        &self,
        id: &JobId,
        owner: &str,
        unit: u32,
        checkpoint: &str,
        done: bool,
    ) -> Result<(), StoreError> {
        let client = self.client("checkpoint an export unit").await?;
        let unit = i32::try_from(unit).unwrap_or(i32::MAX);
        // The fence and the write in one statement: the unit changes only while `owner` holds
        // its lease and the job is in progress.
        let changed = client
            .execute(
                "UPDATE export_unit u SET checkpoint = $4, done = $5
                 FROM export_job j
                 WHERE u.job_id = $1 AND u.idx = $3 AND u.lease_owner = $2
                   AND j.id = $1 AND j.status = 'in-progress'",
                &[&id.as_str(), &owner, &unit, &checkpoint, &done],
            )
            .await;
        fenced(id, changed)
    }

    async fn set_progress(
        &self,
        id: &JobId,
        owner: &str,
        percent: u8,
        text: &str,
    ) -> Result<(), StoreError> {
        let client = self.client("record export progress").await?;
        let changed = client
            .execute(
                "UPDATE export_job SET progress_percent = $3, progress_text = $4
                 WHERE id = $1 AND lease_owner = $2 AND status = 'in-progress'",
                &[&id.as_str(), &owner, &i32::from(percent.min(100)), &text],
            )
            .await;
        fenced(id, changed)
    }

    async fn complete(
        &self,
        id: &JobId,
        owner: &str,
        manifest: &str,
        now: Instant,
        expires_at: Instant,
    ) -> Result<(), StoreError> {
        let client = self.client("complete an export job").await?;
        let changed = client
            .execute(
                "UPDATE export_job SET status = 'completed', manifest = $3, finished_at = $4,
                        expires_at = $5, progress_percent = 100, progress_text = 'complete',
                        lease_owner = NULL, lease_expires = NULL
                 WHERE id = $1 AND lease_owner = $2 AND status = 'in-progress'",
                &[&id.as_str(), &owner, &manifest, &now.as_micros(), &expires_at.as_micros()],
            )
            .await;
        fenced(id, changed)
    }

    async fn fail(
        &self,
        id: &JobId,
        owner: &str,
        message: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        let client = self.client("fail an export job").await?;
        let changed = client
            .execute(
                "UPDATE export_job SET status = 'error', error_message = $3, finished_at = $4,
                        lease_owner = NULL, lease_expires = NULL
                 WHERE id = $1 AND lease_owner = $2 AND status = 'in-progress'",
                &[&id.as_str(), &owner, &message, &now.as_micros()],
            )
            .await;
        fenced(id, changed)
    }

    async fn cancel(&self, id: &JobId, now: Instant) -> Result<JobRecord, StoreError> {
        let sql = |e| pg_error("cancel an export job", e);
        let mut client = self.client("cancel an export job").await?;
        let tx = client.transaction().await.map_err(sql)?;
        let row = tx
            .query_opt("SELECT status FROM export_job WHERE id = $1 FOR UPDATE", &[&id.as_str()])
            .await
            .map_err(sql)?;
        match row {
            None => return Err(StoreError::JobNotFound { job: id.to_string() }),
            Some(row) if row.get::<_, &str>(0) == JobStatus::Cancelled.as_str() => {
                return Err(StoreError::JobNotFound { job: id.to_string() });
            }
            Some(_) => {}
        }
        tx.execute(
            "UPDATE export_job SET status = 'cancelled', finished_at = COALESCE(finished_at, $2),
                    lease_owner = NULL, lease_expires = NULL WHERE id = $1",
            &[&id.as_str(), &now.as_micros()],
        )
        .await
        .map_err(sql)?;
        let job = get_job(&tx, id).await?;
        tx.commit().await.map_err(sql)?;
        Ok(job)
    }

    async fn files_to_delete(&self, now: Instant, limit: usize) -> Result<Vec<JobId>, StoreError> {
        let client = self.client("list expired export jobs").await?;
        let rows = client
            .query(
                "SELECT id FROM export_job WHERE NOT files_deleted
                   AND ((status = 'completed' AND expires_at < $1) OR status IN ('cancelled', 'error'))
                 ORDER BY id LIMIT $2",
                &[&now.as_micros(), &to_i64(limit as u64)],
            )
            .await
            .map_err(|e| pg_error("list expired export jobs", e))?;
        Ok(rows.iter().filter_map(|row| JobId::parse(row.get::<_, &str>(0))).collect())
    }

    async fn mark_files_deleted(&self, id: &JobId) -> Result<(), StoreError> {
        let client = self.client("mark export files deleted").await?;
        client
            .execute("UPDATE export_job SET files_deleted = true WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(|e| pg_error("mark export files deleted", e))?;
        Ok(())
    }

    async fn manifest_pages(&self, id: &JobId) -> Result<Vec<String>, StoreError> {
        read_pages(&self.client("read manifest pages").await?, id).await
    }

    async fn freeze_manifest_page(
        &self,
        id: &JobId,
        page: u32,
        page_json: &str,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client("freeze a manifest page").await?;
        client
            .execute(
                "INSERT INTO export_manifest_page (job_id, page_no, page) VALUES ($1, $2, $3)
                 ON CONFLICT (job_id, page_no) DO NOTHING",
                &[&id.as_str(), &i32::try_from(page).unwrap_or(i32::MAX), &page_json],
            )
            .await
            .map_err(|e| pg_error("freeze a manifest page", e))?;
        read_pages(&client, id).await
    }
}
