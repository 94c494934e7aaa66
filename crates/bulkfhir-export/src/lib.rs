//! The Bulk Data export engine: plans an `$export` into work units read from one store snapshot,
//! streams them into NDJSON files, checkpoints every finished file, and resumes after a crash.
//!
//! It knows the [`ResourceStore`](bulkfhir_store::ResourceStore) and
//! [`JobStore`](bulkfhir_store::JobStore) traits and the [`OutputStore`](bulkfhir_output::OutputStore)
//! facade, and nothing of HTTP, SQL or which bucket the files land in.
//!
//! - [`ExportService`]: what the HTTP edge calls (kick-off, status, cancel, files, job records);
//! - [`Runner`]: claims jobs under a lease, runs their units, finalizes the manifest;
//! - [`Sweeper`]: deletes the files of expired, cancelled and failed jobs.
#![warn(missing_docs)]

mod access;
mod blocks;
mod config;
mod docs;
mod error;
mod parquet;
mod plan;
mod runner;
mod service;
mod sweeper;
pub mod telemetry;
mod unit;

pub use access::{ExportBound, JobAccess};
pub use config::ExportConfig;
pub use docs::{FileEntry, FileKind, ManifestDoc, StoredRequest, StoredView};
pub use error::ExportError;
pub use plan::group_patients;
pub use runner::Runner;
pub use service::{
    ExportService, FileDownload, JobView, KickoffContext, LIVE_SAMPLES, LiveProgress, StatusReport,
    StatusView, ViewExport,
};
pub use sweeper::Sweeper;
