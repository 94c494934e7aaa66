//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` describe it.
//!
//! tokio-postgres parses `sslmode=disable|prefer|require` only; managed databases document
//! `sslmode=verify-full&sslrootcert=ca.pem` (or `verify-ca`). [`parse_url`] takes the libpq
//! words out of the URL, hands tokio-postgres a mode it knows, and builds the rustls client
//! configuration that gives each mode libpq's meaning:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it | as `require` |
//! | `require` | always | checked against `sslrootcert` if one is given, else not checked |
//! | `verify-ca` | always | chain checked against `sslrootcert` (the system's roots without one) |
//! | `verify-full` | always | chain and host name checked, as `verify-ca` |
//!
//! "Not checked" still encrypts and checks the handshake's signatures, so it stops passive
//! listening but not a man in the middle: production databases should use `verify-full`.

use std::sync::Arc;

use bulkfhir_store::StoreError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_tokio_postgres::MakeRustlsConnect;
use tokio_postgres::config::SslMode;

/// A parsed database URL: the connection settings and the TLS connector to use with them.
#[derive(Clone)]
pub(crate) struct DatabaseUrl {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing of the settings: they hold the database password.
        f.write_str("DatabaseUrl { .. }")
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// Parses `url` (`postgres://…?sslmode=…&sslrootcert=…`, or the key=value form), with libpq's
/// `sslmode` words and `sslrootcert`.
pub(crate) fn parse_url(url: &str) -> Result<DatabaseUrl, StoreError> {
    let invalid = |why: String| StoreError::Invalid(format!("the database URL {why}"));
    let (rest, mode, root_file) = take_tls_words(url);
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(|e| invalid(format!("is not a PostgreSQL URL: {e}")))?;
    // `prefer` and `require` check a certificate only against a root they are given.
    let given_root = if root_file.is_some() { Check::Chain } else { Check::Nothing };
    let (ssl_mode, check) = match mode.as_deref() {
        None | Some("prefer") => (SslMode::Prefer, given_root),
        Some("disable") => (SslMode::Disable, Check::Nothing),
        Some("require") => (SslMode::Require, given_root),
        Some("verify-ca") => (SslMode::Require, Check::Chain),
        Some("verify-full") => (SslMode::Require, Check::ChainAndName),
        Some(other) => {
            return Err(invalid(format!(
                "has sslmode={other}: use disable, prefer, require, verify-ca or verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = match check {
        Check::Nothing => None,
        Check::Chain | Check::ChainAndName => {
            let roots = Arc::new(roots(root_file.as_deref()).map_err(invalid)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(format!("has roots rustls refuses: {e}")))?;
            Some(webpki)
        }
    };
    let verifier = Arc::new(Verifier {
        provider: provider.clone(),
        chain,
        check_name: check == Check::ChainAndName,
    });
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("cannot be served by rustls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(DatabaseUrl { config, tls: MakeRustlsConnect::new(client) })
}

/// `url` without its `sslmode` and `sslrootcert` settings, and their values. Both URL and
/// key=value forms; a value in quotes in the key=value form is left alone (and so is the rest).
fn take_tls_words(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if let Some((base, query)) = url.split_once('?')
        && (url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        // The other settings are kept as written: decoding and encoding them again would turn
        // `%20` into `+`, which tokio-postgres does not read as a space.
        let mut kept = Vec::new();
        for segment in query.split('&').filter(|segment| !segment.is_empty()) {
            let Some((key, value)) = form_urlencoded::parse(segment.as_bytes()).next() else {
                continue;
            };
            match key.as_ref() {
                "sslmode" => mode = Some(value.into_owned()),
                "sslrootcert" => root = Some(value.into_owned()),
                _ => kept.push(segment),
            }
        }
        let query = kept.join("&");
        let rest = if query.is_empty() { base.to_owned() } else { format!("{base}?{query}") };
        return (rest, mode, root);
    }
    if url.contains('\'') || url.contains("://") {
        return (url.to_owned(), None, None);
    }
    let mut kept = Vec::new();
    for word in url.split_whitespace() {
        match word.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_owned()),
            Some(("sslrootcert", value)) => root = Some(value.to_owned()),
            _ => kept.push(word),
        }
    }
    (kept.join(" "), mode, root)
}

/// The roots to check the server's chain against: the PEM file `sslrootcert` names, or the
/// system's store.
fn roots(file: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<_, _>>())
                .map_err(|e| format!("names sslrootcert={path}, which cannot be read: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("names sslrootcert={path}, which holds no certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("asks to verify the server, but the system has no root \
                            certificates: give sslrootcert=FILE"
                    .to_owned());
            }
        }
    }
    Ok(roots)
}

/// The server's certificate checked as the mode says: not at all, by its chain, or by its chain
/// and name (rustls's WebPKI verifier). The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    /// `None`: the certificate is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// libpq's `verify-full`; without it (`verify-ca`) any name is accepted.
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::take_tls_words;

    #[test]
    fn libpq_tls_words_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_words(
            "postgres://u:p@db.example:5432/fhir?sslmode=verify-full&options=-c%20search_path%3Dx&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db.example:5432/fhir?options=-c%20search_path%3Dx");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/ca.pem")));
        let (rest, mode, root) = take_tls_words("postgres://u@h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgres://u@h/db", Some("require"), None)
        );
        let (rest, mode, root) =
            take_tls_words("host=h user=u sslmode=verify-ca sslrootcert=/ca.pem dbname=d");
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-ca"), Some("/ca.pem")));
        assert_eq!(take_tls_words("postgres://u@h/db").0, "postgres://u@h/db");
    }
}
