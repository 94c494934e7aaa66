use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{GetOptions, ObjectStore, ObjectStoreExt as _, signer::Signer};

use crate::uploads::Uploads;
use crate::{Compression, FileWriter, OutputError, OutputKey};

/// Default size of an uploaded part: 8 MiB.
const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// Where export files live: a facade over any [`ObjectStore`] that owns key mapping, gzip,
/// atomic creation and streaming reads. See the crate docs for the contract.
#[derive(Clone)]
pub struct OutputStore {
    store: Arc<dyn ObjectStore>,
    /// Signs download URLs, for stores that can (S3, GCS, Azure).
    signer: Option<Arc<dyn Signer>>,
    /// Lists and aborts the bucket's uploads in progress, for stores whose API can (S3, GCS).
    uploads: Option<Uploads>,
    /// What to call the store in messages: its URL for a bucket, "local disk" (never a path).
    label: String,
    /// Prepended to every key.
    prefix: ObjectPath,
    /// For [`OutputStore::local`]: the canonical root directory, used to find staged uploads that
    /// the object store hides.
    local_root: Option<PathBuf>,
    part_size: usize,
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStore")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .field("signs_urls", &self.signer.is_some())
            .field("aborts_uploads", &self.uploads.is_some())
            .finish()
    }
}

impl OutputStore {
    /// A store in the directory `root` on the local filesystem, created if missing.
    ///
    /// Finished files are fsynced (contents and directory entry) before `finish` returns, so a
    /// file reported finished survives a power loss.
    pub fn local(root: &Path) -> Result<Self, OutputError> {
        let shown = root.display();
        std::fs::create_dir_all(root)
            .map_err(|source| OutputError::io(format!("create output root {shown}"), source))?;
        let canonical_root = std::fs::canonicalize(root)
            .map_err(|source| OutputError::io(format!("resolve output root {shown}"), source))?;
        let local = LocalFileSystem::new_with_prefix(&canonical_root)
            .map_err(|source| OutputError::Backend {
                context: format!("open output root {shown}"),
                source,
            })?
            .with_fsync(true);
        Ok(Self {
            store: Arc::new(local),
            signer: None,
            uploads: None,
            label: "local disk".to_owned(),
            prefix: ObjectPath::default(),
            local_root: Some(canonical_root),
            part_size: DEFAULT_PART_SIZE,
        })
    }

    /// A store in memory, empty, for tests and throw-away servers.
    pub fn in_memory() -> Self {
        Self::from_object_store(Arc::new(InMemory::new()), "")
    }

    /// A store over any object store (S3, Azure, GCS, ...), with every key placed below `prefix`
    /// (`/`-separated; empty for the bucket's root).
    ///
    /// Incomplete uploads on such a store are not visible through `object_store`: see
    /// [`with_upload_clean_up`](Self::with_upload_clean_up) so that a crash cannot orphan one.
    pub fn from_object_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            signer: None,
            uploads: None,
            label: "object store".to_owned(),
            prefix: ObjectPath::from(prefix),
            local_root: None,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// Lets [`remove_incomplete`](Self::remove_incomplete) and
    /// [`delete_prefix`](Self::delete_prefix) abort the multipart uploads in progress below their
    /// prefix, which a crash would otherwise leave in the bucket: they are listed with a request
    /// `signer` signs (S3's and GCS's `ListMultipartUploads`) and aborted through `parts` (both
    /// the same bucket's client). Only for stores whose API lists uploads: Azure has no upload
    /// to abort (uncommitted blocks expire after seven days whatever is asked).
    pub fn with_upload_clean_up(
        mut self,
        signer: Arc<dyn Signer>,
        parts: Arc<dyn MultipartStore>,
    ) -> Result<Self, OutputError> {
        let uploads = Uploads::new(signer, parts).map_err(|source| OutputError::Backend {
            context: format!("open {}", self.label),
            source,
        })?;
        self.uploads = Some(uploads);
        Ok(self)
    }

