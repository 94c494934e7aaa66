//! What authorization costs: status polls per second and kick-off latency with `--auth smart`
//! (every request carries a bearer token the server verifies) against `--auth none`, on the
//! same data, in the same run, alternating the two so that drift on a shared machine hits both.
//!
//! Polls go to the status URL of a finished export (200 with the manifest, never 429), from
//! [`POLLERS`] clients in a closed loop; kick-offs (`_type=Patient`) are sequential, each
//! cancelled after.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use bulkfhir_auth::{Algorithm, keys};
use bulkfhir_model::Instant as FhirInstant;
use bulkfhir_store::{ClientRecord, ClientStore};
use tokio::time::Instant;

use super::{
    scenarios::{self, Http},
    server::Server,
};

/// Clients polling at once.
const POLLERS: usize = 16;

/// One side's figures.
#[derive(Debug, Default, Clone)]
pub(crate) struct Side {
    pub(crate) polls_per_s: Vec<f64>,
    pub(crate) kickoff_ms: Vec<f64>,
}

/// Authorization off and on.
#[derive(Debug, Default)]
pub(crate) struct AuthCost {
    pub(crate) off: Side,
    pub(crate) on: Side,
}

/// Registers a client with a fresh ES384 key in the store at `data_dir`; its id and key.
async fn register(data_dir: &Path) -> anyhow::Result<(String, String, String)> {
    let kid = uuid::Uuid::new_v4().to_string();
    let (pem, jwks) = keys::generate_es384(&kid).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = bulkfhir_store_embedded::EmbeddedStore::open(data_dir).context("open the store")?;
    let id = format!("bench-{kid}");
    let record = ClientRecord {
        id: id.clone(),
        name: "bulkfhir bench".to_owned(),
        jwks: Some(jwks),
        jwks_url: None,
        scope: "system/*.rs".to_owned(),
        created: FhirInstant::now(),
    };
    store.add_client(record).await?;
    Ok((id, kid, pem))
}

/// A client whose every request carries a fresh access token for `client`.
async fn token_client(
    base: &str,
    client: &str,
    kid: &str,
    pem: &str,
) -> anyhow::Result<reqwest::Client> {
    let key = crate::clients::SigningKey { pem, kid, alg: Algorithm::ES384 };
    let granted = crate::clients::request_token(&key, base, client, "system/*.rs").await?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", granted.access_token)
            .parse()
            .context("the token is not a header value")?,
    );
    reqwest::Client::builder().default_headers(headers).build().context("build the client")
}

/// Alternates `rounds` times between a server without and one with authorization.
pub(crate) async fn measure(
    exe: &Path,
    work: &Path,
    window: Duration,
    kickoffs: usize,
    rounds: usize,
) -> anyhow::Result<AuthCost> {
    let data_dir = work.join("data");
    let (client, kid, pem) = register(&data_dir).await?;
    let plain = reqwest::Client::new();
    let mut cost = AuthCost::default();
    for _ in 0..rounds.max(1) {
        for smart in [false, true] {
            let server =
                Server::start(exe, &data_dir, &work.join("server.log"), &plain, smart, &[]).await?;
            let http = Http {
                client: if smart {
                    token_client(&server.base, &client, &kid, &pem).await?
                } else {
                    plain.clone()
                },
                base: server.base.clone(),
            };
            let measured = one_side(&http, window, kickoffs).await;
            server.stop().await?;
            let (polls_per_s, kickoff_ms) = measured?;
            let side = if smart { &mut cost.on } else { &mut cost.off };
            side.polls_per_s.push(polls_per_s);
            side.kickoff_ms.extend(kickoff_ms);
        }
    }
    Ok(cost)
}

async fn one_side(
    http: &Http,
    window: Duration,
    kickoffs: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut kickoff_ms = Vec::with_capacity(kickoffs);
    for _ in 0..kickoffs {
        let started = Instant::now();
        let kicked = match scenarios::kickoff(http, "$export?_type=Patient").await? {
            Ok(kicked) => kicked,
            Err(code) => bail!("a kick-off answered {code}"),
        };
        kickoff_ms.push(started.elapsed().as_secs_f64() * 1e3);
        scenarios::delete_export(http, &kicked.status_url).await?;
    }
    // A finished export to poll.
    let kicked = match scenarios::kickoff(http, "$export?_type=Patient").await? {
        Ok(kicked) => kicked,
        Err(code) => bail!("a kick-off answered {code}"),
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let job = scenarios::job_resource(http, &kicked.job_id).await?;
        match job["status"].as_str() {
            Some("completed") => break,
            Some("accepted" | "in-progress") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => bail!("the export to poll ended {other:?}"),
        }
    }
    let polls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..POLLERS {
        let (client, url, polls) =
            (http.client.clone(), kicked.status_url.clone(), Arc::clone(&polls));
        tasks.spawn(async move {
            while Instant::now() < stop {
                let response = client.get(&url).send().await.context("poll")?;
                if response.status().as_u16() != 200 {
                    bail!("a status poll answered {}", response.status());
                }
                response.bytes().await.context("read a status answer")?;
                polls.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a poller panicked")??;
    }
    let rate = polls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64().max(1e-9);
    scenarios::delete_export(http, &kicked.status_url).await?;
    Ok((rate, kickoff_ms))
}
