//! The HTTP side: transaction Bundles, the export scenarios, and timing one export.

use std::{
    collections::BTreeMap,
    io::BufRead,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use bulkfhir_model::{Instant as FhirInstant, ResourceType, compartment};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::server::{self, RssSampler, Server};

/// How often the job resource is polled while an export runs.
pub(crate) const JOB_POLL_EVERY: Duration = Duration::from_millis(20);
/// The longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// `Retry-After` when a response carries none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The FHIR API of the server under test.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    pub(crate) client: Client,
    pub(crate) base: String,
}

impl Http {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }
}

/// One NDJSON line, with the type and id it declares.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) resource_type: String,
    pub(crate) id: String,
    pub(crate) json: String,
}

/// Reads the lines of the `<dir>/<Type>.ndjson` files whose type `include` accepts;
/// `keep(type, index)` selects lines (index from 0 in each file).
pub(crate) fn read_lines(
    dir: &Path,
    include: impl Fn(&str) -> bool,
    mut keep: impl FnMut(&str, u64) -> bool,
) -> anyhow::Result<Vec<Line>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("list {}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "ndjson"));
    files.sort();
    let mut lines = Vec::new();
    for path in files {
        let Some(resource_type) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
        else {
            continue;
        };
        if !include(&resource_type) {
            continue;
        }
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        for (index, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("read {}", path.display()))?;
            if line.trim().is_empty() || !keep(&resource_type, index as u64) {
                continue;
            }
            let value: Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), index + 1))?;
            let id = value["id"]
                .as_str()
                .with_context(|| format!("{}:{}: no id", path.display(), index + 1))?
                .to_owned();
            let declared = value["resourceType"].as_str().unwrap_or_default();
            if declared != resource_type {
                bail!("{}:{}: a {declared} in {resource_type}.ndjson", path.display(), index + 1);
            }
            lines.push(Line { resource_type: resource_type.clone(), id, json: line });
        }
    }
    Ok(lines)
}

/// A transaction Bundle body and the number of entries in it.
#[derive(Debug)]
pub(crate) struct BundleBody {
    pub(crate) body: String,
    pub(crate) entries: usize,
}

/// Transaction Bundles of at most `size` PUT entries.
pub(crate) fn build_bundles(lines: &[Line], size: usize) -> Vec<BundleBody> {
    lines
        .chunks(size.max(1))
        .map(|chunk| {
            let mut body = String::with_capacity(chunk.iter().map(|l| l.json.len() + 96).sum());
            body.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
            for (i, line) in chunk.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(r#"{"resource":"#);
                body.push_str(&line.json);
                body.push_str(r#","request":{"method":"PUT","url":""#);
                body.push_str(&line.resource_type);
                body.push('/');
                body.push_str(&line.id);
                body.push_str(r#""}}"#);
            }
            body.push_str("]}");
            BundleBody { body, entries: chunk.len() }
        })
        .collect()
}

/// POSTs the Bundles with `concurrency` requests in flight; checks every entry succeeded.
/// Returns the number of entries written.
pub(crate) async fn post_bundles(
    http: &Http,
    bundles: Vec<BundleBody>,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let bundles = Arc::new(bundles);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, bundles, next) = (http.clone(), Arc::clone(&bundles), Arc::clone(&next));
        tasks.spawn(async move {
            let mut written = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(bundle) = bundles.get(index) else { break };
                written += post_bundle(&http, bundle).await.with_context(|| {
                    format!("transaction Bundle {index} ({} entries)", bundle.entries)
                })?;
            }
            anyhow::Ok(written)
        });
    }
    let mut written = 0;
    while let Some(joined) = tasks.join_next().await {
        written += joined.context("a Bundle task panicked")??;
    }
    Ok(written)
}