    /// Lets the store sign download URLs with `signer` (the same bucket's client).
    #[must_use]
    pub fn with_signer(mut self, signer: Arc<dyn Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Names the store in messages (a destination URL; never credentials or a local path).
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// What the store is called in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether [`signed_url`](Self::signed_url) can sign.
    pub fn signs_urls(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL that downloads `key` straight from the bucket with no other credentials, valid
    /// for `expires_in`; `None` for stores that cannot sign (local disk).
    pub async fn signed_url(
        &self,
        key: &OutputKey,
        expires_in: std::time::Duration,
    ) -> Result<Option<String>, OutputError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let url = signer
            .signed_url(object_store::signer::Method::GET, &self.location(key), expires_in)
            .await
            .map_err(|e| OutputError::from_backend(key, "sign a URL for", e))?;
        Ok(Some(url.to_string()))
    }

    /// Sets the size of uploaded parts (default 8 MiB; values below 1 count as 1).
    ///
    /// S3 and GCS need at least 5 MiB for every part but the last and allow 10,000 parts, so a
    /// file there can hold at most `10_000 * part_size` stored bytes (about 78 GiB at 8 MiB).
    /// Each writer buffers up to about five parts.
    #[must_use]
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size.max(1);
        self
    }

    /// Starts a file.
    ///
    /// Bytes written are only visible under `key` after [`FileWriter::finish`] succeeds
    /// (multipart upload, or a staged file renamed into place): a crash, an error or
    /// [`FileWriter::abort`] leaves no object under `key`. A finished file replaces any object
    /// already under `key`.
    pub async fn create(
        &self,
        key: &OutputKey,
        compression: Compression,
    ) -> Result<FileWriter, OutputError> {
        let location = self.location(key);
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(|e| OutputError::from_backend(key, "start upload of", e))?;
        Ok(FileWriter::new(key.clone(), upload, compression, self.part_size))
    }

    /// The stored size of the object, in bytes (compressed size for gzip files).
    pub async fn size(&self, key: &OutputKey) -> Result<u64, OutputError> {
        let meta = self
            .store
            .head(&self.location(key))
            .await
            .map_err(|e| OutputError::from_backend(key, "look up", e))?;
        Ok(meta.size)
    }

    /// Streams bytes `[start, end)` of the stored object (the whole object when `range` is
    /// `None`), as stored: gzip files are served compressed.
    /// Returns the stream and the object's total size.
    ///
    /// A range must satisfy `start <= end <= size`, else [`OutputError::InvalidRange`]; the
    /// caller resolves open-ended or suffix HTTP ranges against [`size`](Self::size) first.
    /// An empty range gives an empty stream.
    pub async fn read(
        &self,
        key: &OutputKey,
        range: Option<Range<u64>>,
    ) -> Result<(BoxStream<'static, Result<Bytes, OutputError>>, u64), OutputError> {
        let mut options = GetOptions::default();
        if let Some(range) = range {
            let size = self.size(key).await?;
            if range.start > range.end || range.end > size {
                let (start, end) = (range.start, range.end);
                return Err(OutputError::InvalidRange { key: key.clone(), start, end, size });
            }
            if range.is_empty() {
                return Ok((stream::empty().boxed(), size));
            }
            options.range = Some(range.into());
        }
        let result = self
            .store
            .get_opts(&self.location(key), options)
            .await
            .map_err(|e| OutputError::from_backend(key, "read", e))?;
        let size = result.meta.size;
        let key = key.clone();
        let body = match result.payload {
            // A local file: read in large chunks. object_store streams local files 8 KiB at a
            // time, one blocking task each, which held a download to about 150 MB/s.
            object_store::GetResultPayload::File(file, _) => {
                local_chunks(file, result.range, key).boxed()
            }
            _ => result
                .into_stream()
                .map_err(move |source| OutputError::from_backend(&key, "read", source))
                .boxed(),
        };
        Ok((body, size))
    }

