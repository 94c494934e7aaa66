//! Time to data: kick-off sent → manifest received, for a client that polls at once and then
//! exactly as `Retry-After` says, on the exports users run most (a nightly `_since` and one
//! patient's). The export's own time (kick-off → `finishedTime`) is beside it: what is left is
//! the polling.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

use super::scenarios::{
    Http, Kicked, StatusAnswer, delete_export, job_resource, kickoff, poll_status,
};

/// The longest any export here may take.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Medians over the runs, in seconds.
#[derive(Debug, Clone)]
pub(crate) struct TimeToData {
    pub(crate) name: &'static str,
    /// Kick-off sent → manifest received.
    pub(crate) to_manifest_s: f64,
    /// Kick-off sent → the job's `finishedTime`.
    pub(crate) export_s: f64,
    /// Status polls per run (median), 429s counted in all runs.
    pub(crate) polls: f64,
    pub(crate) throttled: u64,
}

/// A kick-off of `path`: GET, or POST with a `Parameters` body.
pub(crate) async fn kick(http: &Http, path: &str, body: Option<&str>) -> anyhow::Result<Kicked> {
    let Some(body) = body else {
        return match kickoff(http, path).await? {
            Ok(kicked) => Ok(kicked),
            Err(code) => bail!("kick-off {path} answered {code}"),
        };
    };
    let url = http.url(path);
    let response = http
        .client
        .post(&url)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .header("content-type", "application/fhir+json")
        .body(body.to_owned())
        .send()
        .await
        .with_context(|| format!("kick off {url}"))?;
    if response.status().as_u16() != 202 {
        let status = response.status();
        bail!(
            "kick-off POST {url} answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let status_url = response
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .context("a 202 without Content-Location")?
        .to_owned();
    let job_id = status_url.rsplit('/').next().unwrap_or_default().to_owned();
    Ok(Kicked { status_url, job_id })
}

/// `runs` times: kick off `path` (POSTing `body` when given), poll as `Retry-After` says until
/// the manifest arrives.
pub(crate) async fn measure(
    http: &Http,
    name: &'static str,
    path: &str,
    body: Option<&str>,
    runs: usize,
) -> anyhow::Result<TimeToData> {
    let (mut to_manifest, mut export, mut polls, mut throttled) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        let sent_system = SystemTime::now();
        let sent = Instant::now();
        let kicked = kick(http, path, body).await?;
        let mut count = 0u32;
        loop {
            count += 1;
            match poll_status(http, &kicked.status_url).await? {
                StatusAnswer::Done(_) => break,
                StatusAnswer::Wait { code, retry_after } => {
                    if code == 429 {
                        throttled += 1;
                    }
                    tokio::time::sleep(retry_after).await;
                }
            }
            if sent.elapsed() > TIMEOUT {
                bail!("export {path} did not finish within {} s", TIMEOUT.as_secs());
            }
        }
        to_manifest.push(sent.elapsed().as_secs_f64());
        polls.push(f64::from(count));
        let job = job_resource(http, &kicked.job_id).await?;
        export.push(super::fairness::finished_after(&job, sent_system)?);
        delete_export(http, &kicked.status_url).await?;
    }
    Ok(TimeToData {
        name,
        to_manifest_s: super::median(&to_manifest),
        export_s: super::median(&export),
        polls: super::median(&polls),
        throttled,
    })
}
