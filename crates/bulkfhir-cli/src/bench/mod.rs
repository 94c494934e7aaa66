//! `bulkfhir bench`: generate a deterministic population, load it, serve it with the real binary,
//! and time the Bulk Data exports against the machine's own limits on the same bytes.
//!
//! Phases (progress on stderr, the table on stdout, the figures in `bench-results.json`):
//!
//! 1. generate population A (seed 1, `ceil(N / 374)` patients) with the library generator;
//! 2. `bulkfhir load` it (a child process), then start `bulkfhir serve` (a child process);
//! 3. PUT a second population (seed 2, so no id collides; its `Group/all-patients` left out) as
//!    transaction Bundles of 500 entries;
//! 4. PUT `Group/bench-10pct` (every 10th Patient of A), note its `lastUpdated` as `_since`, then
//!    re-PUT every 100th line of every file of A through transaction Bundles (1%);
//! 5. each export scenario `runs` times on a freshly started server (so `VmHWM` is that
//!    scenario's peak), median wall time; every count checked;
//! 6. the limits on the plain system export's files: copy file to file, gzip on all cores;
//! 7. kick-off and status-poll latency while a system export runs.

mod auth;
mod fairness;
mod latency;
mod limits;
mod report;
mod scenarios;
mod server;
mod time_to_data;
mod views;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bulkfhir_generator::{GenerateOptions, GenerateStats, generate_to_dir};
use bulkfhir_model::Instant as FhirInstant;
use clap::Args;
use serde_json::{Value, json};

use self::{
    report::{latency_json, median, round, thousands},
    scenarios::{Expect, Http, RunResult, Scenario, compartment_count},
    server::Server,
};

/// The PostgreSQL rows of the report: rates as resources/s, RSS in KiB.
struct PostgresRows {
    load_rate: f64,
    embedded_load_rate: f64,
    /// (scenario, rate, embedded rate, server peak RSS, embedded server peak RSS)
    exports: Vec<(&'static str, f64, f64, u64, u64)>,
}

/// Resources the generator writes per patient, on average.
const RESOURCES_PER_PATIENT: u64 = 374;
/// The seed of the population that is loaded and exported.
const SEED: u64 = 1;
/// The seed of the population sent as transaction Bundles (different ids).
const BUNDLE_SEED: u64 = 2;
/// Entries per transaction Bundle.
const BUNDLE_SIZE: usize = 500;
/// The Group holding every 10th generated Patient.
const GROUP_ID: &str = "bench-10pct";
/// Kick-offs timed in the latency phase.
const KICKOFFS: usize = 20;
/// The export's default gzip level (`--gzip-level`, `BULKFHIR_GZIP_LEVEL`).
const GZIP_LEVEL: u32 = 1;
/// LOINC body weight: about 10% of generated Observations (the `_typeFilter` scenario).
const FILTER_CODE: &str = "29463-7";
/// Bytes per MB in every MB and MB/s figure.
const MB: f64 = 1e6;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Resources to generate (about 374 per patient; the patient count is rounded up).
    #[arg(long, default_value_t = 1_000_000)]
    resources: u64,
    /// Runs of each export scenario and each limit measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Working folder, empty or missing (default: a new folder in the temp directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Keep the working folder (generated files, store, export files) afterwards.
    #[arg(long)]
    keep: bool,
    /// Resources of the second population sent as transaction Bundles.
    #[arg(long, default_value_t = 20_000)]
    bundle_resources: u64,
    /// Transaction Bundles in flight at once.
    #[arg(long, default_value_t = 3)]
    bundle_concurrency: usize,
    /// Concurrent status pollers in the latency phase.
    #[arg(long, default_value_t = 200)]
    pollers: usize,
    /// Seconds the latency phase lasts.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Also export to this S3-compatible server (e.g. http://127.0.0.1:8333; credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and compare with local disk.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// The bucket for --s3-endpoint.
    #[arg(long, default_value = "bench")]
    s3_bucket: String,
    /// Also load the population into this PostgreSQL database (empty, or one this bench
    /// created) and run the system and Group exports on it, as ratios to the embedded store.
    #[arg(long)]
    database: Option<String>,
}

/// Runs the benchmark; the exit code is a failure when any check failed.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.resources == 0 {
        bail!("--runs and --resources must be at least 1");
    }
    let (work, created) = match &args.work_dir {
        Some(dir) => (dir.clone(), !dir.exists()),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            (
                std::env::temp_dir().join(format!("bulkfhir-bench-{}-{stamp}", std::process::id())),
                true,
            )
        }
    };
    if work.exists()
        && std::fs::read_dir(&work)
            .with_context(|| format!("list {}", work.display()))?
            .next()
            .is_some()
    {
        bail!("the working folder {} is not empty", work.display());
    }
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    eprintln!("bench: working in {}", work.display());

    let mut slot = None;
    let result = bench(&args, &work, &mut slot).await;
    if let Some(server) = slot.take()
        && let Err(error) = server.stop().await
    {
        eprintln!("bench: stopping the server: {error:#}");
    }
    match &result {
        Ok(_) if !args.keep => {
            let removed = if created {
                std::fs::remove_dir_all(&work)
            } else {
                ["generated", "bundle-population", "data", "data-pg", "copy", "server.log"]
                    .iter()
                    .map(|name| work.join(name))
                    .filter(|path| path.exists())
                    .try_for_each(|path| {
                        if path.is_dir() {
                            std::fs::remove_dir_all(path)
                        } else {
                            std::fs::remove_file(path)
                        }
                    })
            };
            if let Err(error) = removed {
                eprintln!("bench: could not remove {}: {error}", work.display());
            }
        }
        Ok(_) => eprintln!("bench: kept {}", work.display()),
        Err(_) => {
            eprintln!("bench: kept {} for inspection (server log: server.log)", work.display())
        }
    }
    result
}

/// Stops the running server, if any, and starts a new one on the same data.
async fn restart<'a>(
    slot: &'a mut Option<Server>,
    exe: &Path,
    work: &Path,
    http: &mut Http,
) -> anyhow::Result<&'a mut Server> {
    if let Some(server) = slot.take() {
        server.stop().await?;
    }
    let server =
        Server::start(exe, &work.join("data"), &work.join("server.log"), &http.client, false, &[])
            .await?;
    http.base = server.base.clone();
    Ok(slot.insert(server))
}

/// Runs `bulkfhir load` of `generated` into `data` (on `database` when given); its stdout and
/// how long it took.
async fn load_with(
    exe: &Path,
    data: &Path,
    database: Option<&str>,
    generated: &Path,
) -> anyhow::Result<(String, f64)> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(exe);
    command.arg("load").arg("--data-dir").arg(data);
    if let Some(url) = database {
        command.arg("--database").arg(url);
    }
    let output = command
        .arg(generated)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("run bulkfhir load")?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("bulkfhir load failed ({}): {stdout}", output.status);
    }
    Ok((stdout, seconds))
}

