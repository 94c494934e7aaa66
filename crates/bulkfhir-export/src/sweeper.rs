//! The sweeper: deletes the files of expired, cancelled and failed exports.

use std::sync::Arc;

use bulkfhir_model::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{ExportError, service::Shared};

/// Deletes files whose time is up, every `sweep_interval`.
#[derive(Debug, Clone)]
pub struct Sweeper {
    shared: Arc<Shared>,
}

impl Sweeper {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Sweeper { shared }
    }

    /// Sweeps until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.sweep_once().await {
                warn!(error = %error, "export file sweep failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.shared.config.sweep_interval) => {}
            }
        }
    }

    /// One pass; returns how many jobs' files were deleted.
    pub async fn sweep_once(&self) -> Result<u64, ExportError> {
        let mut n_jobs = 0;
        for id in self.shared.jobs.files_to_delete(Instant::now(), 100).await? {
            // A job still running here deletes its own files when it stops.
            if self.shared.is_running(&id) {
                continue;
            }
            self.shared.delete_files(&id).await;
            n_jobs += 1;
        }
        Ok(n_jobs)
    }
}