async fn post_bundle(http: &Http, bundle: &BundleBody) -> anyhow::Result<u64> {
    let response = http
        .client
        .post(&http.base)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .body(bundle.body.clone())
        .send()
        .await
        .context("POST the Bundle")?;
    let status = response.status();
    let text = response.text().await.context("read the Bundle response")?;
    if status != StatusCode::OK {
        bail!("the server answered {status}: {}", clip(&text));
    }
    let value: Value = serde_json::from_str(&text).context("the Bundle response is not JSON")?;
    let entries = value["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
    if entries.len() != bundle.entries {
        bail!("the response has {} entries, the request {}", entries.len(), bundle.entries);
    }
    for (i, entry) in entries.iter().enumerate() {
        let status = entry["response"]["status"].as_str().unwrap_or_default();
        if !(status.starts_with("200") || status.starts_with("201")) {
            bail!("entry {i} answered '{status}'");
        }
    }
    Ok(entries.len() as u64)
}

/// PUTs `Group/bench-10pct` with these patients and returns the Group's `meta.lastUpdated`.
pub(crate) async fn put_group(
    http: &Http,
    group_id: &str,
    patient_ids: &[String],
) -> anyhow::Result<FhirInstant> {
    let members: Vec<Value> = patient_ids
        .iter()
        .map(|id| serde_json::json!({"entity": {"reference": format!("Patient/{id}")}}))
        .collect();
    let group = serde_json::json!({
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": true,
        "name": "bulkfhir bench: every 10th generated patient",
        "quantity": members.len(),
        "member": members,
    });
    let url = http.url(&format!("Group/{group_id}"));
    let response = http
        .client
        .put(&url)
        .header("content-type", "application/fhir+json")
        .body(group.to_string())
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("PUT {url} answered {status}: {}", clip(&text));
    }
    let value = get_json(http, &url).await?;
    let updated = value["meta"]["lastUpdated"].as_str().context("the Group has no lastUpdated")?;
    FhirInstant::parse_fhir(updated).with_context(|| format!("the Group's lastUpdated {updated}"))
}

/// What one export scenario asks and what it must return.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    /// Path and query after the FHIR base.
    pub(crate) path: String,
    pub(crate) gzip: bool,
    pub(crate) expect: Expect,
}

/// The count an export must return.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// Exactly this many resources.
    Exact(u64),
    /// Between these bounds (inclusive), all types counted.
    Range { min: u64, max: u64, why: String },
    /// Exactly this many resources of Patient-compartment types; other types (supporting
    /// resources) are not counted.
    Compartment { count: u64, why: String },
}

impl Expect {
    pub(crate) fn describe(&self) -> String {
        match self {
            Expect::Exact(n) => format!("exactly {n}"),
            Expect::Range { min, max, why } => format!("{min}..={max} ({why})"),
            Expect::Compartment { count, why } => {
                format!("exactly {count} compartment resources ({why})")
            }
        }
    }

