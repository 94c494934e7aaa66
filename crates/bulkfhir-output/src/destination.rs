//! Where export files go, named by a URL: `file:///path`, `s3://bucket/prefix`,
//! `gs://bucket/prefix`, `az://container/prefix`. Credentials and endpoints come from each
//! cloud's standard environment variables (object_store's builders read them):
//!
//! - S3 and S3-compatible servers: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (MinIO, SeaweedFS, Ceph, R2; an
//!   `http://` endpoint is allowed with `AWS_ALLOW_HTTP=true`, which [`Destination::open`] sets for
//!   an http endpoint given in [`CloudOptions::s3_endpoint`]);
//! - Google Cloud Storage: `GOOGLE_SERVICE_ACCOUNT` (a key file) or
//!   `GOOGLE_SERVICE_ACCOUNT_KEY` (its JSON), or the application default credentials;
//! - Azure Blob: `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` (or a SAS, or
//!   a service principal); `AZURE_STORAGE_USE_EMULATOR=true` for Azurite.
//!
//! Cloud destinations can sign URLs (S3 presigned, GCS v4, Azure SAS), so that clients download
//! straight from the bucket.

use std::{path::PathBuf, sync::Arc, time::Duration};

use object_store::{
    BackoffConfig, ObjectStore, RetryConfig, aws::AmazonS3Builder, azure::MicrosoftAzureBuilder,
    gcp::GoogleCloudStorageBuilder, multipart::MultipartStore, signer::Signer,
};

use crate::{OutputError, OutputStore};

/// A parsed destination URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    url: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

/// Settings that are not in the URL.
#[derive(Debug, Clone, Default)]
pub struct CloudOptions {
    /// An S3-compatible server's endpoint (`http://127.0.0.1:8333`), instead of AWS.
    pub s3_endpoint: Option<String>,
    /// A Google service account JSON file for `gs://` destinations, instead of the one
    /// `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS` name (tests pass theirs).
    pub gcs_service_account: Option<String>,
}

fn invalid(url: &str, why: impl std::fmt::Display) -> OutputError {
    OutputError::InvalidDestination(format!("{url}: {why}"))
}

impl Destination {
    /// Parses `file:///absolute/path`, `s3://bucket[/prefix]`, `gs://bucket[/prefix]` or
    /// `az://container[/prefix]`.
    pub fn parse(text: &str) -> Result<Self, OutputError> {
        let url = text.trim();
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| invalid(url, "not a URL (scheme://...)"))?;
        let (name, prefix) = match rest.split_once('/') {
            Some((name, prefix)) => (name, prefix.trim_matches('/')),
            None => (rest, ""),
        };
        let bucket_ok = |name: &str| {
            (3..=63).contains(&name.len())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'-'
                        || b == b'.'
                        || b == b'_'
                })
        };
        let prefix_ok = prefix.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }) || prefix.is_empty();
        if scheme != "file" && (!bucket_ok(name) || !prefix_ok) {
            return Err(invalid(
                url,
                "the bucket (3-63 of a-z 0-9 . - _) or prefix (segments of A-Z a-z 0-9 - _ .) is not valid",
            ));
        }
        let (name, prefix) = (name.to_owned(), prefix.to_owned());
        let kind = match scheme {
            "file" => {
                let path = PathBuf::from(rest);
                if !path.is_absolute() || rest.split('/').any(|s| s == "..") {
                    return Err(invalid(
                        url,
                        "a file:// destination is an absolute path without '..'",
                    ));
                }
                Kind::Local(path)
            }
            "s3" | "s3a" => Kind::S3 { bucket: name, prefix },
            "gs" => Kind::Gcs { bucket: name, prefix },
            "az" | "azure" | "abfs" => Kind::Azure { container: name, prefix },
            other => {
                return Err(invalid(
                    url,
                    format!("scheme '{other}' is not one of file, s3, gs, az"),
                ));
            }
        };
        Ok(Destination { url: url.to_owned(), kind })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a cloud bucket (which can sign URLs), not local disk.
    pub fn is_cloud(&self) -> bool {
        !matches!(self.kind, Kind::Local(_))
    }

    /// Whether the destination falls under an allow-list `pattern`: the same URL, or a prefix
    /// of it ending in `/*` (`s3://partner-bucket/*` allows every prefix in that bucket).
    pub fn allowed_by(&self, pattern: &str) -> bool {
        let pattern = pattern.trim();
        match pattern.strip_suffix("/*") {
            Some(stem) => self.url == stem || self.url.starts_with(&format!("{stem}/")),
            None => self.url == pattern.trim_end_matches('/'),
        }
    }

    /// Opens the destination: its credentials from the environment (see the module docs).
    /// Nothing is contacted yet; [`OutputStore::probe`] checks that it can be written.
    pub fn open(&self, options: &CloudOptions) -> Result<OutputStore, OutputError> {
        let built = |e: object_store::Error| invalid(&self.url, e);
        match &self.kind {
            Kind::Local(path) => OutputStore::local(path),
            Kind::S3 { bucket, prefix } => {
                let mut builder =
                    AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry());
                if let Some(endpoint) = &options.s3_endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let s3 = Arc::new(builder.build().map_err(built)?);
                cloud_with_uploads(s3, prefix, &self.url)
            }
            Kind::Gcs { bucket, prefix } => {
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry());
                if let Some(path) = &options.gcs_service_account {
                    builder = builder.with_service_account_path(path);
                }
                let gcs = Arc::new(builder.build().map_err(built)?);
                cloud_with_uploads(gcs, prefix, &self.url)
            }
            Kind::Azure { container, prefix } => {
                let azure = Arc::new(
                    MicrosoftAzureBuilder::from_env()
                        .with_container_name(container)
                        .with_retry(retry())
                        .build()
                        .map_err(built)?,
                );
                Ok(cloud(azure, prefix).with_label(&self.url))
            }
        }
    }
}