    /// The objects strictly below `prefix` (at any depth) with their stored sizes, sorted by key.
    ///
    /// Uploads in progress or interrupted are never listed. Objects whose names are not valid
    /// keys (put there by something else) are skipped.
    pub async fn list(&self, prefix: &OutputKey) -> Result<Vec<(OutputKey, u64)>, OutputError> {
        let base = self.location(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| OutputError::from_backend(prefix, "list", e))?;
        let mut files = Vec::with_capacity(metas.len());
        for meta in metas {
            if meta.location == base {
                continue;
            }
            let Some(parts) = meta.location.prefix_match(&self.prefix) else { continue };
            let relative = parts.map(|part| part.as_ref().to_owned()).collect::<Vec<_>>().join("/");
            match OutputKey::parse(&relative) {
                Ok(key) => files.push((key, meta.size)),
                Err(_) => {
                    tracing::warn!(location = %meta.location, "skip object not named like an output key");
                }
            }
        }
        files.sort_unstable();
        Ok(files)
    }

    /// Deletes every object below `prefix` and returns how many complete objects were deleted.
    ///
    /// On the local filesystem it also removes the staged files of interrupted uploads (not
    /// counted) and then the emptied directories, `prefix`'s own included. Uploads still running
    /// below `prefix` fail at `finish`. Deleting an empty or missing prefix returns 0.
    pub async fn delete_prefix(&self, prefix: &OutputKey) -> Result<u64, OutputError> {
        let listed: Vec<ObjectPath> = self
            .store
            .list(Some(&self.location(prefix)))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| OutputError::from_backend(prefix, "list", e))?;
        // Uploads in progress are aborted first: none can become an object after the deletion.
        self.abort_uploads(prefix).await?;
        let locations = stream::iter(listed.into_iter().map(Ok));
        let mut deletions = self.store.delete_stream(locations.boxed());
        let mut deleted = 0;
        while let Some(deletion) = deletions.next().await {
            match deletion {
                Ok(_) => deleted += 1,
                // Someone else deleted it first: the outcome is the same.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    let context = format!("delete objects below {prefix}");
                    return Err(OutputError::Backend { context, source });
                }
            }
        }
        self.clean_local(prefix, true).await?;
        tracing::debug!(%prefix, deleted, "output prefix deleted");
        Ok(deleted)
    }

    /// Removes only the leftovers of interrupted uploads below `prefix`, keeping complete
    /// objects; a job calls it when it resumes after a crash.
    ///
    /// On the local filesystem these are staged files; on a store with
    /// [upload clean-up](Self::with_upload_clean_up), the multipart uploads in progress (each
    /// aborted). It also removes the uploads still running below `prefix`, which then fail at
    /// `finish`, so call it only while no writer below `prefix` is open.
    pub async fn remove_incomplete(&self, prefix: &OutputKey) -> Result<(), OutputError> {
        self.abort_uploads(prefix).await?;
        self.clean_local(prefix, false).await
    }

    /// Aborts the multipart uploads in progress below `prefix`, on a store that can list them
    /// (see [`with_upload_clean_up`](Self::with_upload_clean_up)).
    async fn abort_uploads(&self, prefix: &OutputKey) -> Result<(), OutputError> {
        let Some(uploads) = &self.uploads else { return Ok(()) };
        let aborted = uploads
            .abort_below(&self.location(prefix))
            .await
            .map_err(|e| OutputError::from_backend(prefix, "abort the uploads below", e))?;
        if aborted > 0 {
            tracing::info!(%prefix, aborted, "interrupted uploads aborted");
        }
        Ok(())
    }

    fn location(&self, key: &OutputKey) -> ObjectPath {
        self.prefix.parts().chain(key.segments().map(PathPart::from)).collect()
    }

    /// On a local store, removes staged uploads below `prefix`, then (with `prune`) the
    /// directories left empty.
    async fn clean_local(&self, prefix: &OutputKey, prune: bool) -> Result<(), OutputError> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let dir = prefix.segments().fold(root.clone(), |dir, segment| dir.join(segment));
        tokio::task::spawn_blocking(move || local::remove_staged(&dir, prune)).await.map_err(
            |join_error| {
                let context = format!("clean up staged uploads below {prefix}");
                OutputError::io(context, std::io::Error::other(join_error))
            },
        )?
    }
}

