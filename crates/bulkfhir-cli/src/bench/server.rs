//! The server under test: the real `bulkfhir serve` binary as a child process, and what `/proc`
//! says about it (resident memory, CPU time).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::{process::Child, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// How long a starting server may take to answer `GET /fhir/metadata`.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often resident memory is sampled while an export runs.
pub(crate) const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A running `bulkfhir serve`.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    pid: u32,
    /// The FHIR base URL, `http://127.0.0.1:PORT/fhir`.
    pub(crate) base: String,
    log: PathBuf,
}

impl Server {
    /// Starts `exe serve` on a free loopback port over `data_dir` and waits until it answers;
    /// with SMART authorization when `smart`, else with `--auth none`; `extra` flags after.
    pub(crate) async fn start(
        exe: &Path,
        data_dir: &Path,
        log: &Path,
        client: &reqwest::Client,
        smart: bool,
        extra: &[String],
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open the server log {}", log.display()))?;
        let log_err = log_file.try_clone().context("duplicate the server log handle")?;
        let child = tokio::process::Command::new(exe)
            .arg("serve")
            .args(["--auth", if smart { "smart" } else { "none" }])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} serve", exe.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut server =
            Server { child, pid, base: format!("http://127.0.0.1:{port}/fhir"), log: log.into() };
        let started = tokio::time::Instant::now();
        let metadata = format!("{}/metadata", server.base);
        loop {
            server.check_alive()?;
            if let Ok(response) = client.get(&metadata).send().await
                && response.status().is_success()
            {
                return Ok(server);
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the server did not answer {metadata} within {} s; log: {}",
                    START_TIMEOUT.as_secs(),
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails when the server process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait().context("check the server process")? {
            None => Ok(()),
            Some(status) => bail!("the server exited ({status}); log: {}", self.log_tail()),
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit (killing it after a timeout).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait().context("check the server process")?.is_some() {
            return Ok(());
        }
        let sent = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        if sent {
            match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                Ok(waited) => {
                    waited.context("wait for the server to exit")?;
                    return Ok(());
                }
                Err(_) => eprintln!(
                    "bench: the server did not stop within {} s of SIGTERM; killing it",
                    STOP_TIMEOUT.as_secs()
                ),
            }
        }
        self.child.kill().await.context("kill the server")?;
        Ok(())
    }

    /// The last lines of the server log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(20);
        format!("{} (last lines:)\n{}", self.log.display(), lines[start..].join("\n"))
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("find a free loopback port")?;
    Ok(listener.local_addr().context("read the free port")?.port())
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .with_context(|| format!("no {field} in {path}"))
}

/// The process's user + system CPU time so far, in clock ticks (see [`clock_ticks_per_s`]).
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis start
    // with field 3 (state); utime and stime are fields 14 and 15.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {n} of {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Machine-wide CPU time from the first line of `/proc/stat`: (busy, iowait, total) in ticks.
pub(crate) fn machine_ticks() -> anyhow::Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user and nice).
    let get = |i: usize| values.get(i).copied().unwrap_or(0);
    let total: u64 = (0..8).map(get).sum();
    let idle = get(3);
    let iowait = get(4);
    Ok((total - idle - iowait, iowait, total))
}

/// `getconf CLK_TCK`, or 100 (the Linux value) when that fails.
pub(crate) fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// Samples a process's `VmRSS` every [`RSS_SAMPLE_EVERY`] until stopped; yields the maximum.
#[derive(Debug)]
pub(crate) struct RssSampler {
    stop: CancellationToken,
    task: JoinHandle<u64>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> RssSampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = 0;
            let mut ticker = tokio::time::interval(RSS_SAMPLE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if let Ok(kib) = status_kib(pid, "VmRSS") {
                    max = max.max(kib);
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = ticker.tick() => {}
                }
            }
            if let Ok(kib) = status_kib(pid, "VmRSS") {
                max = max.max(kib);
            }
            max
        });
        RssSampler { stop, task }
    }

    /// Stops sampling; the largest `VmRSS` seen, in KiB.
    pub(crate) async fn finish(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap_or(0)
    }
}
