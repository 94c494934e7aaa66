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
            let url =
                keys::check_jwks_url(text).map_err(anyhow::Error::msg).context("--jwks-url")?;
            (None, Some(url))
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

/// What `bulkfhir client token` needs.
#[derive(Debug)]
pub(crate) struct TokenRequest<'a> {
    pub(crate) base_url: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) key: &'a Path,
    pub(crate) kid: Option<&'a str>,
    pub(crate) scope: &'a str,
}

/// Asks the server's token endpoint for an access token with a freshly signed assertion.
pub(crate) async fn token(request: &TokenRequest<'_>) -> anyhow::Result<String> {
    let (pem, kid, alg) = load_key(request.key, request.kid)?;
    let key = SigningKey { pem: &pem, kid: &kid, alg };
    let granted = request_token(&key, request.base_url, request.client_id, request.scope)
        .await
        .with_context(|| format!("with the key {}", request.key.display()))?;
    eprintln!("granted: {} (expires in {} s)", granted.scope, granted.expires_in);
    Ok(granted.access_token)
}

/// A client's private key file: PKCS#8 PEM (its key id given, or read from the `jwks.json`
/// `client keygen` wrote beside it), or a private JWK / JWKS (its own `kid` unless one is
/// given). Returns the PEM, the key id and the algorithm.
pub(crate) fn load_key(
    path: &Path,
    kid: Option<&str>,
) -> anyhow::Result<(String, String, bulkfhir_auth::Algorithm)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let (pem, alg, own_kid) = keys::private_jwk_to_pem(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let kid = kid
            .map(str::to_owned)
            .or(own_kid)
            .with_context(|| format!("give --kid ({} has no kid)", path.display()))?;
        return Ok((pem, kid, alg));
    }
    let beside = path.with_file_name("jwks.json");
    let jwks: Option<serde_json::Value> =
        std::fs::read_to_string(&beside).ok().and_then(|t| serde_json::from_str(&t).ok());
    let first = jwks.as_ref().map(|j| &j["keys"][0]);
    let kid = match (kid, first.and_then(|k| k["kid"].as_str())) {
        (Some(kid), _) | (None, Some(kid)) => kid.to_owned(),
        (None, None) => bail!("give --kid (no jwks.json beside {})", path.display()),
    };
    // The key's own algorithm identifier decides (a search for "RSA" in the text once matched
    // the base64 of an EC key); the JWKS beside it only when the PEM does not say.
    let alg = match keys::pem_algorithm(&text) {
        Some(alg) => alg,
        None if first.is_some_and(|k| k["kty"] == "RSA") => bulkfhir_auth::Algorithm::RS384,
        None if first.is_some_and(|k| k["kty"] == "EC") => bulkfhir_auth::Algorithm::ES384,
        None => bail!("{} is not a PEM private key (RSA or EC) nor a private JWK", path.display()),
    };
    Ok((text, kid, alg))
}

/// A client's private key and what its JWKS says of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SigningKey<'a> {
    /// PKCS#8 PEM.
    pub(crate) pem: &'a str,
    pub(crate) kid: &'a str,
    pub(crate) alg: bulkfhir_auth::Algorithm,
}

/// What a token endpoint granted.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) access_token: String,
    pub(crate) scope: String,
    pub(crate) expires_in: u64,
}

/// What any backend client does: finds the token endpoint in `.well-known/smart-configuration`
/// under `base_url`, signs a two-minute assertion as `client_id`, and asks for `scope`.
pub(crate) async fn request_token(
    key: &SigningKey<'_>,
    base_url: &str,
    client_id: &str,
    scope: &str,
) -> anyhow::Result<Granted> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("build an HTTP client")?;
    let base = base_url.trim_end_matches('/');
    let discovery = format!("{base}/.well-known/smart-configuration");
    let config: serde_json::Value = http
        .get(&discovery)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {discovery}"))?
        .json()
        .await
        .with_context(|| format!("read {discovery}"))?;
    let token_url =
        config["token_endpoint"].as_str().context("the server names no token_endpoint")?;
    let now = u64::try_from(Instant::now().as_micros() / 1_000_000).unwrap_or(0);
    let jti = uuid::Uuid::new_v4().to_string();
    let assertion = keys::sign_assertion(
        key.pem,
        &keys::ClientAssertion {
            alg: key.alg,
            kid: Some(key.kid),
            client_id,
            token_url,
            now,
            seconds: 120,
            jti: &jti,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}: is it the client's private key?"))?;
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
            ("scope", scope),
        ])
        .finish();
    let response = http
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .with_context(|| format!("POST {token_url}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the token endpoint refused: {} {} ({status})",
            body["error"].as_str().unwrap_or("?"),
            body["error_description"].as_str().unwrap_or("")
        );
    }
    Ok(Granted {
        access_token: body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access_token in the answer")?,
        scope: body["scope"].as_str().unwrap_or_default().to_owned(),
        expires_in: body["expires_in"].as_u64().unwrap_or(0),
    })
}

/// The algorithm a generated key is for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAlg {
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// RSA (3072 bits) with SHA-384.
    Rs384,
}

impl KeyAlg {
    fn name(self) -> &'static str {
        match self {
            KeyAlg::Es384 => "ES384",
            KeyAlg::Rs384 => "RS384",
        }
    }
}

/// Writes `private-key.pem` (mode 0600) and `jwks.json` for `alg` into `out`.
pub(crate) fn keygen(out: &Path, alg: KeyAlg) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let key_path = out.join("private-key.pem");
    let jwks_path = out.join("jwks.json");
    if key_path.exists() {
        bail!("{} exists already; choose another --out", key_path.display());
    }
    let kid = uuid::Uuid::new_v4().to_string();
    let (pem, jwks) = match alg {
        KeyAlg::Es384 => keys::generate_es384(&kid)?,
        KeyAlg::Rs384 => keys::generate_rs384(&kid)?,
    };
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
    println!("{} key {kid}", alg.name());
    println!("private key: {} (keep it secret)", key_path.display());
    println!("public JWKS: {} (register it: bulkfhir client add --jwks ...)", jwks_path.display());
    Ok(ExitCode::SUCCESS)
}
