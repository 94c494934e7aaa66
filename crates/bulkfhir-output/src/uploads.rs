//! The multipart uploads in progress below a prefix, on stores whose API lists them (S3 and
//! Google Cloud Storage's XML API: `ListMultipartUploads`), so that a clean-up can abort the
//! ones a crash interrupted.
//!
//! `object_store` uploads files in parts but offers no listing of uploads: an upload a crash
//! interrupts stays in the bucket, invisible and billed, until a lifecycle rule expires it. The
//! request is made here, signed by the store's own [`Signer`] (a presigned `GET` on the bucket
//! with `uploads` and `prefix` in the signed query), so no credential or signature code is
//! written twice; the uploads found are aborted through the store's [`MultipartStore`].
//!
//! Listing by prefix leaves no window: an upload exists in the listing from the moment the
//! bucket accepted it, whether or not its writer lived to record anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{Error as StoreError, MultipartId};
use serde::Deserialize;

/// How long the signed listing URL is valid: one request, sent at once.
const SIGNED_FOR: Duration = Duration::from_secs(300);
/// How long one listing request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Uploads per answer: S3's maximum and default, asked for explicitly (SeaweedFS otherwise
/// answers everything at once, however many).
const PAGE: usize = 1000;
/// What the errors name.
const STORE: &str = "upload listing";

/// Lists and aborts the uploads in progress of one bucket.
#[derive(Clone)]
pub(crate) struct Uploads {
    signer: Arc<dyn Signer>,
    parts: Arc<dyn MultipartStore>,
    http: reqwest::Client,
    /// Whether a refused listing was already logged as a warning (later ones are debug lines:
    /// every job's start and end would repeat it).
    refusal_warned: Arc<AtomicBool>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").finish_non_exhaustive()
    }
}

/// One page of `ListMultipartUploadsResult` (the fields read here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
}

fn generic(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Generic { store: STORE, source: source.into() }
}

impl Uploads {
    /// Uploads of the bucket `signer` signs for, aborted through `parts` (the same client).
    pub(crate) fn new(
        signer: Arc<dyn Signer>,
        parts: Arc<dyn MultipartStore>,
    ) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(generic)?;
        Ok(Self { signer, parts, http, refusal_warned: Arc::default() })
    }

    /// One page of the uploads in progress whose keys are below the folder `prefix` (the
    /// first ones, up to [`PAGE`]), with their ids, and whether there are more.
    ///
    /// A bucket that refuses the listing (HTTP 403: the credentials lack
    /// `s3:ListBucketMultipartUploads`; 405 or 501: a server without it) gives an empty page
    /// and a warning: the clean-up is lost, not the export, and the bucket's lifecycle rule
    /// still expires the uploads.
    async fn first_page(
        &self,
        prefix: &ObjectPath,
    ) -> Result<(Vec<(ObjectPath, MultipartId)>, bool), StoreError> {
        // Below the folder `prefix` (`jobs/j1/` must not take `jobs/j10`); the whole bucket for
        // an empty prefix.
        let folder = if prefix.as_ref().is_empty() { String::new() } else { format!("{prefix}/") };
        let query = [
            ("uploads", String::new()),
            ("prefix", folder.clone()),
            ("max-uploads", PAGE.to_string()),
        ];
        let options = SignedUrlOptions::new().with_query(query);
        let url = self
            .signer
            .signed_url_opts(reqwest::Method::GET, &ObjectPath::default(), SIGNED_FOR, &options)
            .await?;
        let response = self.http.get(url).send().await.map_err(generic)?;
        let status = response.status();
        let body = response.text().await.map_err(generic)?;
        let shown = || body.chars().take(300).collect::<String>();
        if matches!(status.as_u16(), 403 | 405 | 501) {
            const REFUSED: &str = "the bucket refuses to list uploads in progress: interrupted uploads are left to its lifecycle rule";
            if self.refusal_warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(%prefix, %status, "{REFUSED}");
            } else {
                tracing::warn!(%prefix, %status, answer = %shown(), "{REFUSED} (said once)");
            }
            return Ok((Vec::new(), false));
        }
        if !status.is_success() {
            let shown = shown();
            return Err(generic(format!("list uploads below {folder}: HTTP {status}: {shown}")));
        }
        let page: Page = quick_xml::de::from_str(&body)
            .map_err(|e| generic(format!("list uploads below {folder}: {e}")))?;
        let mut found = Vec::with_capacity(page.uploads.len());
        for upload in page.uploads {
            match ObjectPath::parse(&upload.key) {
                Ok(path) => found.push((path, upload.upload_id)),
                Err(error) => {
                    tracing::warn!(key = %upload.key, %error, "skip upload of an unusual key");
                }
            }
        }
        Ok((found, page.is_truncated))
    }

    /// Aborts every upload in progress below `prefix`; returns how many were aborted. One
    /// already gone (completed or aborted meanwhile) counts as done.
    ///
    /// A listing longer than a page is not followed with markers: the first page is aborted and
    /// the listing asked again, until it is complete. That needs nothing of a server's paging
    /// (SeaweedFS pages by upload id alone and sends no `NextKeyMarker`, which S3 requires), and
    /// stops if a round aborts nothing, so an upload that cannot be aborted cannot loop it.
    pub(crate) async fn abort_below(&self, prefix: &ObjectPath) -> Result<usize, StoreError> {
        let mut aborted = 0;
        loop {
            let (uploads, more) = self.first_page(prefix).await?;
            let mut this_round = 0;
            for (location, id) in &uploads {
                match self.parts.abort_multipart(location, id).await {
                    Ok(()) => {
                        tracing::info!(%location, "aborted an interrupted upload");
                        this_round += 1;
                    }
                    Err(StoreError::NotFound { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            aborted += this_round;
            if !more || this_round == 0 {
                return Ok(aborted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_page_parses_with_and_without_uploads() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>jobs/x/Patient-2.ndjson</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <Prefix>jobs/x/</Prefix><MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>jobs/x/Patient-1.ndjson</Key><UploadId>id1</UploadId>
    <Initiator><ID>a</ID></Initiator><StorageClass>STANDARD</StorageClass>
    <Initiated>2026-12-07T00:00:00.000Z</Initiated></Upload>
  <Upload><Key>jobs/x/Patient-2.ndjson</Key><UploadId>id2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page: Page = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        let keys: Vec<_> =
            page.uploads.iter().map(|u| (u.key.as_str(), u.upload_id.as_str())).collect();
        assert_eq!(keys, [("jobs/x/Patient-1.ndjson", "id1"), ("jobs/x/Patient-2.ndjson", "id2")]);

        let empty = r#"<ListMultipartUploadsResult><Bucket>b</Bucket><NextKeyMarker/>
            <IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let page: Page = quick_xml::de::from_str(empty).unwrap();
        assert!(!page.is_truncated && page.uploads.is_empty());
    }
}