    /// Checks a manifest's per-type counts.
    pub(crate) fn check(&self, per_type: &BTreeMap<String, u64>) -> Result<(), String> {
        let total: u64 = per_type.values().sum();
        let (got, ok) = match self {
            Expect::Exact(n) => (total, total == *n),
            Expect::Range { min, max, .. } => (total, (*min..=*max).contains(&total)),
            Expect::Compartment { count, .. } => {
                let in_compartment = compartment_count(per_type);
                (in_compartment, in_compartment == *count)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, got {got} (per type: {per_type:?})", self.describe()))
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            Expect::Exact(n) => serde_json::json!({"kind": "exact", "count": n}),
            Expect::Range { min, max, why } => {
                serde_json::json!({"kind": "range", "min": min, "max": max, "why": why})
            }
            Expect::Compartment { count, why } => serde_json::json!({
                "kind": "compartment-exact", "count": count, "why": why
            }),
        }
    }
}

/// Counts, from the raw NDJSON in `dir` and independently of the server, the resources in the
/// compartments of `members`: the member Patients, and every other resource of a compartment
/// type that references a member (`"reference":"Patient/<id>"`, the only way the generator
/// references a patient). `Group` files are skipped: the caller knows its Groups.
pub(crate) fn member_compartment_count(
    dir: &Path,
    members: &std::collections::HashSet<String>,
) -> anyhow::Result<u64> {
    const NEEDLE: &str = "\"reference\":\"Patient/";
    let mut count = 0;
    let lines = read_lines(
        dir,
        |t| t != "Group" && ResourceType::parse(t).is_ok_and(compartment::is_compartment_type),
        |_, _| true,
    )?;
    for line in lines {
        let member = if line.resource_type == "Patient" {
            members.contains(&line.id)
        } else {
            line.json.match_indices(NEEDLE).any(|(at, _)| {
                let rest = &line.json[at + NEEDLE.len()..];
                rest.split('"').next().is_some_and(|id| members.contains(id))
            })
        };
        count += u64::from(member);
    }
    Ok(count)
}

/// Resources of Patient-compartment types in per-type counts.
pub(crate) fn compartment_count(per_type: &BTreeMap<String, u64>) -> u64 {
    per_type
        .iter()
        .filter(|(t, _)| ResourceType::parse(t).is_ok_and(compartment::is_compartment_type))
        .map(|(_, n)| n)
        .sum()
}

/// One file of a finished export.
#[derive(Debug, Clone)]
pub(crate) struct ExportFile {
    pub(crate) name: String,
    pub(crate) resource_type: String,
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

/// One timed export.
#[derive(Debug, Clone)]
pub(crate) struct RunResult {
    pub(crate) job_id: String,
    pub(crate) status_url: String,
    /// Kick-off sent → the job's `finishedTime`.
    pub(crate) wall_s: f64,
    /// Kick-off sent → completion seen by the 20 ms job poller.
    pub(crate) observed_s: f64,
    /// Kick-off sent → 202 received.
    pub(crate) kickoff_ms: f64,
    pub(crate) count: u64,
    pub(crate) per_type: BTreeMap<String, u64>,
    /// Bytes stored (compressed for gzip output).
    pub(crate) bytes: u64,
    pub(crate) files: Vec<ExportFile>,
    /// The largest `VmRSS` sampled during the export, KiB.
    pub(crate) max_rss_kib: u64,
    /// Server CPU seconds (user + system) between kick-off and completion seen.
    pub(crate) server_cpu_s: f64,
    /// Machine-wide busy and iowait shares of all cores over the same interval (0..1).
    pub(crate) machine_busy: f64,
    pub(crate) machine_iowait: f64,
    pub(crate) job_polls: u64,
    pub(crate) status_polls: u64,
    pub(crate) status_429: u64,
}

/// A 202 kick-off: the status URL and the job id.
#[derive(Debug, Clone)]
pub(crate) struct Kicked {
    pub(crate) status_url: String,
    pub(crate) job_id: String,
}

/// Sends one kick-off; `Ok(Err(status))` when the server refused it with that status.
pub(crate) async fn kickoff(http: &Http, path: &str) -> anyhow::Result<Result<Kicked, u16>> {
    let url = http.url(path);
    let response = http
        .client
        .get(&url)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .with_context(|| format!("kick off {url}"))?;
    let status = response.status();
    if status != StatusCode::ACCEPTED {
        let code = status.as_u16();
        if code == 429 {
            return Ok(Err(code));
        }
        let text = response.text().await.unwrap_or_default();
        bail!("kick-off {url} answered {status}: {}", clip(&text));
    }
    let status_url = response
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .context("the kick-off answered 202 without Content-Location")?
        .to_owned();
    let job_id = status_url
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .context("no job id in the Content-Location")?
        .to_owned();
    Ok(Ok(Kicked { status_url, job_id }))
}

/// `DELETE` on a status URL: cancels a running export, or tells the server a finished one's
/// files may go.
pub(crate) async fn delete_export(http: &Http, status_url: &str) -> anyhow::Result<()> {
    let response = http
        .client
        .delete(status_url)
        .send()
        .await
        .with_context(|| format!("DELETE {status_url}"))?;
    let status = response.status();
    if status != StatusCode::ACCEPTED && status != StatusCode::NOT_FOUND {
        let text = response.text().await.unwrap_or_default();
        bail!("DELETE {status_url} answered {status}: {}", clip(&text));
    }
    Ok(())
}

/// Reads the job resource `GET /fhir/BulkDataExport/{id}`.
pub(crate) async fn job_resource(http: &Http, job_id: &str) -> anyhow::Result<Value> {
    get_json(http, &http.url(&format!("BulkDataExport/{job_id}"))).await
}

/// `GET url` that must answer 200 with JSON.
async fn get_json(http: &Http, url: &str) -> anyhow::Result<Value> {
    let response = http
        .client
        .get(url)
        .header("accept", "application/fhir+json")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("read {url}"))?;
    if status != StatusCode::OK {
        bail!("GET {url} answered {status}: {}", clip(&text));
    }
    serde_json::from_str(&text).with_context(|| format!("{url} is not JSON"))
}

/// What a status-URL poll answered.
#[derive(Debug)]
pub(crate) enum StatusAnswer {
    /// 202 or 429, with the `Retry-After` to honour.
    Wait { code: u16, retry_after: Duration },
    /// 200 with the manifest.
    Done(Value),
}

pub(crate) async fn poll_status(http: &Http, status_url: &str) -> anyhow::Result<StatusAnswer> {
    let response =
        http.client.get(status_url).send().await.with_context(|| format!("GET {status_url}"))?;
    let status = response.status();
    let retry_after = retry_after(&response);
    match status.as_u16() {
        202 | 429 => Ok(StatusAnswer::Wait { code: status.as_u16(), retry_after }),
        200 => {
            let text = response.text().await.with_context(|| format!("read {status_url}"))?;
            Ok(StatusAnswer::Done(serde_json::from_str(&text).context("the manifest is not JSON")?))
        }
        _ => {
            let text = response.text().await.unwrap_or_default();
            bail!("GET {status_url} answered {status}: {}", clip(&text))
        }
    }
}

pub(crate) fn retry_after(response: &reqwest::Response) -> Duration {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
}

/// Runs one export and times it. Nothing is downloaded: the manifest is read once after the job
/// completed, and counts come from it.
pub(crate) async fn run_export(
    http: &Http,
    server: &mut Server,
    scenario: &Scenario,
) -> anyhow::Result<RunResult> {
    let ticks_per_s = server::clock_ticks_per_s();
    let pid = server.pid();
    let sampler = RssSampler::start(pid);
    let cpu_before = server::cpu_ticks(pid)?;
    let machine_before = server::machine_ticks()?;
    let sent_system = SystemTime::now();
    let sent = Instant::now();
    let kicked = match kickoff(http, &scenario.path).await? {
        Ok(kicked) => kicked,
        Err(code) => bail!("kick-off {} answered {code}", scenario.path),
    };
    let kickoff_ms = sent.elapsed().as_secs_f64() * 1e3;

    // The status URL is polled as a client would (honouring Retry-After); completion is detected
    // by polling the job resource, which is not rate limited, every 20 ms.
    let mut next_status_poll = Instant::now();
    let (mut job_polls, mut status_polls, mut status_429) = (0u64, 0u64, 0u64);
    let mut ticker = tokio::time::interval(JOB_POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let job = loop {
        ticker.tick().await;
        if Instant::now() >= next_status_poll {
            status_polls += 1;
            match poll_status(http, &kicked.status_url).await? {
                StatusAnswer::Wait { code, retry_after } => {
                    if code == 429 {
                        status_429 += 1;
                    }
                    next_status_poll = Instant::now() + retry_after;
                }
                StatusAnswer::Done(_) => next_status_poll = Instant::now() + DEFAULT_RETRY_AFTER,
            }
        }
        job_polls += 1;
        let job = job_resource(http, &kicked.job_id).await?;
        match job["status"].as_str().unwrap_or_default() {
            "completed" => break job,
            "accepted" | "in-progress" => {}
            other => bail!(
                "export {} ended '{other}': {}",
                kicked.job_id,
                job["errorMessage"].as_str().unwrap_or("no message")
            ),
        }
        if sent.elapsed() > EXPORT_TIMEOUT {
            bail!("export {} did not finish within {} s", kicked.job_id, EXPORT_TIMEOUT.as_secs());
        }
        server.check_alive()?;
    };
    let observed_s = sent.elapsed().as_secs_f64();
    let cpu_after = server::cpu_ticks(pid)?;
    let machine_after = server::machine_ticks()?;
    let max_rss_kib = sampler.finish().await;

    let sent_micros = sent_system
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let wall_s = match job["finishedTime"].as_str().map(FhirInstant::parse_fhir) {
        Some(Ok(finished)) if finished.as_micros() > sent_micros => {
            (finished.as_micros() - sent_micros) as f64 / 1e6
        }
        _ => observed_s,
    };

    // The manifest, once, after the timing: the first poll of a finished export may answer 202.
    let manifest = loop {
        status_polls += 1;
        match poll_status(http, &kicked.status_url).await? {
            StatusAnswer::Done(manifest) => break manifest,
            StatusAnswer::Wait { code, retry_after } => {
                if code == 429 {
                    status_429 += 1;
                }
                tokio::time::sleep(retry_after).await;
            }
        }
    };
    let files = job_files(&job, "output")?;
    let mut per_type: BTreeMap<String, u64> = BTreeMap::new();
    for entry in manifest["output"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let resource_type = entry["type"].as_str().context("a manifest entry without type")?;
        let count = entry["count"].as_u64().context("a manifest entry without count")?;
        *per_type.entry(resource_type.to_owned()).or_default() += count;
    }
    let count: u64 = per_type.values().sum();
    let job_count: u64 = files.iter().map(|f| f.count).sum();
    if job_count != count {
        bail!(
            "export {}: the manifest counts {count} resources, the job resource {job_count}",
            kicked.job_id
        );
    }
    for kind in ["error", "deleted"] {
        let listed = manifest[kind].as_array().map_or(0, Vec::len);
        if listed > 0 {
            let files = job_files(&job, kind)?;
            bail!(
                "export {} lists {listed} '{kind}' file(s) ({} lines; files {:?}); the bench \
                 population should give none",
                kicked.job_id,
                files.iter().map(|f| f.count).sum::<u64>(),
                files.iter().map(|f| &f.name).collect::<Vec<_>>()
            );
        }
    }
    let ticks = cpu_after.saturating_sub(cpu_before) as f64;
    let (busy0, iowait0, total0) = machine_before;
    let (busy1, iowait1, total1) = machine_after;
    let machine_total = total1.saturating_sub(total0).max(1) as f64;
    Ok(RunResult {
        job_id: kicked.job_id,
        status_url: kicked.status_url,
        wall_s,
        observed_s,
        kickoff_ms,
        count,
        per_type,
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        max_rss_kib,
        server_cpu_s: ticks / ticks_per_s,
        machine_busy: busy1.saturating_sub(busy0) as f64 / machine_total,
        machine_iowait: iowait1.saturating_sub(iowait0) as f64 / machine_total,
        job_polls,
        status_polls,
        status_429,
    })
}

/// The files of one manifest array of the job resource.
fn job_files(job: &Value, kind: &str) -> anyhow::Result<Vec<ExportFile>> {
    job[kind]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let url = f["url"].as_str().context("a file without url")?;
            Ok(ExportFile {
                name: url.rsplit('/').next().unwrap_or_default().to_owned(),
                resource_type: f["type"].as_str().unwrap_or_default().to_owned(),
                count: f["count"].as_u64().context("a file without count")?,
                bytes: f["bytes"].as_u64().context("a file without bytes")?,
            })
        })
        .collect()
}

