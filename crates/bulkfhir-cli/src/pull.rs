//! `bulkfhir pull BASE_URL`: a Bulk Data client for any server. It kicks off an export (system,
//! Patient or Group level, every kick-off parameter), polls the status URL as the server asks
//! (`Retry-After`, backing off on 429 and 5xx), follows partial manifests, and downloads the
//! files several at a time into `--out`, resuming a partial file with `Range`.
//!
//! Resumable: everything it learns goes into a state file in `--out` (`.bulkfhir-pull.json`,
//! written whole and renamed), so a rerun of the same command after Ctrl-C or a crash continues
//! the same job and fetches only what is missing. A file is downloaded to `NAME.part` and renamed
//! only once complete and checked (its line count against the manifest's `count`), so nothing
//! half-written ever looks complete, and a file under its final name is done: the state need not
//! be saved after every file (thousands of small files made that quadratic).

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bulkfhir_model::Instant as FhirInstant;
use clap::Args;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::clients::{SigningKey, request_token};

/// The state file in `--out`.
const STATE_FILE: &str = ".bulkfhir-pull.json";
/// The longest wait between two polls, whatever `Retry-After` says.
const MAX_POLL_WAIT: Duration = Duration::from_secs(120);
/// A token is renewed when it has less than this left.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub(crate) struct PullArgs {
    /// The server's FHIR base URL, e.g. https://fhir.example.org/fhir.
    base_url: String,
    /// Patient-level export (`Patient/$export`) instead of system level.
    #[arg(long, conflicts_with = "group")]
    patient_level: bool,
    /// Group-level export of this Group id (`Group/ID/$export`).
    #[arg(long)]
    group: Option<String>,
    /// `_type`: resource types, comma-separated.
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
    /// `_since`: an instant (2024-01-01T00:00:00Z).
    #[arg(long, conflicts_with = "since_last")]
    since: Option<String>,
    /// `_since` = the `transactionTime` of the last pull completed into `--out`, so successive
    /// pulls partition the data exactly.
    #[arg(long)]
    since_last: bool,
    /// `_until`: an instant.
    #[arg(long)]
    until: Option<String>,
    /// `_typeFilter`: a query such as `Observation?category=laboratory` (repeatable).
    #[arg(long = "type-filter")]
    type_filters: Vec<String>,
    /// `_elements`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    elements: Vec<String>,
    /// `_outputFormat` (the server's default when absent).
    #[arg(long)]
    output_format: Option<String>,
    /// `includeAssociatedData`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    include_associated_data: Vec<String>,
    /// `organizeOutputBy` (e.g. Patient).
    #[arg(long)]
    organize_output_by: Option<String>,
    /// `Prefer: handling=lenient`: the server drops what it cannot do instead of refusing.
    #[arg(long)]
    lenient: bool,
    /// Kick off with POST and a `Parameters` body instead of GET.
    #[arg(long)]
    post: bool,
    /// The folder for the NDJSON files (`{Type}.{n}.ndjson`, deletions in `deleted/`, errors in
    /// `error/`), `manifest.json`, and the state file. A new pull into it replaces the previous
    /// pull's files (the state keeps its transactionTime for --since-last).
    #[arg(long, default_value = "bulk-data")]
    out: PathBuf,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Keep the files gzipped (`.ndjson.gz`).
    #[arg(long)]
    gzip: bool,
    /// Do not ask for `Accept-Encoding: gzip` on downloads. Compression saves about 90% of the
    /// bytes on a network, but costs CPU on both ends: on loopback or a fast LAN the files come
    /// faster without it (360,000 resources from a bulkfhir on the same machine: 2.1x).
    #[arg(long)]
    no_wire_gzip: bool,
    /// Cancel the export the state file in `--out` follows (DELETE on its status URL).
    #[arg(long)]
    cancel: bool,
    /// SMART Backend Services: the client id (with --key).
    #[arg(long, requires = "key")]
    client_id: Option<String>,
    /// The client's private key, ES384 or RS384: PKCS#8 PEM (its key id read from the
    /// `jwks.json` beside it unless --kid is given) or a private JWK / JWKS (its own kid).
    #[arg(long, requires = "client_id")]
    key: Option<PathBuf>,
    /// The key id, when there is no `jwks.json` beside the key.
    #[arg(long)]
    kid: Option<String>,
    /// The scopes to ask for.
    #[arg(long, default_value = "system/*.rs")]
    scope: String,
    /// Retries of a failing poll or download (5xx, a lost connection), with backoff from half a
    /// second, before the pull gives up.
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Apply the pull to the bulkfhir store in this data directory (with --into-database, to
    /// that PostgreSQL database): every resource upserted with the source's meta, every listed
    /// deletion applied, so that with --since-last the store is an exact replica of the source
    /// as of each pull's transactionTime.
    #[arg(long)]
    into: Option<PathBuf>,
    /// With --into: the replica's PostgreSQL database.
    #[arg(long, requires = "into")]
    into_database: Option<String>,
    /// Give up when the export has not finished after this many seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    max_wait_secs: u64,
}

