//! WAL checkpoints on a thread of their own.
//!
//! In WAL mode every committed page is written twice: appended to the WAL by the commit, then
//! copied into the database file by a checkpoint. SQLite's automatic checkpoint runs inside the
//! commit that crosses the threshold, on the one writer connection, so every write waited for
//! it (about a fifth of the writer's time in a bulk load). Here the writer only nudges a
//! dedicated thread after each commit; the thread runs PASSIVE checkpoints, which never block
//! the writer or readers, on its own connection and core. The writer keeps a high automatic
//! threshold as a safety net, should this thread fall far behind.
//!
//! A WAL only starts over from its beginning when a write transaction finds every frame already
//! copied; with a writer that never pauses (a bulk load) that moment never comes and the file
//! grows. So once the WAL is past [`LARGE_WAL_PAGES`], the thread finishes the copy while holding
//! the writer's lock (a short pause: it has been keeping up), and the next write starts over.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

use bulkfhir_store::StoreError;
use rusqlite::Connection;

/// At most one checkpoint per this interval: small writes (REST traffic) do not each pay one.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// WAL pages past which the thread catches up with the writer paused (64 MiB of 16 KiB pages).
const LARGE_WAL_PAGES: i64 = 4096;

/// Nudges the checkpoint thread; dropping it stops the thread after a last checkpoint.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread with its own connection to the database at `path`.
    /// `writer` is the store's writer connection, locked only to let a long WAL start over.
    pub(crate) fn start(
        conn: Connection,
        writer: Arc<Mutex<Connection>>,
        path: &Path,
    ) -> Result<Self, StoreError> {
        let (nudge, nudges) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("bulkfhir-checkpoint".to_owned())
            .spawn(move || run(&conn, &writer, &nudges))
            .map_err(|e| {
                StoreError::backend(
                    format!("start the checkpoint thread for {}", path.display()),
                    e,
                )
            })?;
        Ok(Checkpointer { nudge: Some(nudge), thread: Some(thread) })
    }

    /// Says that a write committed; never blocks.
    pub(crate) fn nudge(&self) {
        // Full means a checkpoint is already due.
        if let Some(nudge) = &self.nudge {
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Waits for the last checkpoint (the store is closing), so that a process that exits
    /// next (`bulkfhir load`) leaves a short WAL.
    fn drop(&mut self) {
        drop(self.nudge.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the WAL checkpoint thread panicked");
        }
    }
}

fn run(conn: &Connection, writer: &Mutex<Connection>, nudges: &Receiver<()>) {
    let mut last = Instant::now();
    let mut backoff = Backoff::default();
    'nudged: while nudges.recv().is_ok() {
        // Nudges until the interval after the last checkpoint are covered by the next one.
        let due = last + backoff.interval();
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            match nudges.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break 'nudged,
            }
        }
        last = Instant::now();
        if let Some(log_pages) = backoff.record(checkpoint(conn))
            && log_pages >= LARGE_WAL_PAGES
        {
            let _paused = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            backoff.record(checkpoint(conn));
        }
    }
    // The store is closed: one last checkpoint, so the next start finds a short WAL.
    backoff.record(checkpoint(conn));
}

/// Runs a PASSIVE checkpoint; returns the WAL's length in pages.
fn checkpoint(conn: &Connection) -> Result<i64, rusqlite::Error> {
    let (log_pages, copied_pages) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })?;
    tracing::trace!(log_pages, copied_pages, "WAL checkpoint");
    Ok(log_pages)
}

/// Checkpoint failures (a full disk, say) back off from [`MIN_INTERVAL`] to [`MAX_INTERVAL`],
/// and only changes of state are logged: the first failure, and the recovery.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

/// The longest wait between two checkpoint attempts while they fail.
const MAX_INTERVAL: Duration = Duration::from_secs(30);

impl Backoff {
    fn interval(&self) -> Duration {
        let factor = 1_u32 << self.failures.min(16);
        MIN_INTERVAL.saturating_mul(factor).min(MAX_INTERVAL)
    }

    /// Records an attempt's result, logging state changes; the WAL length when it worked.
    fn record(&mut self, result: Result<i64, rusqlite::Error>) -> Option<i64> {
        match result {
            Ok(log_pages) => {
                if self.failures > 0 {
                    tracing::info!(failures = self.failures, "WAL checkpoints work again");
                }
                self.failures = 0;
                Some(log_pages)
            }
            Err(error) => {
                if self.failures == 0 {
                    tracing::warn!(
                        %error,
                        "WAL checkpoint failed; retrying with backoff (up to every {} s) and \
                         logging only when it works again",
                        MAX_INTERVAL.as_secs()
                    );
                } else {
                    tracing::debug!(%error, failures = self.failures + 1, "WAL checkpoint failed again");
                }
                self.failures = self.failures.saturating_add(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_checkpoints_back_off_and_recover() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.interval(), MIN_INTERVAL);
        let failure = || Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None));
        let mut intervals = Vec::new();
        for _ in 0..20 {
            assert_eq!(backoff.record(failure()), None);
            intervals.push(backoff.interval());
        }
        assert_eq!(intervals[0], MIN_INTERVAL * 2);
        assert!(intervals.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*intervals.last().unwrap(), MAX_INTERVAL);
        assert_eq!(backoff.record(Ok(7)), Some(7));
        assert_eq!(backoff.interval(), MIN_INTERVAL);
    }
}
