//! HTTPS without a reverse proxy: a PEM certificate chain and private key turned into a rustls
//! server configuration (aws-lc-rs, the crypto provider the rest of the build already uses;
//! ALPN `http/1.1` only, like the listener).
//!
//! Errors name the file and what is wrong with it, never its contents: the PEM parser's own
//! messages can quote lines of the file, so they are replaced by fixed descriptions.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    InconsistentKeys,
    sign::{CertifiedKey, SingleCertAndKey},
};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject},
};

/// Why TLS could not be set up from a certificate and key file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be opened or read.
    #[error("cannot read the TLS certificate file {}: {error}", .path.display())]
    ReadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`, so that it is printed once).
        error: io::Error,
    },
    /// The certificate file holds no usable certificate chain.
    #[error("the TLS certificate file {} is not usable: {reason}", .path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key file could not be opened or read.
    #[error("cannot read the TLS private key file {}: {error}", .path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`, so that it is printed once).
        error: io::Error,
    },
    /// The private key file holds no usable private key.
    #[error("the TLS private key file {} is not usable: {reason}", .path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the private key of the (first) certificate.
    #[error(
        "the private key in {} does not belong to the certificate in {}",
        .key.display(),
        .certificate.display()
    )]
    Mismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    #[error(
        "cannot set up TLS with the certificate {} and the key {}: {reason}",
        .certificate.display(),
        .key.display()
    )]
    Config {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// A loaded TLS server configuration (certificate chain and key), cheap to clone.
#[derive(Clone)]
pub struct TlsSettings(Arc<rustls::ServerConfig>);

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rustls's own Debug holds no key material either, but says little of use here.
        f.debug_struct("TlsSettings").field("alpn", &"http/1.1").finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Loads a PEM certificate chain (the server's certificate first, then intermediates) and
    /// a PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1
    /// `EC PRIVATE KEY`, unencrypted) that must belong to the first certificate.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = read_chain(certificate)?;
        let key_der = read_key(key)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|error| TlsError::Key { path: key.to_owned(), reason: error.to_string() })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // Unknown: the key cannot tell its public half; rustls accepts that too.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::Mismatch {
                    certificate: certificate.to_owned(),
                    key: key.to_owned(),
                });
            }
            Err(error) => {
                return Err(TlsError::Certificate {
                    path: certificate.to_owned(),
                    reason: format!("the first certificate cannot be parsed ({error})"),
                });
            }
        }
        let config_error = |error: rustls::Error| TlsError::Config {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            reason: error.to_string(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        // The listener speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSettings(Arc::new(config)))
    }

    /// The rustls configuration.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0)
    }
}

/// Every certificate in the PEM file at `path`, in order.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let problem = |error: pem::Error| match error {
        pem::Error::Io(error) => TlsError::ReadCertificate { path: path.to_owned(), error },
        other => TlsError::Certificate { path: path.to_owned(), reason: describe_pem(&other) },
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(problem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(problem)?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: path.to_owned(),
            reason: "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        });
    }
    Ok(chain)
}

/// The first private key in the PEM file at `path`.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        pem::Error::Io(error) => TlsError::ReadKey { path: path.to_owned(), error },
        pem::Error::NoItemsFound => TlsError::Key {
            path: path.to_owned(),
            reason: "it holds no unencrypted PEM private key (-----BEGIN PRIVATE KEY-----, \
                     RSA PRIVATE KEY or EC PRIVATE KEY; encrypted keys are not supported)"
                .to_owned(),
        },
        other => TlsError::Key { path: path.to_owned(), reason: describe_pem(&other) },
    })
}

/// A description of a PEM syntax error that quotes nothing from the file.
fn describe_pem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64",
        pem::Error::SectionTooLarge => "a PEM section is larger than 256 MB",
        pem::Error::NoItemsFound => "it holds no PEM section of the expected kind",
        _ => "it is not valid PEM",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_never_quote_it() {
        let dir = std::env::temp_dir().join(format!("bulkfhir-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let error = TlsSettings::load(&missing, &missing).unwrap_err();
        assert!(matches!(error, TlsError::ReadCertificate { .. }), "{error}");
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let error = TlsSettings::load(&empty, &missing).unwrap_err();
        assert!(matches!(error, TlsError::Certificate { .. }), "{error}");

        // A key file whose base64 is broken: the error must not echo the secret text.
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nSECRET!!@@\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let error = TlsSettings::load(&cert, &key).unwrap_err();
        assert!(matches!(error, TlsError::Key { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("key.pem") && !text.contains("SECRET"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
