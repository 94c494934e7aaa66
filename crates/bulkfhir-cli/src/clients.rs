//! `bulkfhir client`: register SMART backend clients in the store, and make a key pair to try.

use std::{path::Path, process::ExitCode};

use anyhow::{Context, bail};
use bulkfhir_auth::{Grant, keys};
use bulkfhir_model::Instant;
use bulkfhir_store::{ClientRecord, ClientStore};

/// Where a client's public keys come from.
#[derive(Debug)]
pub(crate) enum KeySource<'a> {
    /// A JWKS file, stored inline.
    File(&'a Path),
    /// A JWKS URL, fetched when the client authenticates.
    Url(&'a str),
}

/// Registers a client; prints and returns its id.
pub(crate) async fn add(
    store: &dyn ClientStore,
    name: &str,
    keys_from: KeySource<'_>,
    scope: &str,
) -> anyhow::Result<String> {
    let grant = Grant::parse(scope).context("--scope")?;
    if grant.is_empty() {
        bail!("--scope grants nothing: give system/ scopes such as \"system/*.rs\"");
    }
    let (jwks, jwks_url) = match keys_from {
        KeySource::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            keys::check_jwks(&text)
                .map_err(anyhow::Error::msg)
                .context(path.display().to_string())?;
            (Some(text), None)
        }
        KeySource::Url(text) => {
            let url = url::Url::parse(text).context("--jwks-url is not a URL")?;
            let loopback = match url.host() {
                Some(url::Host::Domain(name)) => name == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            let allowed = url.scheme() == "https" || (url.scheme() == "http" && loopback);
            if !allowed || !url.username().is_empty() || url.password().is_some() {
                bail!(
                    "--jwks-url must be an https:// URL without credentials (plain http only on \
                     loopback, for tests)"
                );
            }
            (None, Some(url.to_string()))
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let record = ClientRecord {
        id: id.clone(),
        name: name.to_owned(),
        jwks,
        jwks_url,
        scope: grant.to_scope_string(),
        created: Instant::now(),
    };
    store.add_client(record).await?;
    println!("{id}");
    Ok(id)
}

/// Lists the registered clients.
pub(crate) async fn list(store: &dyn ClientStore) -> anyhow::Result<ExitCode> {
    let clients = store.clients().await?;
    if clients.is_empty() {
        println!("no clients are registered; add one with `bulkfhir client add`");
    }
    for client in clients {
        let keys = match (&client.jwks, &client.jwks_url) {
            (_, Some(url)) => format!("jwks_url {url}"),
            (Some(_), None) => "inline JWKS".to_owned(),
            (None, None) => "no keys".to_owned(),
        };
        println!(
            "{}\t{}\t{}\t{}\tregistered {}",
            client.id,
            client.name,
            client.scope,
            keys,
            client.created.to_fhir()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes a client (exit code 2 when there was none with that id).
pub(crate) async fn remove(store: &dyn ClientStore, id: &str) -> anyhow::Result<ExitCode> {
    if store.remove_client(id).await? {
        println!("removed client {id}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("no client {id}");
        Ok(ExitCode::from(2))
    }
}

/// Writes `private-key.pem` (mode 0600) and `jwks.json` into `out`.
pub(crate) fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let key_path = out.join("private-key.pem");
    let jwks_path = out.join("jwks.json");
    if key_path.exists() {
        bail!("{} exists already; choose another --out", key_path.display());
    }
    let kid = uuid::Uuid::new_v4().to_string();
    let (pem, jwks) = keys::generate_es384(&kid)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options
        .open(&key_path)
        .and_then(|mut file| file.write_all(pem.as_bytes()))
        .with_context(|| format!("write {}", key_path.display()))?;
    std::fs::write(&jwks_path, jwks).with_context(|| format!("write {}", jwks_path.display()))?;
    println!("ES384 key {kid}");
    println!("private key: {} (keep it secret)", key_path.display());
    println!("public JWKS: {} (register it: bulkfhir client add --jwks ...)", jwks_path.display());
    Ok(ExitCode::SUCCESS)
}