/// How much of a local file one read takes.
const LOCAL_READ_CHUNK: usize = 1024 * 1024;

/// `range` of a local `file`, as a stream of chunks of [`LOCAL_READ_CHUNK`], each read on the
/// blocking pool.
fn local_chunks(
    file: std::fs::File,
    range: Range<u64>,
    key: OutputKey,
) -> impl futures::Stream<Item = Result<Bytes, OutputError>> + Send + 'static {
    let failed = move |key: &OutputKey, source: std::io::Error| {
        OutputError::io(format!("read {key}"), source)
    };
    stream::try_unfold(
        (file, range.start, range.end, key),
        move |(file, position, end, key)| async move {
            if position >= end {
                return Ok(None);
            }
            let wanted = usize::try_from(end - position)
                .map_or(LOCAL_READ_CHUNK, |n| n.min(LOCAL_READ_CHUNK));
            let read = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut file = file;
                file.seek(SeekFrom::Start(position))?;
                let mut buffer = vec![0u8; wanted];
                let mut filled = 0;
                while filled < wanted {
                    match file.read(&mut buffer[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                buffer.truncate(filled);
                Ok::<_, std::io::Error>((file, buffer))
            })
            .await
            .map_err(|e| failed(&key, std::io::Error::other(e)))?;
            let (file, buffer) = read.map_err(|e| failed(&key, e))?;
            if buffer.is_empty() {
                return Err(failed(
                    &key,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than its size",
                    ),
                ));
            }
            let next = position + buffer.len() as u64;
            Ok(Some((Bytes::from(buffer), (file, next, end, key))))
        },
    )
}

/// Cleanup of `LocalFileSystem`'s staged uploads.
///
/// `LocalFileSystem` writes an upload to `<destination>#<n>` (`n` = 1, 2, ... the first free
/// number) in the destination's directory and renames it into place on completion. Names whose
/// part after the first `#` is all digits are hidden from `list` and cannot be addressed through
/// the object store, so only a directory walk finds what a crash left behind.
mod local {
    use std::io::ErrorKind;
    use std::path::Path;

    use crate::OutputError;

    pub(super) fn remove_staged(dir: &Path, prune: bool) -> Result<(), OutputError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(io_error("list", dir, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", dir, source))?;
            let path = entry.path();
            // Does not follow symlinks, so the walk stays below the root.
            let file_type =
                entry.file_type().map_err(|source| io_error("inspect", &path, source))?;
            if file_type.is_dir() {
                remove_staged(&path, prune)?;
            } else if is_staged_upload(&entry.file_name()) {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(path = %path.display(), "removed staged upload"),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(source) => return Err(io_error("remove staged upload", &path, source)),
                }
            }
        }
        if prune {
            // Fails harmlessly when something is still (or again) in the directory.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    /// The rule `LocalFileSystem` uses to hide a file: `name#digits`.
    fn is_staged_upload(file_name: &std::ffi::OsStr) -> bool {
        let Some(name) = file_name.to_str() else { return false };
        match name.split_once('#') {
            Some((_, suffix)) => !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()),
            None => false,
        }
    }

    /// The error names only the file or folder (an export's own name, never the output root:
    /// failure messages reach the job's owner); the log has the whole path.
    fn io_error(verb: &str, path: &Path, source: std::io::Error) -> OutputError {
        tracing::warn!(path = %path.display(), error = %source, "{verb} failed");
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        OutputError::io(format!("{verb} {name}"), source)
    }
}
