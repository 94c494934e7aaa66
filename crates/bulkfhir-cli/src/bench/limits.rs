//! The machine's limits on the bytes an export produced: copying them file to file (I/O) and
//! gzipping them on all cores (compression).
//!
//! Both split the files into 8 MiB chunks that one thread per core takes in turn, so one large
//! file does not leave cores idle. The copy reads and writes 1 MiB at a time. Like the export's
//! local output store (object_store `LocalFileSystem` with fsync on), the fsync variant writes
//! each copy under a staging name, fsyncs it, renames it into place and fsyncs the directory;
//! the variant without fsync is reported for comparison.

use std::{
    fs::File,
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use flate2::{Compression, write::GzEncoder};

const CHUNK: u64 = 8 << 20;
const BUFFER: usize = 1 << 20;

/// A file of the export.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
}

/// The files in `dir` (sizes from the file system).
pub(crate) fn source_files(dir: &Path, names: &[String]) -> anyhow::Result<Vec<SourceFile>> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let len = std::fs::metadata(&path)
                .with_context(|| format!("stat export file {}", path.display()))?
                .len();
            Ok(SourceFile { path, len })
        })
        .collect()
}

struct Chunk {
    file: usize,
    offset: u64,
    len: u64,
}

fn chunks(files: &[SourceFile]) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (file, source) in files.iter().enumerate() {
        let mut offset = 0;
        while offset < source.len {
            let len = CHUNK.min(source.len - offset);
            chunks.push(Chunk { file, offset, len });
            offset += len;
        }
    }
    chunks
}

/// Runs `work(index)` for every index below `n` on `threads` threads; the first error wins.
fn parallel(
    threads: usize,
    n: usize,
    work: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= n {
                            return Ok(());
                        }
                        work(index)?;
                    }
                })
            })
            .collect();
        let mut result = Ok(());
        for handle in handles {
            let outcome =
                handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    })
}

/// Copies every file into `dest_dir` (which must be empty or missing) and returns the time taken.
pub(crate) fn copy_files(
    files: &[SourceFile],
    dest_dir: &Path,
    threads: usize,
    fsync: bool,
) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(dest_dir).with_context(|| format!("create {}", dest_dir.display()))?;
    let started = Instant::now();
    let targets: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f
                .path
                .file_name()
                .map_or_else(|| format!("{i}"), |n| n.to_string_lossy().into_owned());
            (dest_dir.join(format!(".{name}.staging")), dest_dir.join(name))
        })
        .collect();
    let outputs: Vec<File> = targets
        .iter()
        .zip(files)
        .map(|((staging, _), source)| {
            let file =
                File::create(staging).with_context(|| format!("create {}", staging.display()))?;
            file.set_len(source.len).with_context(|| format!("size {}", staging.display()))?;
            Ok(file)
        })
        .collect::<anyhow::Result<_>>()?;
    let inputs: Vec<File> = files
        .iter()
        .map(|f| File::open(&f.path).with_context(|| format!("open {}", f.path.display())))
        .collect::<anyhow::Result<_>>()?;
    let chunks = chunks(files);
    parallel(threads, chunks.len(), |index| {
        let chunk = &chunks[index];
        let mut buffer = vec![0u8; BUFFER];
        let mut done = 0;
        while done < chunk.len {
            let n = (chunk.len - done).min(BUFFER as u64) as usize;
            let at = chunk.offset + done;
            inputs[chunk.file]
                .read_exact_at(&mut buffer[..n], at)
                .with_context(|| format!("read {}", files[chunk.file].path.display()))?;
            outputs[chunk.file]
                .write_all_at(&buffer[..n], at)
                .with_context(|| format!("write {}", targets[chunk.file].0.display()))?;
            done += n as u64;
        }
        Ok(())
    })?;
    if fsync {
        parallel(threads, outputs.len(), |index| {
            let (staging, target) = &targets[index];
            outputs[index].sync_all().with_context(|| format!("fsync {}", staging.display()))?;
            std::fs::rename(staging, target)
                .with_context(|| format!("rename {} into place", staging.display()))?;
            Ok(())
        })?;
        File::open(dest_dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("fsync {}", dest_dir.display()))?;
    } else {
        for (staging, target) in &targets {
            std::fs::rename(staging, target)
                .with_context(|| format!("rename {} into place", staging.display()))?;
        }
    }
    drop(outputs);
    let elapsed = started.elapsed();
    let copied: u64 = targets
        .iter()
        .map(|(_, target)| std::fs::metadata(target).map(|m| m.len()).unwrap_or(0))
        .sum();
    let expected: u64 = files.iter().map(|f| f.len).sum();
    if copied != expected {
        bail!("copied {copied} bytes, expected {expected}");
    }
    Ok(elapsed)
}