/// What a pull has learnt so far, kept in `--out`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The kick-off as sent (method and URL, and the body of a POST): a rerun with different
    /// parameters is a different pull.
    request: String,
    status_url: Option<String>,
    transaction_time: Option<String>,
    requires_access_token: bool,
    files: Vec<FileState>,
    complete: bool,
    /// Whether this pull was applied to the `--into` store.
    #[serde(default)]
    applied: bool,
    /// The `transactionTime` of the last pull completed into this folder (`--since-last`).
    last_transaction_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileState {
    url: String,
    /// `output`, `deleted` or `error`.
    kind: String,
    resource_type: String,
    /// The local file, relative to `--out`.
    name: String,
    count: Option<u64>,
    done: bool,
}

impl FileState {
    /// Where the file is downloaded to before it is checked (plain NDJSON, also for --gzip).
    fn part_name(&self) -> String {
        format!("{}.part", self.name.trim_end_matches(".gz"))
    }
}

impl State {
    fn load(out: &Path) -> anyhow::Result<Option<State>> {
        let path = out.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not a pull state file", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// Written whole under a temporary name, then renamed: a crash leaves the old or the new.
    fn save(&self, out: &Path) -> anyhow::Result<()> {
        let path = out.join(STATE_FILE);
        let partial = out.join(format!("{STATE_FILE}.partial"));
        let bytes = serde_json::to_vec_pretty(self).context("encode the pull state")?;
        std::fs::write(&partial, bytes).with_context(|| format!("write {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("write {}", path.display()))
    }
}

/// Access tokens from the server's token endpoint, renewed before they expire.
struct Tokens {
    pem: String,
    kid: String,
    alg: bulkfhir_auth::Algorithm,
    base_url: String,
    client_id: String,
    scope: String,
    current: Option<(String, Instant)>,
}

impl Tokens {
    fn from_args(args: &PullArgs) -> anyhow::Result<Option<Tokens>> {
        let (Some(client_id), Some(key)) = (&args.client_id, &args.key) else { return Ok(None) };
        let (pem, kid, alg) = crate::clients::load_key(key, args.kid.as_deref())?;
        Ok(Some(Tokens {
            pem,
            kid,
            alg,
            base_url: args.base_url.clone(),
            client_id: client_id.clone(),
            scope: args.scope.clone(),
            current: None,
        }))
    }

    /// A token with at least [`TOKEN_MARGIN`] left, asking for a new one when needed.
    async fn get(&mut self) -> anyhow::Result<String> {
        if let Some((token, until)) = &self.current
            && until.checked_duration_since(Instant::now()).is_some_and(|left| left > TOKEN_MARGIN)
        {
            return Ok(token.clone());
        }
        let key = SigningKey { pem: &self.pem, kid: &self.kid, alg: self.alg };
        let granted = request_token(&key, &self.base_url, &self.client_id, &self.scope).await?;
        let lifetime = Duration::from_secs(granted.expires_in.max(1));
        self.current = Some((granted.access_token.clone(), Instant::now() + lifetime));
        Ok(granted.access_token)
    }
}

/// The HTTP side of a pull: one client, and tokens when authorization is used.
struct Session {
    http: reqwest::Client,
    tokens: Option<Mutex<Tokens>>,
}

impl Session {
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        Ok(match &self.tokens {
            Some(tokens) => request.bearer_auth(tokens.lock().await.get().await?),
            None => request,
        })
    }
}

/// The kick-off: method, URL and body.
fn kickoff_request(
    args: &PullArgs,
    since: Option<&str>,
) -> (reqwest::Method, String, Option<Value>) {
    let base = args.base_url.trim_end_matches('/');
    let path = match (&args.group, args.patient_level) {
        (Some(group), _) => format!("Group/{group}/$export"),
        (None, true) => "Patient/$export".to_owned(),
        (None, false) => "$export".to_owned(),
    };
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(format) = &args.output_format {
        params.push(("_outputFormat", format.clone()));
    }
    if !args.types.is_empty() {
        params.push(("_type", args.types.join(",")));
    }
    if let Some(since) = since {
        params.push(("_since", since.to_owned()));
    }
    if let Some(until) = &args.until {
        params.push(("_until", until.clone()));
    }
    for filter in &args.type_filters {
        params.push(("_typeFilter", filter.clone()));
    }
    if !args.elements.is_empty() {
        params.push(("_elements", args.elements.join(",")));
    }
    if !args.include_associated_data.is_empty() {
        params.push(("includeAssociatedData", args.include_associated_data.join(",")));
    }
    if let Some(by) = &args.organize_output_by {
        params.push(("organizeOutputBy", by.clone()));
    }
    let url = format!("{base}/{path}");
    if args.post {
        let parameter: Vec<Value> = params
            .iter()
            .map(|(name, value)| {
                let typed = if matches!(*name, "_since" | "_until") {
                    "valueInstant"
                } else {
                    "valueString"
                };
                json!({"name": name, typed: value})
            })
            .collect();
        let body = json!({"resourceType": "Parameters", "parameter": parameter});
        return (reqwest::Method::POST, url, Some(body));
    }
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
    let url = if query.is_empty() { url } else { format!("{url}?{query}") };
    (reqwest::Method::GET, url, None)
}

/// The wait before retry number `failures` (from 1): half a second, doubling, at most 16 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500 << failures.saturating_sub(1).min(5))
}

/// How long `Retry-After` asks to wait (seconds or an HTTP date), within bounds.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let seconds = (at.timestamp() - chrono::Utc::now().timestamp()).max(0);
            Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
        }
    };
    Some(wait.min(MAX_POLL_WAIT))
}