/// How long a cloud request keeps being retried: a bucket that is back within about 40 s (a
/// restart, a failover, a network blip) costs an export nothing; after that the export fails
/// and says why. object_store's default gave up after about 4 s.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 15,
        retry_timeout: Duration::from_secs(60),
    }
}

/// Which destinations a kick-off may name (`--allow-export-destination`), and the settings to
/// open them with. Empty: none may be named.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// Allow-list patterns: a URL, or a URL prefix ending in `/*`.
    pub allowed: Vec<String>,
    /// Settings for opening them.
    pub options: CloudOptions,
}

impl DestinationPolicy {
    /// Parses `text` and checks it against the allow-list; contacts nothing.
    pub fn check(&self, text: &str) -> Result<Destination, OutputError> {
        let destination = Destination::parse(text)?;
        if self.allowed.iter().any(|pattern| destination.allowed_by(pattern)) {
            Ok(destination)
        } else {
            Err(OutputError::InvalidDestination(format!(
                "{}: not among the destinations this server allows (--allow-export-destination)",
                destination.url()
            )))
        }
    }
}

/// A cloud store: S3 and GCS need parts of at least 5 MiB, so the default 8 MiB parts stay.
fn cloud<S: ObjectStore + Signer>(store: Arc<S>, prefix: &str) -> OutputStore {
    OutputStore::from_object_store(store.clone(), prefix).with_signer(store)
}

/// A cloud store whose uploads in progress can be listed and aborted (S3, GCS), so that a crash
/// cannot orphan one.
fn cloud_with_uploads<S: ObjectStore + MultipartStore + Signer>(
    store: Arc<S>,
    prefix: &str,
    label: &str,
) -> Result<OutputStore, OutputError> {
    cloud(store.clone(), prefix).with_label(label).with_upload_clean_up(store.clone(), store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_match_allow_lists() {
        let s3 = Destination::parse("s3://partner-bucket/exports/fhir").unwrap();
        assert!(s3.is_cloud());
        assert!(s3.allowed_by("s3://partner-bucket/*"));
        assert!(s3.allowed_by("s3://partner-bucket/exports/*"));
        assert!(s3.allowed_by("s3://partner-bucket/exports/fhir"));
        assert!(!s3.allowed_by("s3://partner-bucket/other/*"));
        assert!(!s3.allowed_by("s3://partner-bucket-2/*"));
        assert!(!s3.allowed_by("s3://partner/*"));
        assert!(!Destination::parse("file:///var/lib/bulkfhir").unwrap().is_cloud());
        for bad in [
            "s3:/bucket",
            "http://bucket/x",
            "s3://B/x",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "file://relative/path",
            "file:///a/../b",
            "gs://a",
            "az://container/with space",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        assert!(Destination::parse("gs://bucket").is_ok());
        assert!(Destination::parse("az://container/prefix/").is_ok());
    }
}