/// The first characters of a response body, for error messages.
pub(crate) fn clip(text: &str) -> String {
    let clipped: String = text.chars().take(600).collect();
    if clipped.len() < text.len() { format!("{clipped}…") } else { clipped }
}

/// Download rates of one finished export's files.
#[derive(Debug, Clone)]
pub(crate) struct DownloadRates {
    /// NDJSON MB/s with no `Accept-Encoding` (the stored bytes).
    pub(crate) identity_mb_s: f64,
    /// NDJSON MB/s with `Accept-Encoding: gzip` (plain files compressed on the fly).
    pub(crate) gzip_mb_s: f64,
    pub(crate) identity_bytes: u64,
    pub(crate) gzip_wire_bytes: u64,
}

/// Downloads every output file of the finished export `job_id` twice, without and with
/// `Accept-Encoding: gzip`, one file at a time. Each scenario restarts the server on a new port,
/// so the URLs are rebuilt on the current base.
pub(crate) async fn download_rates(http: &Http, job_id: &str) -> anyhow::Result<DownloadRates> {
    let status_url = http.url(&format!("$export-status/{job_id}"));
    let manifest = loop {
        match poll_status(http, &status_url).await? {
            StatusAnswer::Done(manifest) => break manifest,
            StatusAnswer::Wait { retry_after, .. } => tokio::time::sleep(retry_after).await,
        }
    };
    let urls: Vec<String> = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["url"].as_str())
        .filter_map(|url| url.split_once("/$export-file/"))
        .map(|(_, file)| http.url(&format!("$export-file/{file}")))
        .collect();
    if urls.is_empty() {
        bail!("export {job_id} lists no output files");
    }
    let pass = async |gzip: bool| -> anyhow::Result<(u64, f64)> {
        let started = Instant::now();
        let mut n_bytes = 0u64;
        for url in &urls {
            let mut request = http.client.get(url);
            if gzip {
                request = request.header("accept-encoding", "gzip");
            }
            let mut response = request.send().await.with_context(|| format!("GET {url}"))?;
            if !response.status().is_success() {
                bail!("GET {url} answered {}", response.status());
            }
            let encoded = response.headers().get("content-encoding").is_some_and(|v| v == "gzip");
            if encoded != gzip {
                bail!("GET {url}: Content-Encoding gzip is {encoded}, expected {gzip}");
            }
            while let Some(chunk) = response.chunk().await.with_context(|| format!("read {url}"))? {
                n_bytes += chunk.len() as u64;
            }
        }
        Ok((n_bytes, started.elapsed().as_secs_f64().max(1e-9)))
    };
    let (identity_bytes, identity_s) = pass(false).await?;
    let (gzip_wire_bytes, gzip_s) = pass(true).await?;
    const MB: f64 = 1e6;
    Ok(DownloadRates {
        identity_mb_s: identity_bytes as f64 / MB / identity_s,
        gzip_mb_s: identity_bytes as f64 / MB / gzip_s,
        identity_bytes,
        gzip_wire_bytes,
    })
}