/// A short text of a failed response for messages: its status and the start of its body.
async fn describe(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let issue = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["issue"][0]["diagnostics"].as_str().map(str::to_owned));
    match issue {
        Some(text) => format!("{status}: {text}"),
        None => format!("{status}: {}", body.chars().take(200).collect::<String>()),
    }
}

pub(crate) async fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(300))
        .build()
        .context("build the HTTP client")?;
    let session = Session { http, tokens: Tokens::from_args(&args)?.map(Mutex::new) };
    let mut state = State::load(&args.out)?.unwrap_or_default();

    if args.cancel {
        let Some(status_url) = state.status_url.clone().filter(|_| !state.complete) else {
            bail!("no export in progress in {} to cancel", args.out.display());
        };
        let response = session
            .authorize(session.http.delete(&status_url))
            .await?
            .send()
            .await
            .with_context(|| format!("DELETE {status_url}"))?;
        if !(response.status().is_success() || response.status() == StatusCode::NOT_FOUND) {
            bail!("the server refused to cancel {status_url}: {}", describe(response).await);
        }
        remove_files(&args.out, &state);
        state.status_url = None;
        state.files.clear();
        state.save(&args.out)?;
        println!("cancelled {status_url}");
        return Ok(ExitCode::SUCCESS);
    }

    let since = match (&args.since, args.since_last) {
        (Some(since), _) => Some(since.clone()),
        (None, true) => Some(state.last_transaction_time.clone().with_context(|| {
            format!("--since-last: no pull completed into {} yet", args.out.display())
        })?),
        (None, false) => None,
    };
    let (method, url, body) = kickoff_request(&args, since.as_deref());
    let request =
        format!("{method} {url} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
    let resuming = state.status_url.is_some() && !state.complete;
    if resuming && state.request != request {
        bail!(
            "{} follows another export ({}); finish it by running that command again, cancel \
             it with --cancel, or use another --out",
            args.out.display(),
            state.request.trim()
        );
    }
    if resuming {
        eprintln!("resuming {}", state.status_url.as_deref().unwrap_or_default());
    } else {
        // A new pull replaces the files of the previous one in this folder.
        remove_files(&args.out, &state);
        state =
            State { last_transaction_time: state.last_transaction_time.take(), ..State::default() };
        state.request = request;
        let mut builder = session
            .http
            .request(method, &url)
            .header(header::ACCEPT, "application/fhir+json")
            .header(
                "prefer",
                if args.lenient { "respond-async, handling=lenient" } else { "respond-async" },
            );
        if let Some(body) = &body {
            builder = builder
                .header(header::CONTENT_TYPE, "application/fhir+json")
                .body(body.to_string());
        }
        let response = session
            .authorize(builder)
            .await?
            .send()
            .await
            .with_context(|| format!("kick off {url}"))?;
        if response.status() != StatusCode::ACCEPTED {
            bail!("the kick-off was refused: {}", describe(response).await);
        }
        let location = response
            .headers()
            .get(header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("the kick-off's 202 has no Content-Location")?;
        let status_url = absolute(location, "the kick-off's Content-Location")?;
        eprintln!("kicked off {url}\nstatus: {status_url}");
        state.status_url = Some(status_url);
        state.save(&args.out)?;
    }

    if state.files.is_empty() {
        let manifest =
            poll(&args, &session, state.status_url.as_deref().unwrap_or_default()).await?;
        take_manifest(&mut state, &manifest, &args)?;
        std::fs::write(args.out.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)
            .context("write manifest.json")?;
        state.save(&args.out)?;
    }
    download_all(&args, &session, &mut state).await?;
    if let Some(into) = &args.into
        && !state.applied
    {
        apply_into(&args, into, &state).await?;
        state.applied = true;
        state.save(&args.out)?;
    }
    state.complete = true;
    state.last_transaction_time = state.transaction_time.clone();
    state.save(&args.out)?;
    Ok(ExitCode::SUCCESS)
}

/// Removes the files of the pull `state` describes, finished or partial: only the current pull's
/// files ever stand under final names in the folder (what makes a file's presence mean done).
fn remove_files(out: &Path, state: &State) {
    for file in &state.files {
        let _ = std::fs::remove_file(out.join(&file.name));
        let _ = std::fs::remove_file(out.join(file.part_name()));
    }
}

/// `url` if it is an absolute http(s) URL.
fn absolute(url: &str, what: &str) -> anyhow::Result<String> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(url.to_owned()),
        _ => {
            bail!("{what} is not an absolute http(s) URL: {url:?} (the Bulk Data IG requires one)")
        }
    }
}

