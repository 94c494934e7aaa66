//! The NDJSON bulk loader: files of one resource per line, any types, straight into a store.
//!
//! One blocking thread reads and checks lines ([`PreparedResource::parse`]) while the store writes
//! the previous batch, so parsing and writing overlap. A line that fails is reported with its file
//! and line number and the load goes on; a resource with an `id` is upserted under it, one without
//! gets a fresh id.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use bulkfhir_model::{PreparedResource, ResourceId};
use tokio::sync::mpsc;

use crate::{Atomicity, ResourceStore, StoreError, WriteOp};

/// How a load runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Resources per store transaction.
    pub batch_size: usize,
    /// How many rejected lines to keep in the report (all are counted).
    pub max_reported_rejections: usize,
    /// Keep each resource's own `meta.versionId` and `meta.lastUpdated` (a replica of the
    /// server it was exported from); a line without them is rejected.
    pub keep_source_meta: bool,
    /// The caller is the store's one user until the load returns (no server on it): an empty
    /// store may then load in bulk mode ([`ResourceStore::begin_bulk_load`]).
    pub exclusive: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            batch_size: 5_000,
            max_reported_rejections: 1_000,
            keep_source_meta: false,
            exclusive: false,
        }
    }
}

/// A line that was not loaded.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line number.
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Files read.
    pub files: u64,
    /// Resources stored.
    pub loaded: u64,
    /// Lines refused (counted in full).
    pub n_rejected: u64,
    /// The first rejected lines, up to `max_reported_rejections`.
    pub rejections: Vec<Rejection>,
    /// Bytes of NDJSON read (uncompressed).
    pub bytes: u64,
}

/// Progress reported after every batch.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    /// Resources stored so far.
    pub loaded: u64,
    /// Bytes read so far.
    pub bytes: u64,
}

/// Why a load stopped before its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A file or folder could not be read.
    #[error("read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store failed as a whole (not one resource).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Lists the NDJSON files named by `paths`: files as given, folders by their `*.ndjson`,
/// `*.ndjson.gz` and `*.jsonl` files (not recursive), sorted by name.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadError::Io { path, source }
    };
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            let mut in_dir = Vec::new();
            for dir_entry in std::fs::read_dir(path).map_err(io_err(path))? {
                let file = dir_entry.map_err(io_err(path))?.path();
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.ends_with(".ndjson")
                    || name.ends_with(".ndjson.gz")
                    || name.ends_with(".jsonl")
                {
                    in_dir.push(file);
                }
            }
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

struct Batch {
    ops: Vec<WriteOp>,
    /// (file index, line number) per op.
    origins: Vec<(usize, u64)>,
    rejections: Vec<Rejection>,
    bytes: u64,
}

/// Loads every line of `files` into `store`.
pub async fn load_files(
    store: &dyn ResourceStore,
    files: Vec<PathBuf>,
    options: LoadOptions,
    progress: &(dyn Fn(LoadProgress) + Send + Sync),
) -> Result<LoadReport, LoadError> {
    let bulk = options.exclusive && store.begin_bulk_load().await?;
    if bulk {
        tracing::info!("the store is empty: loading in bulk mode");
    }
    let loaded = load_lines(store, files, options, progress).await;
    if bulk {
        // Also after a failed load: what it committed is kept, and needs the index.
        store.end_bulk_load().await?;
    }
    loaded
}

async fn load_lines(
    store: &dyn ResourceStore,
    files: Vec<PathBuf>,
    options: LoadOptions,
    progress: &(dyn Fn(LoadProgress) + Send + Sync),
) -> Result<LoadReport, LoadError> {
    let (sender, mut receiver) = mpsc::channel::<Result<Batch, LoadError>>(2);
    let reader_files = files.clone();
    let batch_size = options.batch_size.max(1);
    let keep_source_meta = options.keep_source_meta;
    let reader = tokio::task::spawn_blocking(move || {
        read_batches(&reader_files, batch_size, keep_source_meta, &sender)
    });
    let mut report = LoadReport { files: files.len() as u64, ..LoadReport::default() };
    let keep_rejection = |report: &mut LoadReport, rejection: Rejection| {
        report.n_rejected += 1;
        if report.rejections.len() < options.max_reported_rejections {
            report.rejections.push(rejection);
        }
    };
    while let Some(batch) = receiver.recv().await {
        let batch = batch?;
        report.bytes += batch.bytes;
        for rejection in batch.rejections {
            keep_rejection(&mut report, rejection);
        }
        let results = store.transact(batch.ops, Atomicity::EachOnItsOwn).await?;
        for (result, (file_idx, line)) in results.into_iter().zip(batch.origins) {
            match result {
                Ok(_) => report.loaded += 1,
                Err(error) => keep_rejection(
                    &mut report,
                    Rejection { file: files[file_idx].clone(), line, reason: error.to_string() },
                ),
            }
        }
        progress(LoadProgress { loaded: report.loaded, bytes: report.bytes });
    }
    // The reader ends when the channel closes; a panic there is a bug, reported as such.
    reader.await.map_err(|e| LoadError::Store(StoreError::backend("run the NDJSON reader", e)))?;
    Ok(report)
}

fn read_batches(
    files: &[PathBuf],
    batch_size: usize,
    keep_source_meta: bool,
    sender: &mpsc::Sender<Result<Batch, LoadError>>,
) {
    let new_batch = || Batch {
        ops: Vec::with_capacity(batch_size),
        origins: Vec::with_capacity(batch_size),
        rejections: Vec::new(),
        bytes: 0,
    };
    let mut batch = new_batch();
    for (file_idx, path) in files.iter().enumerate() {
        let reader = match open_ndjson(path) {
            Ok(reader) => reader,
            Err(source) => {
                let _ = sender.blocking_send(Err(LoadError::Io { path: path.clone(), source }));
                return;
            }
        };
        let mut line_no = 0u64;
        let mut line = Vec::with_capacity(64 * 1024);
        let mut reader = reader;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(n) => batch.bytes += n as u64,
                Err(source) => {
                    let _ = sender.blocking_send(Err(LoadError::Io { path: path.clone(), source }));
                    return;
                }
            }
            line_no += 1;
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            let parsed = PreparedResource::parse(trimmed).and_then(|resource| {
                if keep_source_meta { resource.keeping_source_meta() } else { Ok(resource) }
            });
            match parsed {
                Ok(resource) => {
                    let op = match resource.id().cloned() {
                        Some(id) => WriteOp::Update { resource, id, if_match: None },
                        None => WriteOp::Create { resource, id: ResourceId::new_random() },
                    };
                    batch.ops.push(op);
                    batch.origins.push((file_idx, line_no));
                }
                Err(error) => batch.rejections.push(Rejection {
                    file: path.clone(),
                    line: line_no,
                    reason: error.to_string(),
                }),
            }
            if batch.ops.len() >= batch_size {
                let full = std::mem::replace(&mut batch, new_batch());
                if sender.blocking_send(Ok(full)).is_err() {
                    return;
                }
            }
        }
    }
    let _ = sender.blocking_send(Ok(batch));
}

fn open_ndjson(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let file = File::open(path)?;
    let is_gzip = path.extension().is_some_and(|ext| ext == "gz");
    let inner: Box<dyn Read> =
        if is_gzip { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) };
    Ok(Box::new(BufReader::with_capacity(1 << 20, inner)))
}
