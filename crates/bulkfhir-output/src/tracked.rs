//! Multipart uploads that a crash cannot orphan, on stores that abort uploads by id (S3, GCS,
//! Azure; in memory for tests).
//!
//! `object_store` hides uploads in progress and offers no way to list them, so an upload that a
//! crash interrupts would stay in the bucket, invisible and billed, until a lifecycle rule
//! expires it. A tracked upload records its id in a small *marker* object next to its
//! destination (`<file>#upload`, a name no [`OutputKey`](crate::OutputKey) can have, so
//! listings skip it) before the first part is sent, and deletes the marker once the upload is
//! completed or aborted. [`OutputStore::remove_incomplete`](crate::OutputStore::remove_incomplete)
//! and [`OutputStore::delete_prefix`](crate::OutputStore::delete_prefix) abort the uploads of the
//! markers they find and delete the markers.
//!
//! The window left: a crash between the start of an upload and the write of its marker (one
//! request) leaves an upload no marker names.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::FutureExt as _;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{
    MultipartId, MultipartUpload, ObjectStore, ObjectStoreExt as _, PutPayload, PutResult,
    UploadPart,
};

/// What follows a file's name in its marker's name, as given and as `object_store` stores it
/// (`#` is a reserved character in its paths, percent-encoded).
const MARKER_SUFFIX: &str = "#upload";
const MARKER_SUFFIX_STORED: &str = "%23upload";

/// The marker of an upload to `location` (whose file name, an output key's last segment, has no
/// reserved characters).
pub(crate) fn marker_of(location: &ObjectPath) -> ObjectPath {
    let mut parts: Vec<PathPart<'_>> = location.parts().collect();
    if let Some(last) = parts.pop() {
        parts.push(PathPart::from(format!("{}{MARKER_SUFFIX}", last.as_ref())));
    }
    parts.into_iter().collect()
}

/// The file name of a marker without its suffix, if it is one.
fn marked_name(name: &str) -> Option<&str> {
    name.strip_suffix(MARKER_SUFFIX_STORED).or_else(|| name.strip_suffix(MARKER_SUFFIX))
}

/// The destination of the upload `marker` names, if it is a marker.
pub(crate) fn target_of(marker: &ObjectPath) -> Option<ObjectPath> {
    let mut parts: Vec<PathPart<'_>> = marker.parts().collect();
    let last = parts.pop()?;
    let file = marked_name(last.as_ref())?.to_owned();
    parts.push(PathPart::from(file));
    Some(parts.into_iter().collect())
}

/// Whether `location` is a marker.
pub(crate) fn is_marker(location: &ObjectPath) -> bool {
    location.filename().and_then(marked_name).is_some()
}

/// An upload through [`MultipartStore`], with its marker.
pub(crate) struct TrackedUpload {
    parts_store: Arc<dyn MultipartStore>,
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    marker: ObjectPath,
    id: MultipartId,
    /// Each part's id by index, filled as part uploads finish (in any order).
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
    next_part: usize,
}

impl std::fmt::Debug for TrackedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedUpload").field("location", &self.location).finish()
    }
}

impl TrackedUpload {
    /// Starts an upload to `location` and writes its marker; if the marker cannot be written,
    /// the upload is aborted and the error returned.
    pub(crate) async fn start(
        parts_store: Arc<dyn MultipartStore>,
        store: Arc<dyn ObjectStore>,
        location: ObjectPath,
    ) -> object_store::Result<Self> {
        let id = parts_store.create_multipart(&location).await?;
        let marker = marker_of(&location);
        if let Err(error) = store.put(&marker, PutPayload::from(id.clone().into_bytes())).await {
            if let Err(abort) = parts_store.abort_multipart(&location, &id).await {
                tracing::warn!(%location, error = %abort, "abort an upload whose marker failed");
            }
            return Err(error);
        }
        Ok(Self { parts_store, store, location, marker, id, parts: Arc::default(), next_part: 0 })
    }

    /// A marker that cannot be deleted now is left for the next clean-up, which finds the
    /// upload gone and deletes it then.
    async fn drop_marker(&self) {
        delete_marker(self.store.as_ref(), &self.marker).await;
    }
}

/// Deletes `marker` (already gone is fine); one that stays is logged.
async fn delete_marker(store: &dyn ObjectStore, marker: &ObjectPath) {
    match store.delete(marker).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => tracing::warn!(%marker, %error, "delete upload marker"),
    }
}

#[async_trait]
impl MultipartUpload for TrackedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = self.next_part;
        self.next_part += 1;
        let (store, location, id) =
            (Arc::clone(&self.parts_store), self.location.clone(), self.id.clone());
        let parts = Arc::clone(&self.parts);
        async move {
            let part = store.put_part(&location, &id, index, data).await?;
            let mut parts = parts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if parts.len() <= index {
                parts.resize(index + 1, None);
            }
            parts[index] = Some(part);
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let parts: Vec<PartId> = {
            let parts = self.parts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match parts.iter().cloned().collect::<Option<Vec<_>>>() {
                Some(parts) if parts.len() == self.next_part => parts,
                _ => {
                    let part = parts.iter().position(Option::is_none).unwrap_or(parts.len());
                    return Err(object_store::Error::Generic {
                        store: "tracked upload",
                        source: format!("part {part} of {} was not uploaded", self.location).into(),
                    });
                }
            }
        };
        let result = self.parts_store.complete_multipart(&self.location, &self.id, parts).await?;
        self.drop_marker().await;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts_store.abort_multipart(&self.location, &self.id).await?;
        self.drop_marker().await;
        Ok(())
    }
}

/// Aborts the upload `marker` names and deletes the marker. An upload already gone (completed
/// just before a crash, or aborted) only loses its marker; on any other failure the marker stays
/// for the next clean-up, and the error is logged.
pub(crate) async fn abort_marked(
    parts_store: &dyn MultipartStore,
    store: &dyn ObjectStore,
    marker: &ObjectPath,
) {
    let Some(target) = target_of(marker) else { return };
    let read = async { store.get(marker).await?.bytes().await };
    let id = match read.await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(object_store::Error::NotFound { .. }) => return,
        Err(error) => {
            tracing::warn!(%marker, %error, "read upload marker");
            return;
        }
    };
    match parts_store.abort_multipart(&target, &id).await {
        Ok(()) => tracing::info!(%target, "aborted an interrupted upload"),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => {
            tracing::warn!(%target, %error, "abort interrupted upload; kept its marker");
            return;
        }
    }
    delete_marker(store, marker).await;
}