/// Polls the status URL until the export is complete; returns the whole manifest (partial
/// manifests followed through their `next` links and merged).
async fn poll(args: &PullArgs, session: &Session, status_url: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_wait_secs);
    let terminal = std::io::stderr().is_terminal();
    let spinner = terminal.then(|| {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut url = status_url.to_owned();
    let mut merged: Option<Value> = None;
    let mut failures = 0;
    let mut last_progress = String::new();
    loop {
        let request = session.http.get(&url).header(header::ACCEPT, "application/json");
        let outcome = session.authorize(request).await?.send().await;
        let wait = match outcome {
            Err(error) => {
                failures += 1;
                if failures > args.retries {
                    return Err(error).with_context(|| format!("poll {url}"));
                }
                backoff(failures)
            }
            Ok(response) => match response.status() {
                StatusCode::OK => {
                    let page: Value = response
                        .json()
                        .await
                        .with_context(|| format!("read the manifest at {url}"))?;
                    let next = page["link"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|l| l["relation"] == "next")
                        .and_then(|l| l["url"].as_str())
                        .map(str::to_owned);
                    merged = Some(match merged.take() {
                        None => page,
                        Some(mut all) => {
                            for key in ["output", "deleted", "error"] {
                                if let (Some(into), Some(more)) =
                                    (all[key].as_array_mut(), page[key].as_array())
                                {
                                    into.extend(more.iter().cloned());
                                }
                            }
                            all
                        }
                    });
                    match next {
                        Some(next) => {
                            url = absolute(&next, "a manifest's next link")?;
                            failures = 0;
                            continue;
                        }
                        None => {
                            if let Some(bar) = &spinner {
                                bar.finish_and_clear();
                            }
                            let mut manifest = merged.unwrap_or_default();
                            if let Some(object) = manifest.as_object_mut() {
                                object.remove("link");
                            }
                            return Ok(manifest);
                        }
                    }
                }
                StatusCode::ACCEPTED => {
                    failures = 0;
                    let progress = response
                        .headers()
                        .get("x-progress")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("in progress")
                        .to_owned();
                    match &spinner {
                        Some(bar) => bar.set_message(format!("export: {progress}")),
                        None if progress != last_progress => eprintln!("export: {progress}"),
                        None => {}
                    }
                    last_progress = progress;
                    retry_after(response.headers())
                        .unwrap_or(Duration::from_secs(1))
                        .max(Duration::from_millis(200))
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    retry_after(response.headers()).unwrap_or(Duration::from_secs(5))
                }
                status if status.is_server_error() => {
                    failures += 1;
                    let text = describe(response).await;
                    if failures > args.retries {
                        bail!("the status URL kept failing: {text}");
                    }
                    eprintln!("status poll failed ({text}); retrying");
                    backoff(failures)
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => bail!(
                    "the export is gone from the server (cancelled, expired or unknown): {}",
                    describe(response).await
                ),
                _ => bail!("the export failed: {}", describe(response).await),
            },
        };
        if Instant::now() + wait > deadline {
            bail!(
                "the export did not finish within {} s (--max-wait-secs); rerun the same command to go on waiting",
                args.max_wait_secs
            );
        }
        tokio::time::sleep(wait).await;
    }
}

/// Reads the manifest into the state: one local file per listed file.
fn take_manifest(state: &mut State, manifest: &Value, args: &PullArgs) -> anyhow::Result<()> {
    state.transaction_time = manifest["transactionTime"].as_str().map(str::to_owned);
    if state.transaction_time.as_deref().is_none_or(|t| FhirInstant::parse_fhir(t).is_err()) {
        bail!("the manifest has no valid transactionTime: {}", manifest["transactionTime"]);
    }
    state.requires_access_token = manifest["requiresAccessToken"].as_bool().unwrap_or(false);
    let mut numbers: BTreeMap<(String, String), u32> = BTreeMap::new();
    let extension = if args.gzip { "ndjson.gz" } else { "ndjson" };
    for kind in ["output", "deleted", "error"] {
        for item in manifest[kind].as_array().into_iter().flatten() {
            let url = item["url"]
                .as_str()
                .with_context(|| format!("a manifest {kind} entry has no url"))?;
            let url = absolute(url, &format!("the manifest's {kind} file URL"))?;
            let resource_type = item["type"].as_str().unwrap_or("Unknown").to_owned();
            if !resource_type.chars().all(|c| c.is_ascii_alphanumeric()) {
                bail!("the manifest names an odd type {resource_type:?}");
            }
            let n = numbers.entry((kind.to_owned(), resource_type.clone())).or_default();
            *n += 1;
            let folder = if kind == "output" { String::new() } else { format!("{kind}/") };
            state.files.push(FileState {
                url,
                kind: kind.to_owned(),
                name: format!("{folder}{resource_type}.{n}.{extension}"),
                resource_type,
                count: item["count"].as_u64(),
                done: false,
            });
        }
    }
    Ok(())
}

/// Downloads every file not yet done, `--parallel` at once; the first failure stops the pull
/// (after the others in flight end) with its message.
async fn download_all(args: &PullArgs, session: &Session, state: &mut State) -> anyhow::Result<()> {
    let started = Instant::now();
    // A file has its final name only once it was checked whole, so a file that exists is done,
    // whether or not the state saved that before a crash.
    for file in &mut state.files {
        file.done = file.done || args.out.join(&file.name).is_file();
    }
    let pending: Vec<usize> = (0..state.files.len()).filter(|&i| !state.files[i].done).collect();
    let total = state.files.len();
    let terminal = std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let overall = terminal.then(|| {
        let bar = bars.add(ProgressBar::new(pending.len() as u64));
        bar.set_style(
            ProgressStyle::with_template("{spinner} files {pos}/{len} {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let requires_token = state.requires_access_token;
    let files = &state.files;
    let results = futures::stream::iter(pending.iter().copied())
        .map(|index| {
            let file = &files[index];
            let (bars, overall) = (&bars, &overall);
            async move {
                let bar = terminal.then(|| {
                    let bar = bars.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "  {msg:30} {bytes:>10} {binary_bytes_per_sec:>12}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_message(file.name.clone());
                    bar
                });
                let result = download(args, session, file, requires_token, bar.as_ref()).await;
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                if let Ok(lines) = &result {
                    match overall {
                        Some(bar) => bar.inc(1),
                        None => eprintln!("downloaded {} ({lines} resources)", file.name),
                    }
                }
                let result = result.with_context(|| format!("{} ({})", file.name, file.url));
                (index, result)
            }
        })
        .buffer_unordered(args.parallel.max(1))
        .collect::<Vec<(usize, anyhow::Result<u64>)>>()
        .await;
    if let Some(bar) = overall {
        bar.finish_and_clear();
    }
    let mut resources = 0;
    let mut first_error = None;
    for (index, result) in results {
        match result {
            Ok(lines) => {
                state.files[index].done = true;
                resources += lines;
            }
            Err(error) => first_error = first_error.or(Some(error)),
        }
    }
    state.save(&args.out)?;
    if let Some(error) = first_error {
        return Err(error);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "pulled {total} files ({} this run, {resources} resources, {:.1} resources/s) into {}; transactionTime {}",
        pending.len(),
        resources as f64 / seconds.max(1e-9),
        args.out.display(),
        state.transaction_time.as_deref().unwrap_or("?"),
    );
    Ok(())
}

/// Downloads one file to `NAME.part` (resuming it with `Range` when it exists), checks it, and
/// renames it into place. Returns its line count.
async fn download(
    args: &PullArgs,
    session: &Session,
    file: &FileState,
    requires_token: bool,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<u64> {
    let target = args.out.join(&file.name);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let part = args.out.join(file.part_name());
    let mut failures = 0;
    let lines = loop {
        match fetch(session, file, requires_token, !args.no_wire_gzip, &part, bar).await {
            Ok(lines) => break lines,
            Err(Fetch::Fatal(error)) => return Err(error),
            Err(Fetch::Transient(error)) => {
                failures += 1;
                if failures > args.retries {
                    return Err(error.context("the download kept failing"));
                }
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    };
    // Checked as it arrived: whole lines, each a JSON object; as many as the manifest says.
    if let Some(count) = file.count
        && count != lines
    {
        bail!("the file holds {lines} resources; the manifest says {count}");
    }
    if args.gzip {
        let partial_gz = args.out.join(format!("{}.partial", file.name));
        let mut source =
            std::fs::File::open(&part).with_context(|| format!("read {}", part.display()))?;
        let sink = std::fs::File::create(&partial_gz)
            .with_context(|| format!("write {}", partial_gz.display()))?;
        let mut encoder = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
        std::io::copy(&mut source, &mut encoder)
            .and_then(|_| encoder.finish())
            .with_context(|| format!("gzip into {}", partial_gz.display()))?;
        std::fs::rename(&partial_gz, &target)
            .with_context(|| format!("write {}", target.display()))?;
        std::fs::remove_file(&part).with_context(|| format!("remove {}", part.display()))?;
    } else {
        std::fs::rename(&part, &target).with_context(|| format!("write {}", target.display()))?;
    }
    Ok(lines)
}

/// Checks NDJSON as it streams by: whole lines only, each a JSON object (its first byte is `{`;
/// the lines are not parsed); counts them.
#[derive(Debug, Clone, Copy)]
struct Checker {
    lines: u64,
    at_line_start: bool,
    last: u8,
}

impl Checker {
    fn new() -> Self {
        Checker { lines: 0, at_line_start: true, last: b'\n' }
    }

    fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        let Some(&last) = chunk.last() else { return Ok(()) };
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk).chain(std::iter::once(chunk.len())) {
            let piece = &chunk[start..end];
            if self.at_line_start && !piece.is_empty() && piece[0] != b'{' {
                bail!(
                    "line {} is not a JSON object: {:.60}",
                    self.lines + 1,
                    String::from_utf8_lossy(piece)
                );
            }
            if end < chunk.len() {
                // A newline: the line ends here (empty lines do not count).
                if !(self.at_line_start && piece.is_empty()) {
                    self.lines += 1;
                }
                self.at_line_start = true;
                start = end + 1;
            } else {
                self.at_line_start = self.at_line_start && piece.is_empty();
            }
        }
        self.last = last;
        Ok(())
    }

    /// The line count, when the data ended with a whole line.
    fn finish(&self) -> anyhow::Result<u64> {
        if self.last != b'\n' {
            bail!("the file ends in the middle of a line (truncated)");
        }
        Ok(self.lines)
    }

    /// A checker that has seen what `path` holds (a part file a download resumes).
    fn of_file(path: &Path) -> anyhow::Result<Checker> {
        use std::io::Read;
        let mut checker = Checker::new();
        let mut file =
            std::fs::File::open(path).with_context(|| format!("read {}", path.display()))?;
        let mut buffer = vec![0_u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer).with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                return Ok(checker);
            }
            checker.feed(&buffer[..n])?;
        }
    }
}

/// A file that checks what is written to it (buffered: the response arrives in chunks of a
/// few KiB, and a write call per chunk showed in the client's profile).
struct Checked {
    file: std::io::BufWriter<std::fs::File>,
    checker: Checker,
}

impl Write for Checked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.checker.feed(&buf[..n]).map_err(std::io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Where a download's bytes go: straight into the part file, or through a gzip decoder.
enum Sink {
    Plain(Checked),
    /// `Content-Encoding: gzip`.
    Gzip(flate2::write::GzDecoder<Checked>),
    /// A body that is itself a gzip file.
    StoredGzip(flate2::write::GzDecoder<Checked>),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Plain(checked) => checked.write_all(bytes).context("write"),
            Sink::Gzip(decoder) | Sink::StoredGzip(decoder) => {
                decoder.write_all(bytes).context("the gzip stream is corrupt")
            }
        }
    }

    /// Flushes (a gzip stream must have ended with its trailer); the file's line count.
    fn finish(self) -> anyhow::Result<u64> {
        let mut checked = match self {
            Sink::Plain(checked) => checked,
            Sink::Gzip(decoder) | Sink::StoredGzip(decoder) => {
                decoder.finish().context("the gzip stream is truncated or corrupt (no end)")?
            }
        };
        checked.flush().context("write")?;
        checked.checker.finish()
    }
}

/// How a download attempt failed.
enum Fetch {
    /// Worth another try (a 5xx, a lost connection): the part file keeps what arrived.
    Transient(anyhow::Error),
    /// Not (expired, refused, not NDJSON, corrupt).
    Fatal(anyhow::Error),
}

/// One attempt: GET (with `Range` after what `part` holds), appending to `part`.
async fn fetch(
    session: &Session,
    file: &FileState,
    requires_token: bool,
    wire_gzip: bool,
    part: &Path,
    bar: Option<&ProgressBar>,
) -> Result<u64, Fetch> {
    let fatal = |e: anyhow::Error| Fetch::Fatal(e);
    let have = std::fs::metadata(part).map_or(0, |m| m.len());
    let mut request = session.http.get(&file.url).header(header::ACCEPT, "application/fhir+ndjson");
    if have > 0 {
        // Ranges are in the stored bytes: ask for them unencoded.
        request = request
            .header(header::RANGE, format!("bytes={have}-"))
            .header(header::ACCEPT_ENCODING, "identity");
    } else {
        let encoding = if wire_gzip { "gzip" } else { "identity" };
        request = request.header(header::ACCEPT_ENCODING, encoding);
    }
    if requires_token {
        request = session.authorize(request).await.map_err(fatal)?;
    }
    let response = request.send().await.map_err(|e| Fetch::Transient(e.into()))?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        return Err(fatal(anyhow::anyhow!(
            "the file is gone from the server ({status}): it expired or the export was cancelled; start a new pull"
        )));
    }
    if status.is_server_error() {
        return Err(Fetch::Transient(anyhow::anyhow!("{}", describe(response).await)));
    }
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        // The part file already holds the whole file.
        return Checker::of_file(part).and_then(|c| c.finish()).map_err(fatal);
    }
    if !(status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT) {
        return Err(fatal(anyhow::anyhow!("{}", describe(response).await)));
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.contains("html") {
        return Err(fatal(anyhow::anyhow!(
            "the server sent {content_type}, not NDJSON (a login page or an error page?)"
        )));
    }
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let append = status == StatusCode::PARTIAL_CONTENT;
    let handle = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(|e| fatal(anyhow::Error::new(e).context(format!("open {}", part.display()))))?;
    // What the part file already holds is checked once, for a resumed download.
    let checker = if append { Checker::of_file(part).map_err(fatal)? } else { Checker::new() };
    let mut sink: Option<Sink> = None;
    let mut handle =
        Some(Checked { file: std::io::BufWriter::with_capacity(256 << 10, handle), checker });
    if let Some(bar) = bar {
        bar.set_position(if append { have } else { 0 });
    }
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let error = anyhow::Error::new(error).context("the connection broke mid-file");
                // What a stored .gz file decoded to cannot be resumed by a byte range of it.
                if matches!(sink, Some(Sink::StoredGzip(_))) {
                    drop(sink);
                    let _ = std::fs::remove_file(part);
                }
                return Err(Fetch::Transient(error));
            }
        };
        let sink = match &mut sink {
            Some(sink) => sink,
            None => {
                let file = handle.take().ok_or_else(|| fatal(anyhow::anyhow!("no file")))?;
                // A body that is a gzip file (magic 1f 8b) though not content-encoded: a server
                // that stores .ndjson.gz; it is decoded too.
                let stored_gzip = !encoded && !append && chunk.starts_with(&[0x1f, 0x8b]);
                sink.insert(if encoded {
                    Sink::Gzip(flate2::write::GzDecoder::new(file))
                } else if stored_gzip {
                    Sink::StoredGzip(flate2::write::GzDecoder::new(file))
                } else {
                    Sink::Plain(file)
                })
            }
        };
        sink.write(&chunk).map_err(|e| fatal(e.context(format!("write {}", part.display()))))?;
        if let Some(bar) = bar {
            bar.inc(chunk.len() as u64);
        }
    }
    let finished = match sink {
        Some(sink) => sink.finish(),
        // An empty body.
        None => handle.map_or(Ok(0), |checked| checked.checker.finish()),
    };
    finished.map_err(|error| {
        let _ = std::fs::remove_file(part);
        fatal(error)
    })
}

