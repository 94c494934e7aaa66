//! The store conformance suites on a real PostgreSQL (a throwaway cluster this test process
//! starts), and the snapshot guarantee under concurrent writers on several connections.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed step is the test failing

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bulkfhir_model::{PreparedResource, ResourceId, ResourceType};
use bulkfhir_store::{
    Atomicity, ClientStore, JobStore, ResourceStore, ScanOptions, Snapshot, WriteOp, testsuite,
};
use bulkfhir_store_postgres::{PostgresStore, Sequencing, testing::TestCluster};

async fn fresh(sequencing: Sequencing) -> PostgresStore {
    let url = TestCluster::get().database();
    PostgresStore::connect_with(&url, sequencing).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_conformance_suite() {
    for (name, test) in testsuite::ALL {
        let store: Arc<dyn ResourceStore> = Arc::new(fresh(Sequencing::Serialized).await);
        eprintln!("conformance: {name}");
        test(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_job_store_suite() {
    for (name, test) in testsuite::JOB_TESTS {
        let store: Arc<dyn JobStore> = Arc::new(fresh(Sequencing::Serialized).await);
        eprintln!("job conformance: {name}");
        test(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_client_store_suite_and_a_second_node_sees_its_clients() {
    let url = TestCluster::get().database();
    {
        let store: Arc<dyn ClientStore> = Arc::new(PostgresStore::connect(&url).await.unwrap());
        testsuite::clients_and_replays(store).await;
    }
    // Another node on the same database: the client and the remembered assertion id are there.
    let other = PostgresStore::connect(&url).await.unwrap();
    assert!(other.client("a").await.unwrap().is_some());
    let t0 = bulkfhir_model::Instant::from_micros(1_800_000_000_000_000 + 302_000_000);
    let expires = bulkfhir_model::Instant::from_micros(t0.as_micros() + 1_000_000);
    assert!(!other.use_jti("a", "j1", expires, t0).await.unwrap(), "a replay on another node");
    // The token signing key: the first node's candidate wins, every node gets it.
    let first = other.shared_secret("token-signing-key", b"first").await.unwrap();
    let second = PostgresStore::connect(&url)
        .await
        .unwrap()
        .shared_secret("token-signing-key", b"second")
        .await
        .unwrap();
    assert_eq!((first.as_deref(), second.as_deref()), (Some(&b"first"[..]), Some(&b"first"[..])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_starting_together_migrate_once_and_share_one_history() {
    let url = TestCluster::get().database();
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    testsuite::put(&a, r#"{"resourceType":"Patient","id":"p1"}"#).await;
    let written = testsuite::put(&b, r#"{"resourceType":"Patient","id":"p1","active":true}"#).await;
    assert_eq!(written.version, 2, "node b saw node a's version 1");
    let patient = ResourceType::parse("Patient").unwrap();
    let read = a.read(patient, &ResourceId::parse("p1").unwrap()).await.unwrap();
    assert_eq!(read.version, 2);
    assert!(std::str::from_utf8(&read.body).unwrap().contains(r#""active":true"#));
}

/// Every live (id, version) of Observation as of `snapshot`.
async fn contents(store: &PostgresStore, snapshot: Snapshot) -> BTreeMap<String, u64> {
    let observation = ResourceType::parse("Observation").unwrap();
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.scan(snapshot, observation, ScanOptions::live(after, 1000)).await.unwrap();
        out.extend(page.resources.iter().map(|r| (r.id.to_string(), r.version)));
        match page.next {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Eight writers on eight connections update random ids in batches (ids all writers share, or
/// ids of each writer's own) while snapshots are taken and read; afterwards each snapshot is
/// read again. Returns how many snapshots read
/// differently the second time, out of how many, stopping at the first difference when
/// `stop_at_first` (or after `run_for`).
async fn snapshots_under_concurrent_writers(
    store: PostgresStore,
    run_for: Duration,
    stop_at_first: bool,
    shared_ids: bool,
) -> (usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..8_u64 {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        writers.spawn(async move {
            let mut n = writer;
            while !stop.load(Ordering::Relaxed) {
                let ops: Vec<WriteOp> = (0..20)
                    .map(|i| {
                        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let id = if shared_ids {
                            format!("o{}", (n >> 33) % 300)
                        } else {
                            format!("o{writer}-{}", (n >> 33) % 40)
                        };
                        let json = format!(
                            r#"{{"resourceType":"Observation","id":"{id}","status":"final","valueInteger":{i}}}"#
                        );
                        WriteOp::Update {
                            resource: PreparedResource::parse(json.as_bytes()).unwrap(),
                            id: ResourceId::parse(&id).unwrap(),
                            if_match: None,
                        }
                    })
                    .collect();
                let results = store.transact(ops, Atomicity::EachOnItsOwn).await.unwrap();
                assert!(results.iter().all(Result::is_ok));
            }
        });
    }
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < run_for {
        let snapshot = store.snapshot().await.unwrap();
        seen.push((snapshot, contents(&store, snapshot).await));
        if stop_at_first && seen.len() % 10 == 0 {
            // Let the writers in flight commit, then look back at what was read so far.
            let mut differ = 0;
            for (snapshot, first) in &seen {
                if contents(&store, *snapshot).await != *first {
                    differ += 1;
                }
            }
            if differ > 0 {
                stop.store(true, Ordering::Relaxed);
                while writers.join_next().await.is_some() {}
                return (differ, seen.len());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = writers.join_next().await {
        joined.unwrap();
    }
    let mut differ = 0;
    for (snapshot, first) in &seen {
        if contents(&store, *snapshot).await != *first {
            differ += 1;
        }
    }
    (differ, seen.len())
}

/// The contract's snapshot guarantee on PostgreSQL: what a snapshot reads never changes, however
/// many writers were in flight when it was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_stay_true_under_concurrent_writers_on_several_connections() {
    let store = fresh(Sequencing::Serialized).await;
    let (differ, taken) =
        snapshots_under_concurrent_writers(store.clone(), Duration::from_secs(4), false, true)
            .await;
    eprintln!("{taken} snapshots taken under 8 concurrent writers, {differ} read differently");
    assert!(taken >= 20, "only {taken} snapshots were taken");
    assert_eq!(differ, 0, "{differ} of {taken} snapshots changed after they were taken");
    // And sequence numbers are contiguous (the `_since` search relies on it).
    let last = store.snapshot().await.unwrap().seq;
    let observation = ResourceType::parse("Observation").unwrap();
    let bounds = store
        .seq_bounds(Snapshot { seq: last, time: bulkfhir_model::Instant::now() }, observation)
        .await
        .unwrap();
    assert_eq!(bounds.map(|(low, _)| low), Some(1));
    assert_eq!(bounds.map(|(_, high)| high), Some(last));
}

/// The same test catches the naive design (a `SEQUENCE` for `seq` and `MAX(seq)` as the
/// snapshot): a writer that drew a lower `seq` commits after a snapshot above it was taken, and
/// the snapshot's contents change. (Each writer keeps to ids of its own here: the naive design
/// has no lock that would order two writers of one id.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_snapshot_test_catches_a_naive_sequence() {
    let store = fresh(Sequencing::NaiveSequence).await;
    let (differ, taken) =
        snapshots_under_concurrent_writers(store, Duration::from_secs(30), true, false).await;
    eprintln!("naive: {differ} of {taken} snapshots read differently later");
    assert!(differ > 0, "no snapshot of {taken} changed: the test would not catch the bug");
}

/// A write reads the newest version of each resource of its batch with `CURRENTS_SQL`. On a
/// table ANALYZE has seen large, the plan must stay one index lookup per key: written as a plain
/// join, the same read hashed the whole table against every batch of a load (this setup gives
/// that join a hash join over a sequential scan of all 400,000 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_read_of_current_versions_stays_one_lookup_per_key_on_a_large_table() {
    let url = TestCluster::get().database();
    let store = PostgresStore::connect(&url).await.unwrap(); // creates the schema
    store.close();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO resource_version
             SELECT g, (ARRAY['Observation','Claim','Encounter','Patient'])[1 + g % 4],
                    md5(g::text), 1, 0, 9223372036854775807, false, NULL, NULL
             FROM generate_series(1, 400000) g;
             ANALYZE resource_version;",
        )
        .await
        .unwrap();
    // Literal arrays, so that the planner sees all 5,000 keys as a load's batch binds them.
    let ids: Vec<String> = (0..5000).map(|i| format!("x{i:05}")).collect();
    let types = vec!["Observation"; ids.len()];
    client
        .batch_execute(&format!(
            "PREPARE currents(text[], text[]) AS {}",
            bulkfhir_store_postgres::CURRENTS_SQL
        ))
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN EXECUTE currents('{{{}}}', '{{{}}}')",
                types.join(","),
                ids.join(",")
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("Index Scan Backward using resource_version_pkey"), "{plan}");
    for scan_of_all in ["Hash Join", "Merge Join", "Seq Scan on resource_version"] {
        assert!(!plan.contains(scan_of_all), "{scan_of_all}:\n{plan}");
    }
}
