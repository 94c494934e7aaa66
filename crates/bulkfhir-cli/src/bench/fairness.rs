//! Tenant fairness: how long a small tenant's export takes while another tenant's big export
//! runs, against the same small export alone. Each tenant has its own export runner, so the
//! small one never queues behind the big one; it shares the cores with it.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bulkfhir_model::Instant as FhirInstant;

use super::scenarios::{Http, Kicked, delete_export, job_resource, kickoff};

/// The job poll interval (the job resource is not rate limited).
const POLL: Duration = Duration::from_millis(20);
/// The longest any export here may take.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// Medians over the runs, in seconds.
#[derive(Debug, Clone)]
pub(crate) struct Fairness {
    pub(crate) small_alone_s: f64,
    pub(crate) small_beside_big_s: f64,
    pub(crate) big_s: f64,
    pub(crate) small_resources: u64,
    pub(crate) big_resources: u64,
    /// Runs in which the small export finished while the big one still ran (else the run
    /// compared nothing: the data is too small).
    pub(crate) overlapped: usize,
    pub(crate) runs: usize,
}

/// Kick-off sent → `finishedTime`, and the resources exported.
pub(crate) async fn finish(
    http: &Http,
    kicked: &Kicked,
    sent: SystemTime,
) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    loop {
        let job = job_resource(http, &kicked.job_id).await?;
        match job["status"].as_str().unwrap_or_default() {
            "completed" => {
                let count = job["output"]
                    .as_array()
                    .map_or(0, |files| files.iter().filter_map(|f| f["count"].as_u64()).sum());
                return Ok((finished_after(&job, sent)?, count));
            }
            "accepted" | "in-progress" => {}
            other => bail!("export {} ended '{other}'", kicked.job_id),
        }
        if started.elapsed() > TIMEOUT {
            bail!("export {} did not finish within {} s", kicked.job_id, TIMEOUT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn kick(http: &Http, path: &str) -> anyhow::Result<(Kicked, SystemTime)> {
    let sent = SystemTime::now();
    match kickoff(http, path).await? {
        Ok(kicked) => Ok((kicked, sent)),
        Err(code) => bail!("kick-off {} answered {code}", http.url(path)),
    }
}

/// Seconds from `sent` to a finished job resource's `finishedTime`.
pub(crate) fn finished_after(job: &serde_json::Value, sent: SystemTime) -> anyhow::Result<f64> {
    let finished = job["finishedTime"]
        .as_str()
        .map(FhirInstant::parse_fhir)
        .context("a finished job without finishedTime")?
        .map_err(|e| anyhow::anyhow!("finishedTime: {e}"))?;
    let sent =
        sent.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    Ok((finished.as_micros() - sent).max(0) as f64 / 1e6)
}

/// `runs` times: the small tenant's `path` alone; then the big tenant's `path`, and the small
/// one's kicked off just after it.
pub(crate) async fn measure(
    big: &Http,
    small: &Http,
    path: &str,
    runs: usize,
) -> anyhow::Result<Fairness> {
    let (mut alone, mut beside, mut bigs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut small_resources, mut big_resources, mut overlapped) = (0, 0, 0);
    for run in 1..=runs {
        let (kicked, sent) = kick(small, path).await?;
        let (seconds, count) = finish(small, &kicked, sent).await?;
        delete_export(small, &kicked.status_url).await?;
        alone.push(seconds);
        small_resources = count;

        let (big_kicked, big_sent) = kick(big, path).await?;
        let (small_kicked, small_sent) = kick(small, path).await?;
        let (small_s, _) = finish(small, &small_kicked, small_sent).await?;
        let (big_s, count) = finish(big, &big_kicked, big_sent).await?;
        let offset = small_sent.duration_since(big_sent).map_or(0.0, |d| d.as_secs_f64());
        if offset + small_s < big_s {
            overlapped += 1;
        }
        big_resources = count;
        delete_export(small, &small_kicked.status_url).await?;
        delete_export(big, &big_kicked.status_url).await?;
        eprintln!(
            "bench: tenants run {run}/{runs}: the small export {seconds:.3} s alone, \
             {small_s:.3} s beside the big one ({big_s:.3} s)"
        );
        beside.push(small_s);
        bigs.push(big_s);
    }
    Ok(Fairness {
        small_alone_s: super::median(&alone),
        small_beside_big_s: super::median(&beside),
        big_s: super::median(&bigs),
        small_resources,
        big_resources,
        overlapped,
        runs,
    })
}