/// Applies a finished pull to a bulkfhir store: the output files loaded with their own meta kept,
/// then the deletions the `deleted` files list.
async fn apply_into(args: &PullArgs, data_dir: &Path, state: &State) -> anyhow::Result<()> {
    use bulkfhir_model::{ResourceId, ResourceType};
    use bulkfhir_store::{
        Atomicity, WriteOp,
        loader::{LoadOptions, load_files},
    };
    let stores = bulkfhir_app::Stores::open(data_dir, args.into_database.as_deref()).await?;
    let outputs: Vec<PathBuf> =
        state.files.iter().filter(|f| f.kind == "output").map(|f| args.out.join(&f.name)).collect();
    let options = LoadOptions { keep_source_meta: true, ..LoadOptions::default() };
    let report = load_files(stores.resources.as_ref(), outputs, options, &|_| {})
        .await
        .with_context(|| format!("apply the pull to {}", data_dir.display()))?;
    if let Some(first) = report.rejections.first() {
        bail!(
            "{} resources could not be applied to {}; the first, {}:{}: {}",
            report.n_rejected,
            data_dir.display(),
            first.file.display(),
            first.line,
            first.reason
        );
    }
    let mut deletions = Vec::new();
    for file in state.files.iter().filter(|f| f.kind == "deleted") {
        let path = args.out.join(&file.name);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let text = if file.name.ends_with(".gz") {
            let mut decoded = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                &mut decoded,
            )
            .with_context(|| format!("gunzip {}", path.display()))?;
            decoded
        } else {
            String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?
        };
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bundle: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), number + 1))?;
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                let url = entry["request"]["url"].as_str().unwrap_or_default();
                let parsed = url.split_once('/').and_then(|(t, id)| {
                    Some((ResourceType::parse(t).ok()?, ResourceId::parse(id).ok()?))
                });
                let Some((resource_type, id)) = parsed else {
                    bail!("{}:{}: a deletion of {url:?}, not Type/id", path.display(), number + 1);
                };
                deletions.push(WriteOp::Delete { resource_type, id, if_match: None });
            }
        }
    }
    let deleted = deletions.len();
    while !deletions.is_empty() {
        let batch: Vec<WriteOp> = deletions.drain(..deletions.len().min(1000)).collect();
        for result in stores.resources.transact(batch, Atomicity::EachOnItsOwn).await? {
            result.context("apply a deletion")?;
        }
    }
    println!(
        "applied {} resources and {deleted} deletions to {}",
        report.loaded,
        data_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_checks_count_whole_lines_of_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.ndjson");
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            Checker::of_file(&path).and_then(|c| c.finish()).map_err(|e| e.to_string())
        };
        assert_eq!(check(b""), Ok(0));
        assert_eq!(check(b"{\"a\":1}\n{\"b\":\"x\\ny\"}\n\n{}\n"), Ok(3));
        let long = format!("{{\"a\":\"{}\"}}\n", "z".repeat(3 << 20));
        assert_eq!(check(format!("{long}{long}").as_bytes()), Ok(2), "lines longer than a read");
        assert!(check(b"{}\n<html>\n").unwrap_err().contains("line 2 is not a JSON object"));
        assert!(check(b"{}\n{\"a\"").unwrap_err().contains("truncated"));
    }
}