fn generate(patients: u64, seed: u64, dir: &Path) -> anyhow::Result<(GenerateStats, f64)> {
    let started = Instant::now();
    let stats = generate_to_dir(&GenerateOptions { patients, seed }, dir, &mut |_| {})
        .with_context(|| format!("generate into {}", dir.display()))?;
    Ok((stats, started.elapsed().as_secs_f64()))
}

/// Per-type counts of generated stats.
fn type_counts(stats: &GenerateStats) -> BTreeMap<String, u64> {
    stats.per_type.iter().map(|(t, &(n, _))| (t.clone(), n)).collect()
}

async fn bench(
    args: &BenchArgs,
    work: &Path,
    slot: &mut Option<Server>,
) -> anyhow::Result<ExitCode> {
    let bench_started = Instant::now();
    let started_at = FhirInstant::now().to_fhir();
    let load_average_at_start = report::load_average();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exe = std::env::current_exe().context("find the bulkfhir binary")?;
    let mut failures: Vec<String> = Vec::new();

    // 1. Generate.
    let patients = args.resources.div_ceil(RESOURCES_PER_PATIENT);
    let generated = work.join("generated");
    eprintln!("bench: generating {patients} patients (seed {SEED}) into {}", generated.display());
    let dir = generated.clone();
    let (population, generate_s) =
        tokio::task::spawn_blocking(move || generate(patients, SEED, &dir))
            .await
            .context("the generator panicked")??;
    eprintln!(
        "bench: generated {} resources ({:.1} MB) in {generate_s:.2} s",
        thousands(population.resources),
        population.bytes as f64 / MB
    );
    let bundle_patients = args.bundle_resources.div_ceil(RESOURCES_PER_PATIENT);
    let bundle_dir = work.join("bundle-population");
    let dir = bundle_dir.clone();
    let (bundle_population, _) =
        tokio::task::spawn_blocking(move || generate(bundle_patients, BUNDLE_SEED, &dir))
            .await
            .context("the generator panicked")??;

    // 2. Load with the real binary.
    let data = work.join("data");
    eprintln!("bench: bulkfhir load into {}", data.display());
    let (load_stdout, load_s) = load_with(&exe, &data, None, &generated).await?;
    let loaded = load_stdout
        .split_whitespace()
        .skip_while(|w| *w != "loaded")
        .nth(1)
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("no 'loaded N resources' in the output of load: {load_stdout}"))?;
    if loaded != population.resources {
        failures.push(format!(
            "load: loaded {loaded} resources, the generator wrote {}",
            population.resources
        ));
    }
    eprintln!("bench: loaded {} resources in {load_s:.2} s", thousands(loaded));

    // 3. Serve, and send the second population as transaction Bundles.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(600))
        .build()
        .context("build the HTTP client")?;
    let mut http = Http { client, base: String::new() };
    let server = restart(slot, &exe, work, &mut http).await?;
    eprintln!("bench: serving at {} (pid {})", http.base, server.pid());
    let bundle_lines = scenarios::read_lines(&bundle_dir, |t| t != "Group", |_, _| true)?;
    let mut bundle_types: BTreeMap<String, u64> = BTreeMap::new();
    for line in &bundle_lines {
        *bundle_types.entry(line.resource_type.clone()).or_default() += 1;
    }
    let bundles = scenarios::build_bundles(&bundle_lines, BUNDLE_SIZE);
    let n_bundles = bundles.len();
    drop(bundle_lines);
    eprintln!("bench: {n_bundles} transaction Bundles of up to {BUNDLE_SIZE} PUT entries");
    let bundle_started = Instant::now();
    let bundled = scenarios::post_bundles(&http, bundles, args.bundle_concurrency).await?;
    let bundle_s = bundle_started.elapsed().as_secs_f64();
    let bundle_expected: u64 = bundle_types.values().sum();
    let bundle_generated = bundle_population.resources
        - bundle_population.per_type.get("Group").map_or(0, |&(n, _)| n);
    if bundled != bundle_expected || bundle_expected != bundle_generated {
        failures.push(format!(
            "Bundles: wrote {bundled} entries, sent {bundle_expected}, generated \
             {bundle_generated} (without the Group)"
        ));
    }
    eprintln!("bench: {} resources by Bundle in {bundle_s:.2} s", thousands(bundled));
    let ingest_hwm_kib = server::status_kib(server.pid(), "VmHWM")?;

    // 4. The Group, the `_since` mark, and the 1% update.
    let members: Vec<String> =
        scenarios::read_lines(&generated, |t| t == "Patient", |_, i| i % 10 == 0)?
            .into_iter()
            .map(|l| l.id)
            .collect();
    let since = scenarios::put_group(&http, GROUP_ID, &members).await?;
    let updates = scenarios::read_lines(&generated, |_| true, |_, i| i % 100 == 0)?;
    let update_bundles = scenarios::build_bundles(&updates, BUNDLE_SIZE);
    let update_started = Instant::now();
    let updated = scenarios::post_bundles(&http, update_bundles, args.bundle_concurrency).await?;
    let update_s = update_started.elapsed().as_secs_f64();
    if updated != updates.len() as u64 {
        failures.push(format!("1% update: wrote {updated} entries, sent {}", updates.len()));
    }
    eprintln!(
        "bench: Group/{GROUP_ID} with {} members; _since {}; re-PUT {} resources in {update_s:.2} s",
        members.len(),
        since.to_fhir(),
        thousands(updated)
    );
    drop(updates);

    // Expected counts.
    let mut stored = type_counts(&population);
    for (t, n) in &bundle_types {
        *stored.entry(t.clone()).or_default() += n;
    }
    *stored.entry("Group".to_owned()).or_default() += 1;
    let total: u64 = stored.values().sum();
    let observations = stored.get("Observation").copied().unwrap_or(0);
    let compartment_total = compartment_count(&stored);
    let population_types = type_counts(&population);
    let member_set: std::collections::HashSet<String> = members.iter().cloned().collect();
    let dir = generated.clone();
    let in_member_compartments =
        tokio::task::spawn_blocking(move || scenarios::member_compartment_count(&dir, &member_set))
            .await
            .context("counting the Group's compartments panicked")??;
    let group_expect = Expect::Compartment {
        // The two Groups list the members, so they are in the members' compartments too.
        count: in_member_compartments + 2,
        why: format!(
            "{} of {patients} patients: {in_member_compartments} resources reference a member or \
             are one in the generated NDJSON, plus Group/all-patients and Group/{GROUP_ID}",
            members.len()
        ),
    };
    let since_param = since.to_fhir().replace(':', "%3A");
    // `_typeFilter` keeping ~10% of Observations (body weight), counted here from the NDJSON.
    let weight = |line: &scenarios::Line| {
        serde_json::from_str::<Value>(&line.json).is_ok_and(|o| {
            o["code"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["system"] == "http://loinc.org" && c["code"] == FILTER_CODE)
        })
    };
    let mut weights = 0u64;
    for dir in [&generated, &bundle_dir] {
        for line in scenarios::read_lines(dir, |t| t == "Observation", |_, _| true)? {
            weights += u64::from(weight(&line));
        }
    }
    let scenario_list = vec![
        Scenario {
            name: "system",
            path: "$export".into(),
            gzip: false,
            expect: Expect::Exact(total),
        },
        Scenario {
            name: "system-gzip",
            path: "$export?_outputFormat=application%2Ffhir%2Bndjson%2Bgzip".into(),
            gzip: true,
            expect: Expect::Exact(total),
        },
        Scenario {
            name: "type-observation",
            path: "$export?_type=Observation".into(),
            gzip: false,
            expect: Expect::Exact(observations),
        },
        Scenario {
            name: "type-filter-10pct",
            path: format!(
                "$export?_type=Observation&_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C{FILTER_CODE}"
            ),
            gzip: false,
            expect: Expect::Exact(weights),
        },
        Scenario {
            name: "patient",
            path: "Patient/$export".into(),
            gzip: false,
            expect: Expect::Range {
                min: compartment_total,
                max: total,
                why: "every compartment resource, plus referenced supporting resources".into(),
            },
        },
        Scenario {
            name: "group-10pct",
            path: format!("Group/{GROUP_ID}/$export"),
            gzip: false,
            expect: group_expect,
        },
        Scenario {
            name: "since-1pct",
            path: format!("$export?_since={since_param}"),
            gzip: false,
            expect: Expect::Exact(updated),
        },
    ];

    // 5. The exports.
    let mut outcomes: Vec<ScenarioOutcome> = Vec::new();
    for scenario in &scenario_list {
        let server = restart(slot, &exe, work, &mut http).await?;
        let mut runs: Vec<RunResult> = Vec::new();
        let mut count_errors = Vec::new();
        for run in 1..=args.runs {
            let result = scenarios::run_export(&http, server, scenario)
                .await
                .with_context(|| format!("scenario {} run {run}", scenario.name))?;
            eprintln!(
                "bench: {} run {run}/{}: {} resources in {:.3} s (observed {:.3} s), {:.1} MB, \
                 server CPU {:.2} s",
                scenario.name,
                args.runs,
                thousands(result.count),
                result.wall_s,
                result.observed_s,
                result.bytes as f64 / MB,
                result.server_cpu_s
            );
            if let Err(message) = scenario.expect.check(&result.per_type) {
                eprintln!("bench: COUNT MISMATCH in {} run {run}: {message}", scenario.name);
                count_errors.push(format!(
                    "{} run {run} (job {}): {message}",
                    scenario.name, result.job_id
                ));
            }
            // Keep the last plain and gzip system exports for the limits; drop the others.
            let keep = run == args.runs && matches!(scenario.name, "system" | "system-gzip");
            if !keep {
                scenarios::delete_export(&http, &result.status_url).await?;
            }
            runs.push(result);
        }
        let hwm_kib = server::status_kib(server.pid(), "VmHWM")?;
        failures.extend(count_errors);
        outcomes.push(ScenarioOutcome {
            scenario: scenario.clone(),
            runs,
            hwm_kib,
            uncompressed: None,
        });
    }
    // The cost of gzip on the wire: the kept plain system export downloaded whole, as stored
    // and compressed on the fly for `Accept-Encoding: gzip`, in the same process.
    let download =
        match outcomes.iter().find(|o| o.scenario.name == "system").and_then(|o| o.runs.last()) {
            Some(run) => Some(scenarios::download_rates(&http, &run.job_id).await?),
            None => None,
        };
    // Time to data for the exports users run most: the `_since` 1% and one patient's, by a
    // client that polls at once and then as Retry-After says.
    // `patient` is a POST-only parameter.
    let single_patient = members.first().map(|p| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": format!("Patient/{p}")}}
        ]})
        .to_string()
    });
    let mut time_to_data = vec![
        time_to_data::measure(
            &http,
            "since-1pct",
            &format!("$export?_since={since_param}"),
            None,
            args.runs,
        )
        .await
        .context("time to data, _since")?,
    ];
    if let Some(body) = &single_patient {
        time_to_data.push(
            time_to_data::measure(&http, "one-patient", "Patient/$export", Some(body), args.runs)
                .await
                .context("time to data, one patient")?,
        );
    }
    let view_rows = views::measure(&http, args.runs).await.context("the view exports")?;
    for row in &time_to_data {
        eprintln!(
            "bench: time to data {}: manifest after {:.3} s, export done after {:.3} s",
            row.name, row.to_manifest_s, row.export_s
        );
    }
    if let Some(server) = slot.take() {
        server.stop().await?;
    }

    // 5b. The system exports again with the files in an S3 bucket, against the local-disk rows.
    let mut s3_rows: Vec<(&'static str, f64, f64, u64)> = Vec::new();
    if let Some(endpoint) = &args.s3_endpoint {
        let store = format!("s3://{}/bench-{}", args.s3_bucket, uuid::Uuid::new_v4());
        let extra =
            vec!["--export-store".to_owned(), store, "--s3-endpoint".to_owned(), endpoint.clone()];
        for scenario in scenario_list.iter().filter(|s| matches!(s.name, "system" | "system-gzip"))
        {
            let mut server =
                Server::start(&exe, &data, &work.join("server.log"), &http.client, false, &extra)
                    .await?;
            http.base = server.base.clone();
            let mut walls = Vec::new();
            for run in 1..=args.runs {
                let result = scenarios::run_export(&http, &mut server, scenario)
                    .await
                    .with_context(|| format!("scenario {} to S3, run {run}", scenario.name))?;
                if let Err(message) = scenario.expect.check(&result.per_type) {
                    failures.push(format!("{} to S3 run {run}: {message}", scenario.name));
                }
                eprintln!(
                    "bench: {} to S3 run {run}/{}: {} resources in {:.3} s",
                    scenario.name,
                    args.runs,
                    thousands(result.count),
                    result.wall_s
                );
                scenarios::delete_export(&http, &result.status_url).await?;
                walls.push(result.wall_s);
            }
            let hwm_kib = server::status_kib(server.pid(), "VmHWM")?;
            server.stop().await?;
            let local = outcomes
                .iter()
                .find(|o| o.scenario.name == scenario.name)
                .map(|o| median(&o.runs.iter().map(|r| r.wall_s).collect::<Vec<_>>()))
                .unwrap_or(f64::NAN);
            s3_rows.push((scenario.name, median(&walls), local, hwm_kib));
        }
    }

    // 5c. The same population on PostgreSQL: load, system and Group exports, against the
    // embedded store's rows.
    let mut postgres: Option<PostgresRows> = None;
    if let Some(url) = &args.database {
        let pg_data = work.join("data-pg");
        eprintln!("bench: bulkfhir load --database into PostgreSQL");
        let (stdout, load_pg_s) = load_with(&exe, &pg_data, Some(url), &generated).await?;
        if !stdout.contains(&format!("loaded {} resources", population.resources)) {
            failures.push(format!("load into PostgreSQL: {}", stdout.trim()));
        }
        let extra = vec!["--database".to_owned(), url.clone()];
        let mut server =
            Server::start(&exe, &pg_data, &work.join("server.log"), &http.client, false, &extra)
                .await?;
        http.base = server.base.clone();
        scenarios::put_group(&http, GROUP_ID, &members).await?;
        let mut rows = Vec::new();
        for scenario in scenario_list.iter().filter(|s| matches!(s.name, "system" | "group-10pct"))
        {
            let mut scenario = scenario.clone();
            if scenario.name == "system" {
                // Population A and the Group: no Bundles were sent to this database.
                scenario.expect = Expect::Exact(population.resources + 1);
            }
            let mut walls = Vec::new();
            let mut count = 0;
            for run in 1..=args.runs {
                let result =
                    scenarios::run_export(&http, &mut server, &scenario).await.with_context(
                        || format!("scenario {} on PostgreSQL, run {run}", scenario.name),
                    )?;
                if let Err(message) = scenario.expect.check(&result.per_type) {
                    failures.push(format!("{} on PostgreSQL run {run}: {message}", scenario.name));
                }
                eprintln!(
                    "bench: {} on PostgreSQL run {run}/{}: {} resources in {:.3} s",
                    scenario.name,
                    args.runs,
                    thousands(result.count),
                    result.wall_s
                );
                scenarios::delete_export(&http, &result.status_url).await?;
                walls.push(result.wall_s);
                count = result.count;
            }
            let embedded = outcomes
                .iter()
                .find(|o| o.scenario.name == scenario.name)
                .map(|o| {
                    let wall = median(&o.runs.iter().map(|r| r.wall_s).collect::<Vec<_>>());
                    let count = o.runs.last().map_or(0, |r| r.count);
                    (count as f64 / wall.max(1e-9), o.hwm_kib)
                })
                .unwrap_or((f64::NAN, 0));
            let hwm_kib = server::status_kib(server.pid(), "VmHWM")?;
            let rate = count as f64 / median(&walls).max(1e-9);
            rows.push((scenario.name, rate, embedded.0, hwm_kib, embedded.1));
        }
        server.stop().await?;
        postgres = Some(PostgresRows {
            load_rate: population.resources as f64 / load_pg_s.max(1e-9),
            embedded_load_rate: loaded as f64 / load_s.max(1e-9),
            exports: rows,
        });
    }

    // 5d. `bulkfhir pull` of the system export, as a client on the same machine: its download
    // rate against the server's export rate (the client must not be what users wait for).
    let pull_row = {
        let mut server =
            Server::start(&exe, &data, &work.join("server.log"), &http.client, false, &[]).await?;
        let pull_dir = work.join("pull");
        let output = tokio::process::Command::new(&exe)
            .args(["pull", &server.base, "--parallel", "4", "--no-wire-gzip", "--out"])
            .arg(&pull_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .await
            .context("run bulkfhir pull")?;
        let hwm_kib = server::status_kib(server.pid(), "VmHWM")?;
        server.check_alive()?;
        server.stop().await?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            failures.push(format!("bulkfhir pull failed: {stdout}"));
        }
        // "pulled F files (F this run, N resources, R resources/s) into …"
        let numbers: Vec<f64> = stdout
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        let (pulled, rate) =
            (numbers.get(2).copied().unwrap_or(0.0), numbers.get(3).copied().unwrap_or(0.0));
        if pulled as u64 != total {
            failures.push(format!("bulkfhir pull: {pulled} resources, the store holds {total}"));
        }
        let _ = std::fs::remove_dir_all(&pull_dir);
        let export_rate = outcomes
            .iter()
            .find(|o| o.scenario.name == "system")
            .map(|o| {
                let wall = median(&o.runs.iter().map(|r| r.wall_s).collect::<Vec<_>>());
                total as f64 / wall.max(1e-9)
            })
            .unwrap_or(f64::NAN);
        (rate, export_rate, hwm_kib)
    };

    // 5e. Tenants: the second population in a tenant of its own, exported alone and while the
    // whole store (the default tenant) exports.
    let fairness = {
        for args in [vec!["tenant", "add", "small"], vec!["load", "--tenant", "small"]] {
            let mut command = tokio::process::Command::new(&exe);
            command.args(&args).arg("--data-dir").arg(&data);
            if args[0] == "load" {
                command.arg(&bundle_dir);
            }
            let output = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .await
                .context("run bulkfhir tenant add / load --tenant")?;
            if !output.success() {
                bail!("bulkfhir {} failed ({output})", args.join(" "));
            }
        }
        let server =
            Server::start(&exe, &data, &work.join("server.log"), &http.client, false, &[]).await?;
        let big = Http { client: http.client.clone(), base: server.base.clone() };
        let small = Http { client: http.client.clone(), base: format!("{}/t/small", server.base) };
        let measured = fairness::measure(&big, &small, "$export", args.runs).await;
        server.stop().await?;
        let measured = measured.context("the tenant fairness runs")?;
        if measured.small_resources != bundle_population.resources {
            failures.push(format!(
                "tenant small exported {} resources, it holds {}",
                measured.small_resources, bundle_population.resources
            ));
        }
        if measured.big_resources != total {
            failures.push(format!(
                "the default tenant exported {} resources beside tenant small, it holds {total}",
                measured.big_resources
            ));
        }
        measured
    };

    // 6. The limits, on the last plain system export's files.
    let jobs_dir = data.join("exports").join("jobs");
    let plain = outcomes
        .iter()
        .find(|o| o.scenario.name == "system")
        .and_then(|o| o.runs.last())
        .context("no system export ran")?;
    let plain_count = plain.count;
    let plain_dir = jobs_dir.join(&plain.job_id);
    let plain_files = limits::source_files(
        &plain_dir,
        &plain.files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
    )?;
    let plain_bytes: u64 = plain_files.iter().map(|f| f.len).sum();
    if plain_bytes != plain.bytes {
        failures.push(format!(
            "system export: {plain_bytes} bytes on disk, the manifest says {}",
            plain.bytes
        ));
    }
    if let Some(gzip) = outcomes.iter_mut().find(|o| o.scenario.name == "system-gzip") {
        let last = gzip.runs.last().context("no gzip export ran")?;
        let files = limits::source_files(
            &jobs_dir.join(&last.job_id),
            &last.files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        )?;
        let (bytes, lines) = tokio::task::spawn_blocking(move || limits::gunzip_count(&files))
            .await
            .context("gunzip panicked")??;
        if bytes != plain_bytes || lines != last.count {
            failures.push(format!(
                "system-gzip: decompresses to {bytes} bytes in {lines} lines; the plain export \
                 has {plain_bytes} bytes and the manifest {} resources",
                last.count
            ));
        }
        gzip.uncompressed = Some(bytes);
    }
    eprintln!(
        "bench: limits on {} files, {:.1} MB, {cores} threads",
        plain_files.len(),
        plain_bytes as f64 / MB
    );
    // The store's own limit: every resource read through the store, nothing written.
    let defaults = bulkfhir_export::ExportConfig::default();
    let mut read_s = Vec::new();
    for _ in 0..args.runs {
        let read =
            limits::store_read(&data, cores, defaults.page_size, defaults.key_range_span).await?;
        if read.resources != plain_count || read.ndjson_bytes != plain_bytes {
            failures.push(format!(
                "store read: {} resources, {} bytes of NDJSON; the system export wrote {} and {}",
                read.resources, read.ndjson_bytes, plain_count, plain_bytes
            ));
        }
        read_s.push(read.elapsed.as_secs_f64());
    }
    let copy_dir = work.join("copy");
    let mut copy_fsync_s = Vec::new();
    let mut copy_plain_s = Vec::new();
    let mut gzip_s = Vec::new();
    let mut gzip_bytes = 0;
    for _ in 0..args.runs {
        for (fsync, times) in [(true, &mut copy_fsync_s), (false, &mut copy_plain_s)] {
            if copy_dir.exists() {
                std::fs::remove_dir_all(&copy_dir)
                    .with_context(|| format!("remove {}", copy_dir.display()))?;
            }
            let (files, dir) = (plain_files.clone(), copy_dir.clone());
            let elapsed =
                tokio::task::spawn_blocking(move || limits::copy_files(&files, &dir, cores, fsync))
                    .await
                    .context("the copy panicked")??;
            times.push(elapsed.as_secs_f64());
        }
        let files = plain_files.clone();
        let (elapsed, compressed) =
            tokio::task::spawn_blocking(move || limits::gzip_files(&files, cores, GZIP_LEVEL))
                .await
                .context("gzip panicked")??;
        gzip_s.push(elapsed.as_secs_f64());
        gzip_bytes = compressed;
    }
    if copy_dir.exists() {
        std::fs::remove_dir_all(&copy_dir)
            .with_context(|| format!("remove {}", copy_dir.display()))?;
    }
    let mbps = |bytes: u64, seconds: f64| bytes as f64 / MB / seconds.max(1e-9);
    let copy_limit = mbps(plain_bytes, median(&copy_fsync_s));
    let copy_nofsync_limit = mbps(plain_bytes, median(&copy_plain_s));
    let gzip_limit = mbps(plain_bytes, median(&gzip_s));
    let read_limit = mbps(plain_bytes, median(&read_s));
    let limits = Limits {
        copy: copy_limit,
        gzip: gzip_limit,
        // Reading overlaps writing (CPU and disk), so the slower of the two bounds a plain
        // export; reading and compressing both need every core, so their times add up.
        plain_pipeline: mbps(plain_bytes, median(&read_s).max(median(&copy_fsync_s))),
        gzip_pipeline: mbps(plain_bytes, median(&read_s) + median(&gzip_s)),
    };

    // 7. Latency while a system export runs.
    let server = restart(slot, &exe, work, &mut http).await?;
    let latency_pid = server.pid();
    eprintln!(
        "bench: latency: {} pollers and {KICKOFFS} kick-offs over {} s while system exports run",
        args.pollers, args.latency_secs
    );
    let latency = latency::measure(
        &http,
        args.pollers,
        KICKOFFS,
        Duration::from_secs(args.latency_secs.max(1)),
    )
    .await?;
    let latency_hwm_kib = server::status_kib(latency_pid, "VmHWM")?;
    let server_errors = latency.status.iter().filter(|s| s.1 >= 500).count();
    if server_errors > 0 {
        failures.push(format!("latency: {server_errors} status polls answered 5xx"));
    }
    if latency.status_failures > 0 {
        failures.push(format!(
            "latency: {} status polls failed; first: {}",
            latency.status_failures,
            latency.first_failure.as_deref().unwrap_or("?")
        ));
    }
    if let Some(server) = slot.take() {
        server.stop().await?;
    }
    // 7b. What authorization costs: the same polls and kick-offs with tokens and without.
    eprintln!("bench: authorization: status polls and kick-offs with --auth smart and none");
    let auth_cost = auth::measure(&exe, work, Duration::from_secs(3), KICKOFFS, 3).await?;

    // 8. Report.
    let rows: Vec<Row> = outcomes.iter().map(|o| o.row(plain_bytes, &limits)).collect();
    let generate_rate = population.resources as f64 / generate_s.max(1e-9);
    println!();
    println!(
        "bulkfhir bench: {} resources ({patients} patients + {} by Bundle), {} runs per \
         scenario (median), {cores} cores",
        thousands(total),
        thousands(bundled),
        args.runs
    );
    println!();
    println!(
        "{:<17} {:>10} {:>9} {:>12} {:>8} {:>9} {:>9} {:>8}  vs limit      vs read+write",
        "scenario", "resources", "wall s", "resources/s", "MB/s", "MB out", "RSS MiB", "srv CPU",
    );
    for row in &rows {
        println!(
            "{:<17} {:>10} {:>9.3} {:>12} {:>8.1} {:>9.1} {:>9.1} {:>7.0}%  {:.2} of {:<5}  {:.2}",
            row.name,
            thousands(row.resources),
            row.wall_s,
            thousands(row.resources_per_s.round() as u64),
            row.mb_per_s,
            row.stored_bytes as f64 / MB,
            row.hwm_kib as f64 / 1024.0,
            row.server_cpu * 100.0,
            row.ratio,
            row.limit_name,
            row.pipeline_ratio
        );
    }
    // Issue line: a 10%-selective _typeFilter scans at least as fast as the unfiltered export.
    let rate = |name: &str| rows.iter().find(|r| r.name == name).map(|r| (r.wall_s, r.resources));
    let filter_check = match (rate("type-observation"), rate("type-filter-10pct")) {
        (Some((plain_s, scanned)), Some((filter_s, kept))) => {
            let (plain_rate, filter_rate) =
                (scanned as f64 / plain_s.max(1e-9), scanned as f64 / filter_s.max(1e-9));
            println!(
                "type filter: {} Observations scanned/s with _typeFilter (kept {}) vs {} unfiltered: ratio {:.2}",
                thousands(filter_rate.round() as u64),
                thousands(kept),
                thousands(plain_rate.round() as u64),
                filter_rate / plain_rate.max(1e-9)
            );
            serde_json::json!({"scanned": scanned, "kept": kept, "filtered_scanned_per_s": filter_rate,
                "unfiltered_per_s": plain_rate, "ratio": filter_rate / plain_rate.max(1e-9)})
        }
        _ => Value::Null,
    };
    println!();
    println!(
        "generate  {} resources, {:.1} MB in {generate_s:.2} s: {} resources/s (one thread)",
        thousands(population.resources),
        population.bytes as f64 / MB,
        thousands(generate_rate.round() as u64)
    );
    println!(
        "ingest    bulkfhir load: {} resources in {load_s:.2} s: {} resources/s",
        thousands(loaded),
        thousands((loaded as f64 / load_s.max(1e-9)).round() as u64)
    );
    println!(
        "          transaction Bundles ({BUNDLE_SIZE} PUT creates each, {} in flight): {} \
         resources in {bundle_s:.2} s: {} resources/s",
        args.bundle_concurrency,
        thousands(bundled),
        thousands((bundled as f64 / bundle_s.max(1e-9)).round() as u64)
    );
    println!(
        "          transaction Bundles re-PUT (1% update): {} resources in {update_s:.2} s: {} \
         resources/s",
        thousands(updated),
        thousands((updated as f64 / update_s.max(1e-9)).round() as u64)
    );
    println!(
        "limits    copy file to file with fsync: {copy_limit:.0} MB/s; without fsync: \
         {copy_nofsync_limit:.0} MB/s; gzip level {GZIP_LEVEL} on {cores} threads: \
         {gzip_limit:.0} MB/s ({:.1} MB → {:.1} MB)",
        plain_bytes as f64 / MB,
        gzip_bytes as f64 / MB
    );
    println!(
        "          store read (every resource through the store, {cores} tasks, nothing \
         written): {read_limit:.0} MB/s; read+write limit: plain {:.0} MB/s (slower of read \
         and copy), gzip {:.0} MB/s (read time + gzip time)",
        limits.plain_pipeline, limits.gzip_pipeline
    );
    if let Some(d) = &download {
        println!(
            "download  the system export's files, one at a time: as stored {:.0} MB/s; \
             Accept-Encoding: gzip (compressed on the fly) {:.0} MB/s of NDJSON, {:.1} MB → \
             {:.1} MB on the wire; gzip/identity rate {:.2}",
            d.identity_mb_s,
            d.gzip_mb_s,
            d.identity_bytes as f64 / MB,
            d.gzip_wire_bytes as f64 / MB,
            d.gzip_mb_s / d.identity_mb_s.max(1e-9)
        );
    }
    let kick: Vec<f64> = latency.kickoff.iter().map(|s| s.0).collect();
    let status: Vec<f64> = latency.status.iter().map(|s| s.0).collect();
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for sample in &latency.status {
        *codes.entry(sample.1).or_default() += 1;
    }
    let code_text =
        codes.iter().map(|(code, n)| format!("{n} × {code}")).collect::<Vec<_>>().join(", ");
    println!(
        "latency   kick-off p50 {:.1} ms, p99 {:.1} ms ({} sequential, _type=Patient, {} got 429)",
        report::percentile(&kick, 50.0),
        report::percentile(&kick, 99.0),
        kick.len(),
        latency.kickoff.iter().filter(|s| s.1 == 429).count()
    );
    println!(
        "          status p50 {:.1} ms, p99 {:.1} ms ({} polls by {} clients over {:.0} s: \
         {code_text}; {} system exports completed meanwhile)",
        report::percentile(&status, 50.0),
        report::percentile(&status, 99.0),
        status.len(),
        latency.pollers,
        latency.window_s,
        latency.exports_completed
    );
    for (name, s3_s, local_s, hwm_kib) in &s3_rows {
        println!(
            "s3        {name} to an S3 bucket: {s3_s:.3} s vs {local_s:.3} s to local disk: \
             ratio {:.2}; server RSS {:.1} MiB",
            s3_s / local_s.max(1e-9),
            *hwm_kib as f64 / 1024.0
        );
    }
    println!(
        "pull      bulkfhir pull of the system export (4 files at once, no wire gzip on loopback): \
         {} resources/s downloaded vs {} resources/s exported: ratio {:.2}",
        thousands(pull_row.0.round() as u64),
        thousands(pull_row.1.round() as u64),
        pull_row.0 / pull_row.1.max(1e-9)
    );
    for row in &view_rows {
        let rate = row.rows as f64 / row.wall_s.max(1e-9);
        let plain = row.plain_resources as f64 / row.plain_wall_s.max(1e-9);
        println!(
            "views     {} ({}): {} rows in {:.3} s, {} rows/s vs {} resources/s plain \
             $export?_type={}: ratio {:.2}",
            row.name,
            row.format,
            thousands(row.rows),
            row.wall_s,
            thousands(rate.round() as u64),
            thousands(plain.round() as u64),
            row.resource_type,
            rate / plain.max(1e-9)
        );
    }
    for row in &time_to_data {
        println!(
            "to data   {}: kick-off → manifest {:.2} s for a client honouring Retry-After ({} polls, \
             {} × 429); the export itself took {:.3} s",
            row.name, row.to_manifest_s, row.polls, row.throttled, row.export_s
        );
    }
    println!(
        "tenants   a small tenant's export ({} resources) kicked off just after another \
         tenant's ({} resources): {:.3} s vs {:.3} s alone: ratio {:.2} (the big one took {:.2} s; \
         the small one finished first in {} of {} runs)",
        thousands(fairness.small_resources),
        thousands(fairness.big_resources),
        fairness.small_beside_big_s,
        fairness.small_alone_s,
        fairness.small_beside_big_s / fairness.small_alone_s.max(1e-9),
        fairness.big_s,
        fairness.overlapped,
        fairness.runs
    );
    if let Some(pg) = &postgres {
        println!(
            "postgres  load: {} resources/s through COPY vs {} resources/s embedded: ratio {:.2}",
            thousands(pg.load_rate.round() as u64),
            thousands(pg.embedded_load_rate.round() as u64),
            pg.load_rate / pg.embedded_load_rate.max(1e-9)
        );
        for (name, rate, embedded, hwm_kib, embedded_hwm_kib) in &pg.exports {
            println!(
                "postgres  {name}: {} resources/s vs {} resources/s embedded: ratio {:.2}; \
                 server RSS {:.1} MiB vs {:.1} MiB",
                thousands(rate.round() as u64),
                thousands(embedded.round() as u64),
                rate / embedded.max(1e-9),
                *hwm_kib as f64 / 1024.0,
                *embedded_hwm_kib as f64 / 1024.0
            );
        }
    }
    let (polls_off, polls_on) =
        (median(&auth_cost.off.polls_per_s), median(&auth_cost.on.polls_per_s));
    let (kick_off, kick_on) = (
        report::percentile(&auth_cost.off.kickoff_ms, 50.0),
        report::percentile(&auth_cost.on.kickoff_ms, 50.0),
    );
    println!(
        "auth      status polls/s (16 clients, a finished export): {} with --auth smart, {} with \
         none: ratio {:.2}; kick-off p50 {kick_on:.1} ms vs {kick_off:.1} ms: ratio {:.2}",
        thousands(polls_on.round() as u64),
        thousands(polls_off.round() as u64),
        polls_on / polls_off.max(1e-9),
        kick_on / kick_off.max(1e-9)
    );
    println!(
        "notes     wall = kick-off sent → job finishedTime; MB = 10^6 bytes of NDJSON (the gzip \
         row counts uncompressed bytes; MB out is what was stored); RSS = the server's VmHWM, \
         restarted per scenario; srv CPU = server CPU time / wall (100% = one core)"
    );
    if let (Some(start), Some(end)) = (load_average_at_start, report::load_average()) {
        println!(
            "load      1-minute load average {:.2} at the start, {:.2} at the end ({cores} cores)",
            start[0], end[0]
        );
    }
    for failure in &failures {
        println!("FAILED    {failure}");
    }

    let status_by_code = |code: u16| -> Vec<f64> {
        latency.status.iter().filter(|s| s.1 == code).map(|s| s.0).collect()
    };
    let results = json!({
        "bulkfhir_version": env!("CARGO_PKG_VERSION"),
        "git_commit": report::git_commit(),
        "started_at": started_at,
        "cores": cores,
        "machine": report::machine(cores),
        "load_average": {"start": load_average_at_start, "end": report::load_average()},
        "parameters": {
            "resources_requested": args.resources,
            "runs": args.runs,
            "patients": patients,
            "seed": SEED,
            "bundle_seed": BUNDLE_SEED,
            "bundle_patients": bundle_patients,
            "bundle_size": BUNDLE_SIZE,
            "bundle_concurrency": args.bundle_concurrency,
            "pollers": args.pollers,
            "latency_secs": args.latency_secs,
            "job_poll_ms": scenarios::JOB_POLL_EVERY.as_millis() as u64,
            "rss_sample_ms": server::RSS_SAMPLE_EVERY.as_millis() as u64,
            "gzip_level": GZIP_LEVEL,
            "server_env": std::env::vars().filter(|(k, _)| k.starts_with("BULKFHIR_")).collect::<BTreeMap<_, _>>(),
        },
        "resources": total,
        "stored_per_type": stored,
        "generate": {
            "resources": population.resources,
            "bytes": population.bytes,
            "seconds": round(generate_s, 4),
            "resources_per_s": round(generate_rate, 1),
            "per_type": population_types,
        },
        "ingest": {
            "load": {
                "resources": loaded,
                "seconds": round(load_s, 4),
                "resources_per_s": round(loaded as f64 / load_s.max(1e-9), 1),
                "what": "bulkfhir load as a child process, wall time including process start",
            },
            "bundles": {
                "resources": bundled,
                "bundles": n_bundles,
                "seconds": round(bundle_s, 4),
                "resources_per_s": round(bundled as f64 / bundle_s.max(1e-9), 1),
                "per_type": bundle_types,
                "what": "PUT creates of a second generated population (seed 2, no Group)",
                "server_peak_rss_mib": round(ingest_hwm_kib as f64 / 1024.0, 1),
            },
            "update_1pct": {
                "resources": updated,
                "seconds": round(update_s, 4),
                "resources_per_s": round(updated as f64 / update_s.max(1e-9), 1),
                "what": "re-PUT of every 100th line of every generated file, as transaction Bundles",
            },
        },
        "since": since.to_fhir(),
        "group": {"id": GROUP_ID, "members": members.len()},
        "limits": {
            "bytes": plain_bytes,
            "files": plain_files.len(),
            "threads": cores,
            "copy": {
                "what": "file to file in 8 MiB chunks, 1 MiB reads and writes, staging name + fsync + rename + directory fsync (as the export's output store)",
                "runs_s": copy_fsync_s,
                "median_s": round(median(&copy_fsync_s), 4),
                "mb_per_s": round(copy_limit, 1),
            },
            "copy_without_fsync": {
                "runs_s": copy_plain_s,
                "median_s": round(median(&copy_plain_s), 4),
                "mb_per_s": round(copy_nofsync_limit, 1),
            },
            "store_read": {
                "what": "every live resource read through the ResourceStore trait in key-range pages, one task per core, nothing written",
                "runs_s": read_s,
                "median_s": round(median(&read_s), 4),
                "mb_per_s": round(read_limit, 1),
            },
            "plain_pipeline_mb_per_s": round(limits.plain_pipeline, 1),
            "gzip_pipeline_mb_per_s": round(limits.gzip_pipeline, 1),
            "gzip": {
                "what": "flate2 (zlib-rs) in memory, 8 MiB chunks, one thread per core",
                "level": GZIP_LEVEL,
                "runs_s": gzip_s,
                "median_s": round(median(&gzip_s), 4),
                "mb_per_s": round(gzip_limit, 1),
                "compressed_bytes": gzip_bytes,
            },
        },
        "scenarios": rows.iter().zip(&outcomes).map(|(row, o)| o.to_json(row)).collect::<Vec<_>>(),
        "type_filter": filter_check,
        "download": download.as_ref().map(|d| json!({
            "identity_mb_per_s": d.identity_mb_s,
            "gzip_mb_per_s": d.gzip_mb_s,
            "identity_bytes": d.identity_bytes,
            "gzip_wire_bytes": d.gzip_wire_bytes,
        })),
        "pull": {
            "download_resources_per_s": pull_row.0,
            "export_resources_per_s": pull_row.1,
            "ratio": pull_row.0 / pull_row.1.max(1e-9),
        },
        "views": view_rows.iter().map(|row| json!({
            "view": row.name,
            "format": row.format,
            "type": row.resource_type,
            "rows": row.rows,
            "wall_s": row.wall_s,
            "plain_resources": row.plain_resources,
            "plain_wall_s": row.plain_wall_s,
            "ratio": (row.rows as f64 / row.wall_s.max(1e-9))
                / (row.plain_resources as f64 / row.plain_wall_s.max(1e-9)).max(1e-9),
        })).collect::<Vec<_>>(),
        "time_to_data": time_to_data.iter().map(|row| json!({
            "scenario": row.name,
            "kickoff_to_manifest_s": row.to_manifest_s,
            "export_s": row.export_s,
            "status_polls": row.polls,
            "status_429": row.throttled,
        })).collect::<Vec<_>>(),
        "tenants": {
            "small_resources": fairness.small_resources,
            "big_resources": fairness.big_resources,
            "small_alone_s": fairness.small_alone_s,
            "small_beside_big_s": fairness.small_beside_big_s,
            "big_s": fairness.big_s,
            "runs_where_the_small_one_finished_first": fairness.overlapped,
            "ratio": fairness.small_beside_big_s / fairness.small_alone_s.max(1e-9),
        },
        "postgres": postgres.as_ref().map(|pg| json!({
            "load_per_s": pg.load_rate,
            "embedded_load_per_s": pg.embedded_load_rate,
            "load_ratio": pg.load_rate / pg.embedded_load_rate.max(1e-9),
            "exports": pg.exports.iter().map(|(name, rate, embedded, hwm, embedded_hwm)| json!({
                "scenario": name, "resources_per_s": rate, "embedded_resources_per_s": embedded,
                "ratio": rate / embedded.max(1e-9),
                "server_peak_rss_mib": *hwm as f64 / 1024.0,
                "embedded_server_peak_rss_mib": *embedded_hwm as f64 / 1024.0,
            })).collect::<Vec<_>>(),
        })),
        "s3": s3_rows.iter().map(|(name, s3_s, local_s, hwm_kib)| json!({
            "scenario": name, "s3_wall_s": s3_s, "local_wall_s": local_s,
            "ratio": s3_s / local_s.max(1e-9), "server_peak_rss_mib": *hwm_kib as f64 / 1024.0,
        })).collect::<Vec<_>>(),
        "authorization": {
            "status_polls_per_s_on": auth_cost.on.polls_per_s,
            "status_polls_per_s_off": auth_cost.off.polls_per_s,
            "polls_ratio": polls_on / polls_off.max(1e-9),
            "kickoff_on": latency_json(&auth_cost.on.kickoff_ms),
            "kickoff_off": latency_json(&auth_cost.off.kickoff_ms),
            "kickoff_p50_ratio": kick_on / kick_off.max(1e-9),
        },
        "latency": {
            "window_s": round(latency.window_s, 3),
            "pollers": latency.pollers,
            "background_exports_completed": latency.exports_completed,
            "kickoff": latency_json(&kick),
            "kickoff_429": latency.kickoff.iter().filter(|s| s.1 == 429).count(),
            "status": latency_json(&status),
            "status_202": latency_json(&status_by_code(202)),
            "status_429": latency_json(&status_by_code(429)),
            "status_200": latency_json(&status_by_code(200)),
            "status_codes": codes.iter().map(|(code, n)| (code.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "status_failures": latency.status_failures,
            "server_peak_rss_mib": round(latency_hwm_kib as f64 / 1024.0, 1),
        },
        "failures": failures,
        "total_seconds": round(bench_started.elapsed().as_secs_f64(), 2),
    });
    report::write_json(&args.out, &results)?;
    eprintln!("bench: wrote {}", args.out.display());
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("bench: {} check(s) failed", failures.len());
        Ok(ExitCode::FAILURE)
    }
}

/// One scenario's runs.
#[derive(Debug)]
struct ScenarioOutcome {
    scenario: Scenario,
    runs: Vec<RunResult>,
    /// The server's `VmHWM` after the scenario (a fresh server per scenario).
    hwm_kib: u64,
    /// For gzip output: the bytes after decompression.
    uncompressed: Option<u64>,
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    name: &'static str,
    resources: u64,
    wall_s: f64,
    resources_per_s: f64,
    mb_per_s: f64,
    stored_bytes: u64,
    hwm_kib: u64,
    server_cpu: f64,
    ratio: f64,
    limit_name: &'static str,
    limit_mb_per_s: f64,
    /// The ratio to the read+write limit ([`Limits::plain_pipeline`] or `gzip_pipeline`).
    pipeline_ratio: f64,
}

/// The machine's limits in MB/s of NDJSON, measured on the plain system export's bytes.
#[derive(Debug, Clone, Copy)]
struct Limits {
    copy: f64,
    gzip: f64,
    /// Reading everything from the store and copying it, overlapped.
    plain_pipeline: f64,
    /// Reading everything from the store, then compressing it, on the same cores.
    gzip_pipeline: f64,
}

impl ScenarioOutcome {
    fn row(&self, plain_bytes: u64, limits: &Limits) -> Row {
        let walls: Vec<f64> = self.runs.iter().map(|r| r.wall_s).collect();
        let wall_s = median(&walls);
        let last = self.runs.last();
        let resources = last.map_or(0, |r| r.count);
        let stored_bytes = last.map_or(0, |r| r.bytes);
        let bytes = if self.scenario.gzip {
            self.uncompressed.unwrap_or(plain_bytes)
        } else {
            stored_bytes
        };
        let mb_per_s = bytes as f64 / MB / wall_s.max(1e-9);
        let (limit_name, limit_mb_per_s, pipeline) = if self.scenario.gzip {
            ("gzip", limits.gzip, limits.gzip_pipeline)
        } else {
            ("copy", limits.copy, limits.plain_pipeline)
        };
        let cpu: Vec<f64> =
            self.runs.iter().map(|r| r.server_cpu_s / r.observed_s.max(1e-9)).collect();
        Row {
            name: self.scenario.name,
            resources,
            wall_s,
            resources_per_s: resources as f64 / wall_s.max(1e-9),
            mb_per_s,
            stored_bytes,
            hwm_kib: self.hwm_kib,
            server_cpu: median(&cpu),
            ratio: mb_per_s / limit_mb_per_s.max(1e-9),
            limit_name,
            limit_mb_per_s,
            pipeline_ratio: mb_per_s / pipeline.max(1e-9),
        }
    }

    fn to_json(&self, row: &Row) -> Value {
        json!({
            "name": row.name,
            "request": self.scenario.path,
            "expected": self.scenario.expect.to_json(),
            "resources": row.resources,
            "bytes_stored": row.stored_bytes,
            "bytes_uncompressed": self.uncompressed.unwrap_or(row.stored_bytes),
            "median_wall_s": round(row.wall_s, 4),
            "resources_per_s": round(row.resources_per_s, 1),
            "mb_per_s": round(row.mb_per_s, 2),
            "peak_rss_mib": round(row.hwm_kib as f64 / 1024.0, 1),
            "server_cpu_share_of_one_core": round(row.server_cpu, 3),
            "limit": row.limit_name,
            "limit_mb_per_s": round(row.limit_mb_per_s, 1),
            "ratio_to_limit": round(row.ratio, 4),
            "ratio_to_read_write_limit": round(row.pipeline_ratio, 4),
            "runs": self.runs.iter().map(|r| json!({
                "job_id": r.job_id,
                "wall_s": round(r.wall_s, 4),
                "observed_s": round(r.observed_s, 4),
                "kickoff_ms": round(r.kickoff_ms, 3),
                "resources": r.count,
                "per_type": r.per_type,
                "bytes": r.bytes,
                "files": r.files.iter().map(|f| json!({
                    "name": f.name, "type": f.resource_type, "count": f.count, "bytes": f.bytes,
                })).collect::<Vec<_>>(),
                "max_sampled_rss_mib": round(r.max_rss_kib as f64 / 1024.0, 1),
                "server_cpu_s": round(r.server_cpu_s, 3),
                "machine_busy_share": round(r.machine_busy, 3),
                "machine_iowait_share": round(r.machine_iowait, 3),
                "job_polls": r.job_polls,
                "status_polls": r.status_polls,
                "status_429": r.status_429,
            })).collect::<Vec<_>>(),
        })
    }
}
