use std::fmt;
use std::io::Write as _;

use bytes::Bytes;
use flate2::write::GzEncoder;
use object_store::{MultipartUpload, WriteMultipart};

use crate::{OutputError, OutputKey};

/// Part uploads that may run at once per writer; with the part being filled, a writer holds at
/// most `(MAX_IN_FLIGHT_PARTS + 1) * part_size` bytes of upload buffers.
const MAX_IN_FLIGHT_PARTS: usize = 4;
/// Input bytes compressed per blocking call: big enough to amortise the hand-off to the blocking
/// pool, small enough to keep each call short and memory bounded.
const COMPRESS_CHUNK: usize = 1024 * 1024;

/// How a file's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as written.
    None,
    /// Stored as a single-member gzip stream (`.ndjson.gz`).
    Gzip {
        /// zlib level 0-9 (larger values count as 9). 1 is fastest; 2 is a good default;
        /// levels above 6 gain little.
        level: u32,
    },
}

/// What [`FileWriter::finish`] stored.
#[derive(Debug, Clone)]
pub struct FinishedFile {
    /// Where the object now is.
    pub key: OutputKey,
    /// Bytes passed to [`FileWriter::write`].
    pub uncompressed_bytes: u64,
    /// Bytes of the stored object (equal to `uncompressed_bytes` without compression).
    pub stored_bytes: u64,
}

/// An upload in progress, from [`OutputStore::create`](crate::OutputStore::create).
///
/// Nothing is visible under the key until [`finish`](Self::finish) succeeds. Dropping the writer
/// without finishing abandons the upload (best effort, in a background task).
///
/// `write` is not cancel safe: once a `write` fails or its future is dropped before completing,
/// the writer only accepts [`abort`](Self::abort); [`finish`](Self::finish) then aborts and fails,
/// so a file with a gap is never published.
pub struct FileWriter {
    key: OutputKey,
    compression: Compression,
    uploader: PartUploader,
    gzip: Option<GzipStage>,
    uncompressed_bytes: u64,
    stored_bytes: u64,
    /// Set while a call is in progress and left set if it fails or is cancelled.
    broken: bool,
}

impl FileWriter {
    pub(crate) fn new(
        key: OutputKey,
        upload: Box<dyn MultipartUpload>,
        compression: Compression,
        part_size: usize,
    ) -> Self {
        let gzip = match compression {
            Compression::None => None,
            Compression::Gzip { level } => Some(GzipStage::new(level)),
        };
        Self {
            key,
            compression,
            uploader: PartUploader {
                multipart: Some(WriteMultipart::new_with_chunk_size(upload, part_size)),
                part_size,
            },
            gzip,
            uncompressed_bytes: 0,
            stored_bytes: 0,
            broken: false,
        }
    }

    /// Appends NDJSON bytes.
    ///
    /// Callers normally pass whole lines, but nothing depends on it. Compression runs on the
    /// blocking pool, 1 MiB of input at a time; parts are uploaded in the background, and this
    /// waits while too many are in flight, so memory stays bounded whatever the file size.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.check_usable("write")?;
        self.broken = true;
        match &mut self.gzip {
            None => {
                self.uploader.write(bytes).await.map_err(|e| upload_error(&self.key, e))?;
                self.stored_bytes += bytes.len() as u64;
            }
            Some(gzip) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let take = rest.len().min(COMPRESS_CHUNK - gzip.pending.len());
                    let (head, tail) = rest.split_at(take);
                    gzip.pending.extend_from_slice(head);
                    rest = tail;
                    if gzip.pending.len() == COMPRESS_CHUNK {
                        let compressed = gzip.compress(&self.key, false).await?;
                        self.stored_bytes += compressed.len() as u64;
                        self.uploader
                            .put(compressed)
                            .await
                            .map_err(|e| upload_error(&self.key, e))?;
                    }
                }
            }
        }
        self.uncompressed_bytes += bytes.len() as u64;
        self.broken = false;
        Ok(())
    }

    /// Flushes the compressor, uploads the last part and publishes the object under the key,
    /// replacing any object already there. On error nothing new is published.
    pub async fn finish(mut self) -> Result<FinishedFile, OutputError> {
        if let Err(unusable) = self.check_usable("finish") {
            if let Err(error) = self.uploader.abort().await {
                tracing::warn!(key = %self.key, %error, "abort upload of broken writer");
            }
            return Err(unusable);
        }
        if let Some(gzip) = &mut self.gzip {
            let compressed = gzip.compress(&self.key, true).await?;
            self.stored_bytes += compressed.len() as u64;
            self.uploader.put(compressed).await.map_err(|e| upload_error(&self.key, e))?;
        }
        self.uploader
            .finish()
            .await
            .map_err(|e| OutputError::from_backend(&self.key, "finish", e))?;
        tracing::debug!(
            key = %self.key,
            uncompressed_bytes = self.uncompressed_bytes,
            stored_bytes = self.stored_bytes,
            "output file finished"
        );
        Ok(FinishedFile {
            key: self.key.clone(),
            uncompressed_bytes: self.uncompressed_bytes,
            stored_bytes: self.stored_bytes,
        })
    }

    /// Abandons the upload: waits for parts in flight to stop and removes what was staged.
    /// Nothing appears under the key.
    pub async fn abort(mut self) -> Result<(), OutputError> {
        self.uploader.abort().await.map_err(|e| OutputError::from_backend(&self.key, "abort", e))
    }

    fn check_usable(&self, verb: &str) -> Result<(), OutputError> {
        if !self.broken {
            return Ok(());
        }
        let reason = "an earlier write failed or was cancelled; the writer can only be aborted";
        Err(OutputError::io(format!("{verb} {}", self.key), std::io::Error::other(reason)))
    }
}

