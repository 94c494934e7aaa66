//! The store conformance suite and restart behaviour, on the embedded SQLite backend.

use std::sync::Arc;

use bulkfhir_model::ResourceType;
use bulkfhir_store::{JobStore, ResourceStore, ScanOptions, testsuite};
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