/// Gzips every file's bytes at `level` in memory on `threads` threads; returns the time taken and
/// the compressed size.
pub(crate) fn gzip_files(
    files: &[SourceFile],
    threads: usize,
    level: u32,
) -> anyhow::Result<(Duration, u64)> {
    let inputs: Vec<File> = files
        .iter()
        .map(|f| File::open(&f.path).with_context(|| format!("open {}", f.path.display())))
        .collect::<anyhow::Result<_>>()?;
    let chunks = chunks(files);
    let compressed = AtomicU64::new(0);
    let started = Instant::now();
    parallel(threads, chunks.len(), |index| {
        let chunk = &chunks[index];
        let mut buffer = vec![0u8; BUFFER];
        let mut encoder =
            GzEncoder::new(Vec::with_capacity(chunk.len as usize / 3), Compression::new(level));
        let mut done = 0;
        while done < chunk.len {
            let n = (chunk.len - done).min(BUFFER as u64) as usize;
            inputs[chunk.file]
                .read_exact_at(&mut buffer[..n], chunk.offset + done)
                .with_context(|| format!("read {}", files[chunk.file].path.display()))?;
            encoder.write_all(&buffer[..n]).context("gzip")?;
            done += n as u64;
        }
        let out = encoder.finish().context("gzip")?;
        compressed.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(())
    })?;
    Ok((started.elapsed(), compressed.load(Ordering::Relaxed)))
}

/// Decompresses gzip files and counts their bytes and lines.
pub(crate) fn gunzip_count(files: &[SourceFile]) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut buffer = vec![0u8; BUFFER];
    for source in files {
        let file =
            File::open(&source.path).with_context(|| format!("open {}", source.path.display()))?;
        let mut decoder = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        loop {
            let n = std::io::Read::read(&mut decoder, &mut buffer)
                .with_context(|| format!("gunzip {}", source.path.display()))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            lines += memchr_count(&buffer[..n]);
        }
    }
    Ok((bytes, lines))
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// What [`store_read`] read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreRead {
    pub(crate) elapsed: Duration,
    pub(crate) resources: u64,
    /// Body bytes plus one newline per resource: the NDJSON a plain export of them writes.
    pub(crate) ndjson_bytes: u64,
}

/// The store's limit: reads every live resource of the latest snapshot through the
/// `ResourceStore` trait, as the export's scans do (pages of `page_size` in key order, each
/// type split into key ranges of `span` sequence numbers, `tasks` ranges at once), writing
/// nothing. Run with the server stopped, on the data folder it served.
pub(crate) async fn store_read(
    data_dir: &Path,
    tasks: usize,
    page_size: usize,
    span: u64,
) -> anyhow::Result<StoreRead> {
    use std::sync::{Arc, Mutex};

    use bulkfhir_model::ResourceType;
    use bulkfhir_store::{ResourceStore, ScanOptions};
    use bulkfhir_store_embedded::EmbeddedStore;

    let store = Arc::new(
        EmbeddedStore::open(data_dir)
            .with_context(|| format!("open the store in {}", data_dir.display()))?,
    );
    let snapshot = store.snapshot().await.context("take a snapshot")?;
    let mut ranges = Vec::new();
    for resource_type in ResourceType::all() {
        if let Some((low, high)) = store.seq_bounds(snapshot, resource_type).await? {
            let mut after = low - 1;
            while after < high {
                let end = after.saturating_add(span.max(1)).min(high);
                ranges.push((resource_type, after, end));
                after = end;
            }
        }
    }
    let queue = Arc::new(Mutex::new(ranges));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..tasks.max(1) {
        let (store, queue) = (Arc::clone(&store), Arc::clone(&queue));
        workers.spawn(async move {
            let (mut resources, mut bytes) = (0u64, 0u64);
            loop {
                let next = queue.lock().map_err(|_| anyhow::anyhow!("queue poisoned"))?.pop();
                let Some((resource_type, mut after, end)) = next else { break };
                loop {
                    let options =
                        ScanOptions { before_seq: end + 1, ..ScanOptions::live(after, page_size) };
                    let page = store.scan(snapshot, resource_type, options).await?;
                    resources += page.resources.len() as u64;
                    bytes += page.resources.iter().map(|r| r.body.len() as u64 + 1).sum::<u64>();
                    match page.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
            }
            anyhow::Ok((resources, bytes))
        });
    }
    let (mut resources, mut ndjson_bytes) = (0, 0);
    while let Some(joined) = workers.join_next().await {
        let (n, b) = joined.context("a reader task panicked")??;
        resources += n;
        ndjson_bytes += b;
    }
    Ok(StoreRead { elapsed: started.elapsed(), resources, ndjson_bytes })
}