impl fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWriter")
            .field("key", &self.key)
            .field("compression", &self.compression)
            .field("uncompressed_bytes", &self.uncompressed_bytes)
            .field("stored_bytes", &self.stored_bytes)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

fn upload_error(key: &OutputKey, source: object_store::Error) -> OutputError {
    OutputError::from_backend(key, "upload part of", source)
}

/// One gzip member for the whole file: the encoder's state carries across writes.
struct GzipStage {
    /// `None` only while a blocking call owns it, or after that call failed.
    encoder: Option<GzEncoder<Vec<u8>>>,
    /// Input not yet compressed, less than [`COMPRESS_CHUNK`] bytes between calls.
    pending: Vec<u8>,
}

impl GzipStage {
    fn new(level: u32) -> Self {
        let level = flate2::Compression::new(level.min(9));
        Self {
            encoder: Some(GzEncoder::new(Vec::new(), level)),
            pending: Vec::with_capacity(COMPRESS_CHUNK),
        }
    }

    /// Compresses the pending input on the blocking pool and returns the output produced so far;
    /// with `last`, also writes the gzip trailer.
    async fn compress(&mut self, key: &OutputKey, last: bool) -> Result<Bytes, OutputError> {
        let context = || format!("compress {key}");
        let Some(mut encoder) = self.encoder.take() else {
            let reason = "the compressor was lost by an earlier failed call";
            return Err(OutputError::io(context(), std::io::Error::other(reason)));
        };
        let mut input = std::mem::take(&mut self.pending);
        let (encoder, input, output) = tokio::task::spawn_blocking(move || {
            encoder.write_all(&input)?;
            input.clear();
            if last {
                let output = encoder.finish()?;
                return Ok((None, input, output));
            }
            let output = std::mem::take(encoder.get_mut());
            Ok::<_, std::io::Error>((Some(encoder), input, output))
        })
        .await
        .map_err(|join_error| OutputError::io(context(), std::io::Error::other(join_error)))?
        .map_err(|source| OutputError::io(context(), source))?;
        self.encoder = encoder;
        self.pending = input;
        Ok(Bytes::from(output))
    }
}

/// `WriteMultipart` with back-pressure, aborted in the background when dropped unfinished.
#[derive(Debug)]
struct PartUploader {
    /// Taken by `finish` and `abort`.
    multipart: Option<WriteMultipart>,
    part_size: usize,
}

impl PartUploader {
    fn multipart(&mut self) -> &mut WriteMultipart {
        self.multipart
            .as_mut()
            .expect("only finish and abort take the upload, and both consume the writer")
    }

    async fn write(&mut self, bytes: &[u8]) -> object_store::Result<()> {
        let part_size = self.part_size;
        let multipart = self.multipart();
        for chunk in bytes.chunks(part_size) {
            multipart.wait_for_capacity(MAX_IN_FLIGHT_PARTS).await?;
            multipart.write(chunk);
        }
        Ok(())
    }

    async fn put(&mut self, bytes: Bytes) -> object_store::Result<()> {
        let multipart = self.multipart();
        multipart.wait_for_capacity(MAX_IN_FLIGHT_PARTS).await?;
        multipart.put(bytes);
        Ok(())
    }

    async fn finish(&mut self) -> object_store::Result<()> {
        match self.multipart.take() {
            Some(multipart) => multipart.finish().await.map(drop),
            None => Ok(()),
        }
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        match self.multipart.take() {
            Some(multipart) => multipart.abort().await,
            None => Ok(()),
        }
    }
}

impl Drop for PartUploader {
    fn drop(&mut self) {
        let Some(multipart) = self.multipart.take() else { return };
        // Without a runtime, dropping the upload is all we can do; the local backend then removes
        // its staged file itself, while a cloud upload is left to the bucket's lifecycle rules.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = multipart.abort().await {
                    tracing::debug!(%error, "abort dropped upload");
                }
            });
        }
    }
}
