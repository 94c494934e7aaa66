//! The store conformance suite and restart behaviour, on the embedded SQLite backend.

use std::sync::Arc;

use bulkfhir_model::ResourceType;
use bulkfhir_store::{ClientStore, JobStore, ResourceStore, ScanOptions, testsuite};
use bulkfhir_store_embedded::EmbeddedStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_passes_the_conformance_suite() {
    for (name, test) in testsuite::ALL {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ResourceStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        eprintln!("conformance: {name}");
        test(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_job_store_suite() {
    for (name, test) in testsuite::JOB_TESTS {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn JobStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        eprintln!("job conformance: {name}");
        test(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_client_store_suite_and_keeps_clients_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store: Arc<dyn ClientStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        testsuite::clients_and_replays(store).await;
    }
    // Reopened: the client and the remembered assertion id are still there.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.client("a").await.unwrap().is_some());
    let t0 = bulkfhir_model::Instant::from_micros(1_800_000_000_000_000 + 302_000_000);
    let expires = bulkfhir_model::Instant::from_micros(t0.as_micros() + 1_000_000);
    assert!(!store.use_jti("a", "j1", expires, t0).await.unwrap(), "a replay after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_resumed_from_a_cursor_after_reopening_returns_each_resource_once() {
    let dir = tempfile::tempdir().unwrap();
    let observation = ResourceType::parse("Observation").unwrap();
    let (snapshot, cursor, mut seen) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..300 {
            testsuite::put(&store, &format!(r#"{{"resourceType":"Observation","id":"o{i}"}}"#))
                .await;
        }
        let snapshot = store.snapshot().await.unwrap();
        let page = store.scan(snapshot, observation, ScanOptions::live(0, 120)).await.unwrap();
        // Writes after the snapshot, before the "crash".
        for i in 0..50 {
            testsuite::put(
                &store,
                &format!(r#"{{"resourceType":"Observation","id":"o{i}","status":"x"}}"#),
            )
            .await;
        }
        let seen: Vec<String> = page.resources.iter().map(|r| r.id.to_string()).collect();
        (snapshot, page.next.unwrap(), seen)
    };
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    testsuite::put(&reopened, r#"{"resourceType":"Observation","id":"after-restart"}"#).await;
    let mut after = cursor;
    loop {
        let page =
            reopened.scan(snapshot, observation, ScanOptions::live(after, 70)).await.unwrap();
        assert!(page.resources.iter().all(|r| r.version == 1));
        seen.extend(page.resources.iter().map(|r| r.id.to_string()));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), 300);
    assert_eq!(unique.len(), 300);
    assert!(!seen.contains(&"after-restart".to_owned()));
}

/// WAL checkpoints run on their own thread; with a writer that never pauses, the WAL must still
/// start over (it is caught up with the writer paused once it passes 64 MiB) instead of growing
/// with everything written, and closing the store leaves no long WAL behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_continuous_writes_and_is_checkpointed_on_close() {
    use bulkfhir_model::{PreparedResource, ResourceId};
    use bulkfhir_store::{Atomicity, WriteOp};

    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("bulkfhir.sqlite-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (writers, batches, per_batch) = (3, 60, 1000);
    let batch = move |writer: usize, batch: usize| -> Vec<WriteOp> {
        let padding = "x".repeat(1500);
        (0..per_batch)
            .map(|i| {
                let id = format!("o{writer}-{batch}-{i}");
                let json = format!(
                    r#"{{"resourceType":"Observation","id":"{id}","status":"final","note":[{{"text":"{padding}"}}]}}"#
                );
                WriteOp::Update {
                    resource: PreparedResource::parse(json.as_bytes()).unwrap(),
                    id: ResourceId::parse(&id).unwrap(),
                    if_match: None,
                }
            })
            .collect()
    };
    // Several writers, so that one always waits for the writer connection: the store never
    // sees a pause between transactions in which a lagging checkpoint could catch up.
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for n in 0..batches {
                let results = store.transact(batch(writer, n), Atomicity::EachOnItsOwn).await;
                assert!(results.unwrap().iter().all(Result::is_ok));
            }
        });
    }
    let mut largest = 0;
    while !tasks.is_empty() {
        tokio::select! {
            joined = tasks.join_next() => joined.unwrap().unwrap(),
            () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
        largest = largest.max(wal_len());
    }
    // About 250 MB of bodies were written (more in index pages); the WAL never held them all.
    let mib = 1024 * 1024;
    assert!(largest > 0, "the store runs in WAL mode");
    assert!(largest < 160 * mib, "the WAL grew to {} MiB", largest / mib);
    let observation = ResourceType::parse("Observation").unwrap();
    let snapshot = store.snapshot().await.unwrap();
    let mut after = 0;
    let mut count = 0;
    loop {
        let page = store.scan(snapshot, observation, ScanOptions::live(after, 5000)).await.unwrap();
        count += page.resources.len();
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(count, writers * batches * per_batch);
    drop(store);
    assert!(wal_len() <= 64 * mib, "closing leaves a WAL of {} MiB", wal_len() / mib);
}
