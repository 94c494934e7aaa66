//! Kick-off and status-poll latency while a large export runs.
//!
//! A driver keeps one plain system export running for the whole window (kicking off the next as
//! soon as one completes). Meanwhile `pollers` clients poll the current export's status URL, each
//! once per `Retry-After`, their starts spread evenly over the first interval; and one client
//! sends `kickoffs` kick-offs (`_type=Patient`) one after another, cancelled afterwards.
//!
//! The server rate-limits status polls per job (faster than `Retry-After / 2` gets 429), so with
//! many clients on one job most polls get 429: a valid, fast answer, counted separately.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use tokio::{sync::watch, time::Instant};

use super::scenarios::{self, Http, JOB_POLL_EVERY, delete_export, job_resource, kickoff};

/// One answered request: latency in ms and HTTP status.
pub(crate) type Sample = (f64, u16);

/// What the latency phase measured.
#[derive(Debug, Default)]
pub(crate) struct LatencyResult {
    pub(crate) window_s: f64,
    pub(crate) pollers: usize,
    pub(crate) kickoff: Vec<Sample>,
    pub(crate) status: Vec<Sample>,
    /// Background system exports that completed inside the window.
    pub(crate) exports_completed: u64,
    /// Failed status requests (transport errors), with the first message.
    pub(crate) status_failures: u64,
    pub(crate) first_failure: Option<String>,
}

pub(crate) async fn measure(
    http: &Http,
    pollers: usize,
    kickoffs: usize,
    window: Duration,
) -> anyhow::Result<LatencyResult> {
    // The driver: one system export at a time, for the whole window.
    let first = match kickoff(http, "$export").await? {
        Ok(kicked) => kicked,
        Err(code) => anyhow::bail!("the background export's kick-off answered {code}"),
    };
    let started = Instant::now();
    let deadline = started + window;
    let (current_tx, current_rx) = watch::channel(first.status_url.clone());
    let driver = {
        let http = http.clone();
        tokio::spawn(async move {
            let mut kicked = first;
            let mut completed = 0u64;
            loop {
                let job = job_resource(&http, &kicked.job_id).await?;
                let status = job["status"].as_str().unwrap_or_default().to_owned();
                if Instant::now() >= deadline {
                    delete_export(&http, &kicked.status_url).await?;
                    break;
                }
                match status.as_str() {
                    "completed" => {
                        completed += 1;
                        // The next export first, so that pollers move on before the finished
                        // one is deleted (a deleted export's status URL answers 404).
                        let next = match kickoff(&http, "$export").await? {
                            Ok(next) => next,
                            Err(code) => anyhow::bail!("a background kick-off answered {code}"),
                        };
                        current_tx.send_replace(next.status_url.clone());
                        let finished = std::mem::replace(&mut kicked, next);
                        delete_export(&http, &finished.status_url).await?;
                    }
                    "accepted" | "in-progress" => tokio::time::sleep(JOB_POLL_EVERY).await,
                    other => anyhow::bail!("the background export ended '{other}'"),
                }
            }
            anyhow::Ok(completed)
        })
    };

    // The pollers.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let failures: Arc<Mutex<(u64, Option<String>)>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let spread = Duration::from_secs(2);
    for i in 0..pollers {
        let (http, rx, samples, failures) =
            (http.clone(), current_rx.clone(), Arc::clone(&samples), Arc::clone(&failures));
        let start = started + spread.mul_f64(i as f64 / pollers.max(1) as f64);
        tasks.spawn(async move {
            tokio::time::sleep_until(start).await;
            while Instant::now() < deadline {
                let url = rx.borrow().clone();
                let sent = Instant::now();
                let response = http.client.get(&url).send().await;
                let wait = match response {
                    Ok(response) => {
                        let code = response.status().as_u16();
                        let wait = scenarios::retry_after(&response);
                        // The latency includes reading the body (the manifest, on a 200).
                        let read = response.bytes().await;
                        let ms = sent.elapsed().as_secs_f64() * 1e3;
                        match read {
                            Ok(_) => lock(&samples).push((ms, code)),
                            Err(error) => record_failure(&failures, error.to_string()),
                        }
                        wait
                    }
                    Err(error) => {
                        record_failure(&failures, error.to_string());
                        spread
                    }
                };
                tokio::time::sleep_until((sent + wait).min(deadline)).await;
            }
        });
    }

    // The kick-offs, one after another, then cancelled.
    let mut kickoff_samples = Vec::with_capacity(kickoffs);
    let mut to_cancel = Vec::new();
    for _ in 0..kickoffs {
        let sent = Instant::now();
        let answer = kickoff(http, "$export?_type=Patient").await?;
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        match answer {
            Ok(kicked) => {
                kickoff_samples.push((ms, 202));
                to_cancel.push(kicked.status_url);
            }
            Err(code) => kickoff_samples.push((ms, code)),
        }
    }
    for url in &to_cancel {
        delete_export(http, url).await?;
    }

    while let Some(joined) = tasks.join_next().await {
        joined.context("a poller panicked")?;
    }
    let exports_completed = driver.await.context("the export driver panicked")??;
    let status = std::mem::take(&mut *lock(&samples));
    let (status_failures, first_failure) = std::mem::take(&mut *lock(&failures));
    Ok(LatencyResult {
        window_s: window.as_secs_f64(),
        pollers,
        kickoff: kickoff_samples,
        status,
        exports_completed,
        status_failures,
        first_failure,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn record_failure(failures: &Mutex<(u64, Option<String>)>, message: String) {
    let mut failures = lock(failures);
    failures.0 += 1;
    failures.1.get_or_insert(message);
}
