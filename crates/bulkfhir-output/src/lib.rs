//! The output side of bulk export: where the export engine writes NDJSON files and from where
//! the HTTP layer serves them.
//!
//! [`OutputStore`] is a facade over an [`object_store::ObjectStore`] (local filesystem and
//! in memory today; S3, Azure and GCS through [`OutputStore::from_object_store`]). It owns the
//! mapping of [`OutputKey`]s to object names, gzip, atomic file creation and streaming reads, so
//! the engine never learns which backend is behind it. It sits beside the store crates:
//! `model ← output ← export ← server`.
//!
//! # Contract
//!
//! - **Keys.** An [`OutputKey`] is a relative, `/`-separated path of `[A-Za-z0-9._-]` segments,
//!   with no empty, `.` or `..` segments. It is placed below the store's prefix unchanged.
//! - **Atomic files.** [`OutputStore::create`] returns a [`FileWriter`]. Its bytes become visible
//!   under the key only when [`FileWriter::finish`] succeeds, and then all at once. An error,
//!   [`FileWriter::abort`], dropping the writer or a crash leaves no object under the key (but may
//!   leave staged data, see below). Finishing replaces an object already under the key.
//! - **Gzip.** [`Compression::Gzip`] stores a single gzip member per file, so every gzip reader
//!   (including ones that stop after the first member) sees the whole file. Compression runs on
//!   the blocking thread pool.
//! - **Bounded memory.** Parts of [`OutputStore::with_part_size`] bytes (8 MiB by default) are
//!   uploaded in the background with at most four in flight; `write` waits when the limit is
//!   reached. A writer holds about five parts plus 1 MiB of uncompressed input.
//! - **Reads as stored.** [`OutputStore::read`] streams the stored bytes (gzip stays compressed)
//!   for the whole object or a byte range `start <= end <= size`; anything else is
//!   [`OutputError::InvalidRange`].
//! - **Listing** shows complete objects only, never uploads in progress or interrupted.
//! - **Leftovers.** The local filesystem stages an upload as `<file>#<n>` next to its
//!   destination; a crash leaves that file behind, hidden from `list`. Cloud stores keep
//!   interrupted multipart uploads out of sight of the object store API; with
//!   [`OutputStore::with_upload_clean_up`] (S3, GCS) they are listed by prefix with the bucket's
//!   own `ListMultipartUploads`. [`OutputStore::remove_incomplete`] (before resuming a job) and
//!   [`OutputStore::delete_prefix`] remove staged files and abort the uploads in progress.
//! - **Errors.** Every failure is an [`OutputError`]; [`OutputError::kind`] gives the shared
//!   [`bulkfhir_model::ErrorKind`].
#![warn(missing_docs)]

mod destination;
mod error;
mod key;
mod store;
mod uploads;
mod writer;

pub use destination::{CloudOptions, Destination, DestinationPolicy};
pub use error::OutputError;
pub use key::OutputKey;
pub use store::OutputStore;
pub use writer::{Compression, FileWriter, FinishedFile};
