//! Conformance tests for [`ResourceStore`] backends.
//!
//! Each function takes a fresh, empty store and panics (with a message) when the backend breaks
//! the trait's contract. A backend's test file calls every function here on its own store;
//! [`ALL`] lists them so that none is forgotten.

use std::{sync::Arc, time::Duration};

use bulkfhir_model::{Instant, PreparedResource, ResourceId, ResourceType};

use crate::{
    Atomicity, JobId, JobQuery, JobStatus, JobStore, NewJob, ResourceStore, ScanOptions, Snapshot,
    StoreError, WriteOp,
};

/// A named conformance test.
pub type SuiteTest = (
    &'static str,
    fn(Arc<dyn ResourceStore>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
);

/// Every conformance test, by name.
pub const ALL: &[SuiteTest] = &[
    ("versions_history_and_deletes", |s| Box::pin(versions_history_and_deletes(s))),
    ("if_match_and_create_conflicts", |s| Box::pin(if_match_and_create_conflicts(s))),
    ("all_or_nothing_leaves_no_trace", |s| Box::pin(all_or_nothing_leaves_no_trace(s))),
    ("each_on_its_own_reports_per_op", |s| Box::pin(each_on_its_own_reports_per_op(s))),
    ("snapshot_ignores_1000_concurrent_updates", |s| {
        Box::pin(snapshot_ignores_1000_concurrent_updates(s))
    }),
    ("scan_pages_return_each_resource_once", |s| Box::pin(scan_pages_return_each_resource_once(s))),
    ("snapshot_time_separates_writes", |s| Box::pin(snapshot_time_separates_writes(s))),
    ("compartment_follows_versions", |s| Box::pin(compartment_follows_versions(s))),
    ("compartment_batches_share_a_budget", |s| Box::pin(compartment_batches_share_a_budget(s))),
    ("deletions_times_and_point_reads_as_of_a_snapshot", |s| {
        Box::pin(deletions_times_and_point_reads_as_of_a_snapshot(s))
    }),
];

/// A named job-store conformance test.
pub type JobSuiteTest = (
    &'static str,
    fn(Arc<dyn JobStore>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
);

/// Every job-store conformance test, by name.
pub const JOB_TESTS: &[JobSuiteTest] = &[
    ("leases_are_exclusive_and_fence_writes", |s| {
        Box::pin(leases_are_exclusive_and_fence_writes(s))
    }),
    ("unit_leases_are_exclusive_and_fence_checkpoints", |s| {
        Box::pin(unit_leases_are_exclusive_and_fence_checkpoints(s))
    }),
    ("queue_limit_cancel_and_cleanup", |s| Box::pin(queue_limit_cancel_and_cleanup(s))),
];

/// Clients persist, ids are unique, and a `jti` is accepted once until it expires.
pub async fn clients_and_replays(clients: Arc<dyn crate::ClientStore>) {
    let clients = clients.as_ref();
    let t0 = Instant::from_micros(1_800_000_000_000_000);
    let record = |id: &str| crate::ClientRecord {
        id: id.to_owned(),
        name: format!("client {id}"),
        jwks: Some(r#"{"keys":[]}"#.to_owned()),
        jwks_url: None,
        scope: "system/*.rs".to_owned(),
        created: t0,
    };
    assert!(clients.clients().await.expect("list").is_empty());
    clients.add_client(record("b")).await.expect("add b");
    clients.add_client(record("a")).await.expect("add a");
    assert!(clients.add_client(record("a")).await.is_err(), "ids are unique");
    assert_eq!(clients.client("a").await.expect("get"), Some(record("a")));
    assert_eq!(clients.client("zz").await.expect("get"), None);
    let ids: Vec<String> =
        clients.clients().await.expect("list").into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(clients.remove_client("b").await.expect("remove"));
    assert!(!clients.remove_client("b").await.expect("remove again"));

    let later = |seconds: i64| Instant::from_micros(t0.as_micros() + seconds * 1_000_000);
    assert!(clients.use_jti("a", "j1", later(300), t0).await.expect("first use"));
    assert!(!clients.use_jti("a", "j1", later(300), later(10)).await.expect("replay"));
    assert!(clients.use_jti("b", "j1", later(300), later(10)).await.expect("another client's"));
    // Once expired, the entry is forgotten (the assertion itself is refused for its exp).
    assert!(clients.use_jti("a", "j1", later(700), later(301)).await.expect("after expiry"));
}

fn id(text: &str) -> ResourceId {
    ResourceId::parse(text).expect("test id is valid")
}

fn resource(json: &str) -> PreparedResource {
    PreparedResource::parse(json.as_bytes()).expect("test resource is valid")
}

fn rt(name: &str) -> ResourceType {
    ResourceType::parse(name).expect("test type is valid")
}

/// Upserts one resource, panicking on failure.
pub async fn put(store: &dyn ResourceStore, json: &str) -> crate::WriteOutcome {
    let prepared = resource(json);
    let resource_id = prepared.id().cloned().expect("test resource has an id");
    let mut results = store
        .transact(
            vec![WriteOp::Update { resource: prepared, id: resource_id, if_match: None }],
            Atomicity::AllOrNothing,
        )
        .await
        .expect("put succeeds");
    results.remove(0).expect("put succeeds")
}

async fn delete(store: &dyn ResourceStore, type_name: &str, text_id: &str) -> crate::WriteOutcome {
    let mut results = store
        .transact(
            vec![WriteOp::Delete { resource_type: rt(type_name), id: id(text_id), if_match: None }],
            Atomicity::AllOrNothing,
        )
        .await
        .expect("delete succeeds");
    results.remove(0).expect("delete succeeds")
}

async fn scan_all(
    store: &dyn ResourceStore,
    snapshot: Snapshot,
    type_name: &str,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .scan(snapshot, rt(type_name), ScanOptions::live(after, 7))
            .await
            .expect("scan succeeds");
        out.extend(page.resources.iter().map(|r| (r.id.to_string(), r.version)));
        match page.next {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Versions count from 1, history lists deletions, reads of deleted resources are `Gone`.
pub async fn versions_history_and_deletes(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    let v1 = put(store, r#"{"resourceType":"Patient","id":"p1","active":true}"#).await;
    assert_eq!((v1.version, v1.created), (1, true));
    let v2 = put(store, r#"{"resourceType":"Patient","id":"p1","active":false}"#).await;
    assert_eq!((v2.version, v2.created), (2, false));
    assert!(v2.seq > v1.seq && v2.last_updated >= v1.last_updated);
    let body = String::from_utf8(v2.body.clone().expect("body").to_vec()).expect("utf8");
    assert!(body.contains(r#""meta":{"versionId":"2","lastUpdated":""#), "{body}");

    let current = store.read(rt("Patient"), &id("p1")).await.expect("read");
    assert_eq!((current.version, current.body.clone()), (2, v2.body.clone().expect("body")));
    let first = store.vread(rt("Patient"), &id("p1"), 1).await.expect("vread");
    assert!(String::from_utf8_lossy(&first.body).contains(r#""active":true"#));
    assert!(matches!(
        store.vread(rt("Patient"), &id("p1"), 9).await,
        Err(StoreError::VersionNotFound { .. })
    ));
    assert!(matches!(
        store.read(rt("Patient"), &id("nope")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.read(rt("Observation"), &id("p1")).await,
        Err(StoreError::NotFound { .. })
    ));

    let deleted = delete(store, "Patient", "p1").await;
    assert_eq!(deleted.version, 3);
    assert!(deleted.seq.expect("seq") > v2.seq.expect("seq"));
    assert!(matches!(
        store.read(rt("Patient"), &id("p1")).await,
        Err(StoreError::Gone { version: 3, .. })
    ));
    assert!(matches!(store.vread(rt("Patient"), &id("p1"), 3).await, Err(StoreError::Gone { .. })));
    let again = delete(store, "Patient", "p1").await;
    assert_eq!((again.version, again.seq), (3, None), "deleting twice writes nothing");
    let missing = delete(store, "Patient", "never").await;
    assert_eq!((missing.version, missing.seq), (0, None));

    let history = store.history(rt("Patient"), &id("p1"), 10).await.expect("history");
    let versions: Vec<(u64, bool)> =
        history.iter().map(|h| (h.version, h.body.is_some())).collect();
    assert_eq!(versions, [(3, false), (2, true), (1, true)]);
    assert_eq!(store.history(rt("Patient"), &id("p1"), 1).await.expect("history").len(), 1);
    assert!(matches!(
        store.history(rt("Patient"), &id("never"), 5).await,
        Err(StoreError::NotFound { .. })
    ));

    let revived = put(store, r#"{"resourceType":"Patient","id":"p1"}"#).await;
    assert_eq!((revived.version, revived.created), (4, true), "an update after delete recreates");
}

/// `If-Match` is checked against the current version; create refuses a used id.
pub async fn if_match_and_create_conflicts(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    put(store, r#"{"resourceType":"Patient","id":"p1"}"#).await;
    let update = |if_match| WriteOp::Update {
        resource: resource(r#"{"resourceType":"Patient","id":"p1","gender":"male"}"#),
        id: id("p1"),
        if_match,
    };
    let stale = store.transact(vec![update(Some(7))], Atomicity::AllOrNothing).await;
    assert!(
        matches!(&stale, Err(StoreError::OpFailed { index: 0, source }) if matches!(**source, StoreError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    let fresh = store.transact(vec![update(Some(1))], Atomicity::AllOrNothing).await.expect("ok");
    assert_eq!(fresh[0].as_ref().expect("ok").version, 2);
    let create =
        WriteOp::Create { resource: resource(r#"{"resourceType":"Patient"}"#), id: id("p1") };
    let conflict = store.transact(vec![create], Atomicity::AllOrNothing).await;
    assert!(
        matches!(&conflict, Err(StoreError::OpFailed { source, .. }) if matches!(**source, StoreError::AlreadyExists { .. }))
    );
}

/// A failing op in an all-or-nothing call leaves no version, sequence or compartment row.
pub async fn all_or_nothing_leaves_no_trace(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    put(store, r#"{"resourceType":"Patient","id":"p1"}"#).await;
    let before = store.snapshot().await.expect("snapshot");
    let ops = vec![
        WriteOp::Update {
            resource: resource(
                r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#,
            ),
            id: id("o1"),
            if_match: None,
        },
        WriteOp::Delete { resource_type: rt("Patient"), id: id("p1"), if_match: None },
        WriteOp::Update {
            resource: resource(r#"{"resourceType":"Patient","id":"p2"}"#),
            id: id("p2"),
            if_match: Some(3),
        },
    ];
    let result = store.transact(ops, Atomicity::AllOrNothing).await;
    assert!(matches!(result, Err(StoreError::OpFailed { index: 2, .. })), "{result:?}");
    assert!(matches!(
        store.read(rt("Observation"), &id("o1")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.read(rt("Patient"), &id("p1")).await.expect("p1 survives").version, 1);
    let after = store.snapshot().await.expect("snapshot");
    assert_eq!(after.seq, before.seq, "a rolled-back transaction uses no sequence numbers");
    let compartment = store
        .scan_compartment(after, &id("p1"), rt("Observation"), ScanOptions::live(0, 10))
        .await
        .expect("scan");
    assert!(compartment.resources.is_empty());
}

/// Each-on-its-own commits the good ops and reports the bad ones in place.
pub async fn each_on_its_own_reports_per_op(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    let ops = vec![
        WriteOp::Update {
            resource: resource(r#"{"resourceType":"Patient","id":"a"}"#),
            id: id("a"),
            if_match: None,
        },
        WriteOp::Update {
            resource: resource(r#"{"resourceType":"Patient","id":"b"}"#),
            id: id("b"),
            if_match: Some(5),
        },
        WriteOp::Update {
            resource: resource(r#"{"resourceType":"Patient","id":"c"}"#),
            id: id("c"),
            if_match: None,
        },
    ];
    let results = store.transact(ops, Atomicity::EachOnItsOwn).await.expect("transact");
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(StoreError::PreconditionFailed { .. })));
    let snapshot = store.snapshot().await.expect("snapshot");
    let ids: Vec<String> =
        scan_all(store, snapshot, "Patient").await.into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids, ["a", "c"]);
}

/// A snapshot taken before 1,000 concurrent updates still scans the pre-update versions.
pub async fn snapshot_ignores_1000_concurrent_updates(store: Arc<dyn ResourceStore>) {
    const N: usize = 1000;
    let ops: Vec<WriteOp> = (0..N)
        .map(|i| WriteOp::Update {
            resource: resource(&format!(
                r#"{{"resourceType":"Observation","id":"o{i}","status":"preliminary"}}"#
            )),
            id: id(&format!("o{i}")),
            if_match: None,
        })
        .collect();
    store.transact(ops, Atomicity::AllOrNothing).await.expect("seed");
    let snapshot = store.snapshot().await.expect("snapshot");
    let first_page =
        store.scan(snapshot, rt("Observation"), ScanOptions::live(0, 100)).await.expect("scan");

    let mut writers = Vec::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let body = if i % 10 == 0 {
                None
            } else {
                Some(format!(r#"{{"resourceType":"Observation","id":"o{i}","status":"final"}}"#))
            };
            let op = match body {
                Some(json) => WriteOp::Update {
                    resource: resource(&json),
                    id: id(&format!("o{i}")),
                    if_match: None,
                },
                None => WriteOp::Delete {
                    resource_type: rt("Observation"),
                    id: id(&format!("o{i}")),
                    if_match: None,
                },
            };
            store.transact(vec![op], Atomicity::AllOrNothing).await.expect("concurrent update");
        }));
    }
    // New resources appear too; the snapshot must not see them either.
    put(store.as_ref(), r#"{"resourceType":"Observation","id":"late","status":"final"}"#).await;
    let mut seen = first_page
        .resources
        .iter()
        .map(|r| (r.id.to_string(), r.version, r.body.clone()))
        .collect::<Vec<_>>();
    let mut after = first_page.next.expect("more pages");
    loop {
        let page = store
            .scan(snapshot, rt("Observation"), ScanOptions::live(after, 100))
            .await
            .expect("scan");
        seen.extend(page.resources.iter().map(|r| (r.id.to_string(), r.version, r.body.clone())));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    assert_eq!(seen.len(), N, "every resource exactly once");
    let mut ids: Vec<&str> = seen.iter().map(|(i, _, _)| i.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N);
    for (resource_id, version, body) in &seen {
        assert_eq!(*version, 1, "{resource_id} must be the pre-update version");
        assert!(String::from_utf8_lossy(body).contains("preliminary"));
    }
    // And after the writers, the same snapshot still gives the same answer.
    let again = scan_all(store.as_ref(), snapshot, "Observation").await;
    assert_eq!(again.len(), N);
    assert!(again.iter().all(|(_, v)| *v == 1));
    let now = store.snapshot().await.expect("snapshot");
    let current = scan_all(store.as_ref(), now, "Observation").await;
    assert_eq!(current.len(), N - N / 10 + 1, "deleted ones gone, late one present");
    assert!(current.iter().all(|(i, v)| *v == 2 || i == "late"));
}

/// Paging by cursor returns every resource once, in ascending seq.
pub async fn scan_pages_return_each_resource_once(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    for i in 0..50 {
        put(store, &format!(r#"{{"resourceType":"Condition","id":"c{i}"}}"#)).await;
        if i % 3 == 0 {
            put(store, &format!(r#"{{"resourceType":"Encounter","id":"e{i}"}}"#)).await;
        }
    }
    for i in (0..50).step_by(5) {
        put(store, &format!(r#"{{"resourceType":"Condition","id":"c{i}","onsetString":"x"}}"#))
            .await;
    }
    let snapshot = store.snapshot().await.expect("snapshot");
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page =
            store.scan(snapshot, rt("Condition"), ScanOptions::live(after, 6)).await.expect("scan");
        assert!(page.resources.len() <= 6);
        seqs.extend(page.resources.iter().map(|r| r.seq));
        assert!(page.resources.iter().all(|r| r.resource_type == rt("Condition")));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seqs.len(), 50);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ascending seq");
    assert_eq!(scan_all(store, snapshot, "Encounter").await.len(), 17);
    assert!(scan_all(store, snapshot, "Account").await.is_empty());
}

/// Writes before a snapshot are at or before its time; writes after are strictly after.
pub async fn snapshot_time_separates_writes(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    let before = put(store, r#"{"resourceType":"Patient","id":"a"}"#).await;
    let snapshot = store.snapshot().await.expect("snapshot");
    let after = put(store, r#"{"resourceType":"Patient","id":"b"}"#).await;
    assert!(before.seq.expect("seq") <= snapshot.seq);
    assert!(before.last_updated.expect("time") <= snapshot.time);
    assert!(after.seq.expect("seq") > snapshot.seq);
    assert!(after.last_updated.expect("time") > snapshot.time);
    let later = store.snapshot().await.expect("snapshot");
    assert!(
        later.seq >= after.seq.expect("seq") && later.time >= after.last_updated.expect("time")
    );
}

/// Compartment membership is per version: moving a resource to another patient moves it.
pub async fn compartment_follows_versions(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    put(store, r#"{"resourceType":"Patient","id":"p1"}"#).await;
    put(store, r#"{"resourceType":"Patient","id":"p2"}"#).await;
    put(store, r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#)
        .await;
    put(store, r#"{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}]}"#).await;
    put(store, r#"{"resourceType":"Organization","id":"org","partOf":{"reference":"Patient/p1"}}"#)
        .await;
    let first = store.snapshot().await.expect("snapshot");
    put(store, r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#)
        .await;
    delete(store, "Observation", "o2").await;
    let second = store.snapshot().await.expect("snapshot");

    let members = |snapshot, patient: &'static str, type_name: &'static str| async move {
        let page = store
            .scan_compartment(snapshot, &id(patient), rt(type_name), ScanOptions::live(0, 100))
            .await
            .expect("compartment scan");
        page.resources.iter().map(|r| r.id.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(members(first, "p1", "Observation").await, ["o1", "o2"]);
    assert_eq!(members(first, "p2", "Observation").await, ["o2"]);
    assert_eq!(members(first, "p1", "Patient").await, ["p1"]);
    assert!(members(first, "p1", "Organization").await.is_empty());
    assert!(members(second, "p1", "Observation").await.is_empty());
    assert_eq!(members(second, "p2", "Observation").await, ["o1"]);
}

/// `scan_compartments` reads several members' compartments in one call: one page per member
/// in the order given, sharing the page budget, and a batch resumed inside a member (its page
/// cut short) then continues with the next members from the restart cursor; walked that way,
/// every member's compartment comes back exactly once, equal to `scan_compartment`.
pub async fn compartment_batches_share_a_budget(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    let patients: Vec<String> = (0..6).map(|p| format!("p{p}")).collect();
    for (p, patient) in patients.iter().enumerate() {
        put(store, &format!(r#"{{"resourceType":"Patient","id":"{patient}"}}"#)).await;
        // p0 has none, p1 one, ..., p5 five Observations.
        for o in 0..p {
            put(store, &format!(r#"{{"resourceType":"Observation","id":"{patient}-o{o}","subject":{{"reference":"Patient/{patient}"}}}}"#)).await;
        }
    }
    // Replaced and deleted versions among p4's entries: a page the budget cuts short must
    // neither return them nor lose what follows them.
    for status in ["amended", "final"] {
        put(store, &format!(r#"{{"resourceType":"Observation","id":"p4-o0","status":"{status}","subject":{{"reference":"Patient/p4"}}}}"#)).await;
    }
    delete(store, "Observation", "p4-o1").await;
    // Written after the snapshot: never returned.
    let snapshot = store.snapshot().await.expect("snapshot");
    put(
        store,
        r#"{"resourceType":"Observation","id":"late","subject":{"reference":"Patient/p3"}}"#,
    )
    .await;
    let ids: Vec<ResourceId> = patients.iter().map(|p| id(p)).collect();
    let single = |patient: ResourceId| async move {
        store
            .scan_compartment(snapshot, &patient, rt("Observation"), ScanOptions::live(0, 100))
            .await
            .expect("compartment scan")
            .resources
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>()
    };

    let all = store
        .scan_compartments(snapshot, &ids, rt("Observation"), ScanOptions::live(0, 100), 0)
        .await
        .expect("batch");
    assert_eq!(all.len(), 6, "a large budget covers every member");
    for (page, patient) in all.iter().zip(&ids) {
        let got: Vec<String> = page.resources.iter().map(|r| r.id.to_string()).collect();
        assert_eq!(got, single(patient.clone()).await, "{patient}");
        assert!(page.next.is_none());
    }

    for budget in 1..=7 {
        let mut seen: Vec<Vec<String>> = vec![Vec::new(); ids.len()];
        let (mut first, mut after, mut calls) = (0usize, 0u64, 0);
        while first < ids.len() {
            calls += 1;
            assert!(calls < 100, "budget {budget}: no progress");
            let pages = store
                .scan_compartments(
                    snapshot,
                    &ids[first..],
                    rt("Observation"),
                    ScanOptions::live(after, budget),
                    0,
                )
                .await
                .expect("batch");
            assert!(!pages.is_empty(), "a batch covers at least one member");
            let total: usize = pages.iter().map(|p| p.resources.len()).sum();
            assert!(total <= budget, "budget {budget}: {total} resources in one call");
            for (offset, page) in pages.iter().enumerate() {
                seen[first + offset].extend(page.resources.iter().map(|r| r.id.to_string()));
            }
            let last = first + pages.len() - 1;
            match pages.last().and_then(|p| p.next) {
                Some(next) => (first, after) = (last, next),
                None => (first, after) = (last + 1, 0),
            }
        }
        for (patient, got) in ids.iter().zip(&seen) {
            assert_eq!(*got, single(patient.clone()).await, "budget {budget}, {patient}");
        }
    }
}

/// Deletion scans, compartment-only scans, point reads as of a snapshot, and `seq_at`.
pub async fn deletions_times_and_point_reads_as_of_a_snapshot(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    put(store, r#"{"resourceType":"Patient","id":"p1"}"#).await;
    let o1 = put(
        store,
        r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#,
    )
    .await;
    put(store, r#"{"resourceType":"Observation","id":"o2"}"#).await;
    let before = store.snapshot().await.expect("snapshot");
    let since = store.seq_at(before.time).await.expect("seq_at");
    assert_eq!(since, before.seq, "seq_at(snapshot time) is the snapshot's seq");
    assert_eq!(store.seq_at(Instant::from_micros(0)).await.expect("seq_at"), 0);
    assert_eq!(
        store.seq_at(o1.last_updated.expect("time")).await.expect("seq_at"),
        o1.seq.expect("seq")
    );

    delete(store, "Observation", "o1").await;
    put(store, r#"{"resourceType":"Observation","id":"o2","status":"final"}"#).await;
    delete(store, "Observation", "o3-never").await;
    let after = store.snapshot().await.expect("snapshot");

    let deleted = |snapshot, after_seq| async move {
        let options =
            ScanOptions { deleted: true, with_patients: true, ..ScanOptions::live(after_seq, 10) };
        store.scan(snapshot, rt("Observation"), options).await.expect("scan")
    };
    let page = deleted(after, since).await;
    let tombstones: Vec<(String, Option<Box<str>>)> =
        page.resources.iter().map(|r| (r.id.to_string(), r.patients.clone())).collect();
    assert_eq!(
        tombstones,
        [("o1".to_owned(), Some("p1".into()))],
        "a tombstone keeps its compartment"
    );
    assert!(
        deleted(before, 0).await.resources.is_empty(),
        "no deletion as of the earlier snapshot"
    );
    let deleted_in_compartment = store
        .scan_compartment(
            after,
            &id("p1"),
            rt("Observation"),
            ScanOptions { deleted: true, ..ScanOptions::live(0, 10) },
        )
        .await
        .expect("scan");
    assert_eq!(deleted_in_compartment.resources.len(), 1);

    let changed =
        store.scan(after, rt("Observation"), ScanOptions::live(since, 10)).await.expect("scan");
    assert_eq!(changed.resources.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(), ["o2"]);
    let in_compartment = store
        .scan(
            before,
            rt("Observation"),
            ScanOptions { in_any_compartment: true, ..ScanOptions::live(0, 10) },
        )
        .await
        .expect("scan");
    assert_eq!(
        in_compartment.resources.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(),
        ["o1"]
    );

    let (low, high) =
        store.seq_bounds(after, rt("Observation")).await.expect("bounds").expect("some");
    assert_eq!(low, o1.seq.expect("seq"));
    assert_eq!(high, after.seq, "the last write was an Observation");
    assert!(store.seq_bounds(after, rt("Account")).await.expect("bounds").is_none());
    // Versions of every kind count: o1 and its tombstone, o2 and its update.
    let count = |snapshot, after_seq, at_most| async move {
        store.count_versions(snapshot, rt("Observation"), after_seq, at_most).await.expect("count")
    };
    assert_eq!(count(after, 0, 100).await, 4);
    assert_eq!(count(after, 0, 3).await, 3, "counting stops at at_most");
    assert_eq!(count(before, 0, 100).await, 2, "as of the snapshot");
    assert_eq!(count(after, since, 100).await, 2, "after after_seq");
    assert_eq!(store.count_versions(after, rt("Account"), 0, 100).await.expect("count"), 0);
    let ranged = ScanOptions { before_seq: o1.seq.expect("seq") + 1, ..ScanOptions::live(0, 10) };
    let first_only = store.scan(before, rt("Observation"), ranged).await.expect("scan");
    assert_eq!(first_only.resources.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(), ["o1"]);
    let ids = [id("o1"), id("o2"), id("nope")];
    let mut old = store.read_many_at(before, rt("Observation"), &ids).await.expect("read");
    old.sort_by_key(|r| r.id.to_string());
    assert_eq!(
        old.iter().map(|r| (r.id.to_string(), r.version)).collect::<Vec<_>>(),
        [("o1".into(), 1), ("o2".into(), 1)]
    );
    let now = store.read_many_at(after, rt("Observation"), &ids).await.expect("read");
    assert_eq!(
        now.iter().map(|r| (r.id.to_string(), r.version)).collect::<Vec<_>>(),
        [("o2".into(), 2)]
    );
}

fn new_job(units: usize) -> NewJob {
    NewJob {
        id: JobId::new(),
        requester: Some("client-a".into()),
        request: "{}".into(),
        plan: "{}".into(),
        units: (0..units).map(|i| format!("{{\"unit\":{i}}}")).collect(),
        request_time: Instant::now(),
        snapshot: Snapshot { seq: 7, time: Instant::now() },
    }
}

/// One runner at a time; a lost lease fences every write; an expired lease can be taken over.
pub async fn leases_are_exclusive_and_fence_writes(jobs: Arc<dyn JobStore>) {
    let jobs = jobs.as_ref();
    let job = new_job(2);
    let job_id = job.id.clone();
    jobs.create(job, 10).await.expect("create");
    let lease = Duration::from_secs(30);
    let t0 = Instant::now();
    let claimed =
        jobs.claim("node-a/1", "node-a/", lease, t0).await.expect("claim").expect("a job");
    assert_eq!((claimed.id.clone(), claimed.status), (job_id.clone(), JobStatus::InProgress));
    assert_eq!(claimed.taken_over_from, None, "nobody held it");
    assert!(jobs.claim("node-b/1", "node-b/", lease, t0).await.expect("claim").is_none(), "leased");
    assert!(jobs.lease_unit(&job_id, 0, "node-a/1", "node-a/", lease, t0).await.expect("lease"));
    jobs.checkpoint(&job_id, "node-a/1", 0, "{\"c\":1}", false).await.expect("holder may write");
    assert!(matches!(
        jobs.checkpoint(&job_id, "node-b/1", 0, "{}", true).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        jobs.renew(&job_id, "node-b/1", lease, t0).await,
        Err(StoreError::LeaseLost { .. })
    ));

    // The same node restarted (new boot id) takes its job back at once.
    let reclaimed =
        jobs.claim("node-a/2", "node-a/", lease, t0).await.expect("claim").expect("reclaimed");
    assert_eq!(reclaimed.id, job_id);
    assert_eq!(reclaimed.taken_over_from.as_deref(), Some("node-a/1"));
    assert!(matches!(
        jobs.set_progress(&job_id, "node-a/1", 5, "x").await,
        Err(StoreError::LeaseLost { .. })
    ));

    // Another node after expiry.
    let later = Instant::from_micros(t0.as_micros() + 31_000_000);
    let taken = jobs
        .claim("node-b/1", "node-b/", lease, later)
        .await
        .expect("claim")
        .expect("expired lease");
    assert_eq!(taken.id, job_id);
    assert_eq!(taken.taken_over_from.as_deref(), Some("node-a/2"));
    let counts = jobs.count_by_status().await.expect("count");
    assert_eq!(counts, vec![(JobStatus::InProgress, 1)]);
    assert_eq!(jobs.get(&job_id).await.expect("get").taken_over_from, None, "only claims say");
    assert!(matches!(
        jobs.checkpoint(&job_id, "node-a/2", 1, "{}", true).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let units = jobs.units(&job_id).await.expect("units");
    assert_eq!(units.len(), 2);
    assert_eq!((units[0].checkpoint.as_deref(), units[0].done), (Some("{\"c\":1}"), false));
    jobs.set_progress(&job_id, "node-b/1", 50, "half").await.expect("progress");
    let expires = Instant::from_micros(later.as_micros() + 1_000);
    jobs.complete(&job_id, "node-b/1", "{\"m\":1}", later, expires).await.expect("complete");
    let done = jobs.get(&job_id).await.expect("get");
    assert_eq!(
        (done.status, done.manifest.as_deref(), done.lease_owner),
        (JobStatus::Completed, Some("{\"m\":1}"), None)
    );
    assert!(matches!(
        jobs.fail(&job_id, "node-b/1", "x", later).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(
        jobs.claim("node-c/1", "node-c/", lease, later).await.expect("claim").is_none(),
        "finished jobs stay finished"
    );
}

/// Units of one job are leased one runner at a time, on any node; a unit's checkpoints are
/// fenced by its lease; an expired or dead node's unit lease is taken over; nothing is leased
/// once the job is cancelled.
pub async fn unit_leases_are_exclusive_and_fence_checkpoints(jobs: Arc<dyn JobStore>) {
    let jobs = jobs.as_ref();
    let job = new_job(3);
    let job_id = job.id.clone();
    jobs.create(job, 10).await.expect("create");
    let lease = Duration::from_secs(30);
    let t0 = Instant::now();
    assert!(
        !jobs.lease_unit(&job_id, 0, "a/1", "a/", lease, t0).await.expect("lease"),
        "an accepted job's units wait for its coordinator"
    );
    jobs.claim("a/1", "a/", lease, t0).await.expect("claim").expect("a job");
    assert!(jobs.lease_unit(&job_id, 0, "a/1", "a/", lease, t0).await.expect("lease"));
    assert!(jobs.lease_unit(&job_id, 1, "b/1", "b/", lease, t0).await.expect("lease"));
    assert!(!jobs.lease_unit(&job_id, 1, "a/1", "a/", lease, t0).await.expect("lease"), "b's");
    assert!(!jobs.lease_unit(&job_id, 0, "b/1", "b/", lease, t0).await.expect("lease"), "a's");
    assert!(jobs.lease_unit(&job_id, 0, "a/1", "a/", lease, t0).await.expect("lease"), "again");
    // Each unit's checkpoints come from its holder only.
    jobs.checkpoint(&job_id, "b/1", 1, "{\"b\":1}", false).await.expect("holder writes");
    assert!(matches!(
        jobs.checkpoint(&job_id, "a/1", 1, "{}", true).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        jobs.checkpoint(&job_id, "a/1", 2, "{}", true).await,
        Err(StoreError::LeaseLost { .. }),
    ));
    jobs.renew_unit(&job_id, 1, "b/1", lease, t0).await.expect("renew");
    assert!(matches!(
        jobs.renew_unit(&job_id, 1, "a/1", lease, t0).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // Node b restarted: its new run takes its unit back at once; the old run is fenced.
    assert!(jobs.lease_unit(&job_id, 1, "b/2", "b/", lease, t0).await.expect("lease"));
    assert!(matches!(
        jobs.checkpoint(&job_id, "b/1", 1, "{}", true).await,
        Err(StoreError::LeaseLost { .. })
    ));
    // b/2 dies; after its lease expires, a takes the unit over and finishes it.
    let later = Instant::from_micros(t0.as_micros() + 31_000_000);
    assert!(!jobs.lease_unit(&job_id, 1, "a/1", "a/", lease, t0).await.expect("lease"));
    assert!(jobs.lease_unit(&job_id, 1, "a/1", "a/", lease, later).await.expect("lease"));
    jobs.checkpoint(&job_id, "a/1", 1, "{\"b\":2}", true).await.expect("finish");
    assert!(
        !jobs.lease_unit(&job_id, 1, "c/1", "c/", lease, later).await.expect("lease"),
        "a done unit is never leased again"
    );
    // Released units are free at once.
    jobs.release_unit(&job_id, 0, "a/1").await.expect("release");
    assert!(jobs.lease_unit(&job_id, 0, "c/1", "c/", lease, t0).await.expect("lease"));
    let units = jobs.units(&job_id).await.expect("units");
    let view: Vec<_> = units
        .iter()
        .map(|u| (u.index, u.done, u.checkpoint.as_deref(), u.lease_owner.as_deref()))
        .collect();
    assert_eq!(
        view,
        [
            (0, false, None, Some("c/1")),
            (1, true, Some("{\"b\":2}"), Some("a/1")),
            (2, false, None, None),
        ]
    );
    assert_eq!(units[0].lease_expires.map(|t| t.as_micros()), Some(t0.as_micros() + 30_000_000));
    // Cancelled: nothing is leased, renewed or checkpointed any more.
    jobs.cancel(&job_id, later).await.expect("cancel");
    assert!(!jobs.lease_unit(&job_id, 2, "c/1", "c/", lease, later).await.expect("lease"));
    assert!(matches!(
        jobs.renew_unit(&job_id, 0, "c/1", lease, later).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        jobs.checkpoint(&job_id, "c/1", 0, "{}", true).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

/// The queue limit, cancellation, and which files the sweeper deletes.
pub async fn queue_limit_cancel_and_cleanup(jobs: Arc<dyn JobStore>) {
    let jobs = jobs.as_ref();
    let (a, b) = (new_job(1), new_job(1));
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    jobs.create(a, 2).await.expect("create");
    jobs.create(b, 2).await.expect("create");
    assert!(matches!(
        jobs.create(new_job(1), 2).await,
        Err(StoreError::TooManyJobs { active: 2, limit: 2 })
    ));
    let now = Instant::now();
    let claimed =
        jobs.claim("n/1", "n/", Duration::from_secs(30), now).await.expect("claim").expect("job");
    assert_eq!(claimed.id, a_id, "oldest first");
    assert!(
        jobs.lease_unit(&a_id, 0, "n/1", "n/", Duration::from_secs(30), now).await.expect("lease")
    );
    let cancelled = jobs.cancel(&a_id, now).await.expect("cancel");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(matches!(
        jobs.checkpoint(&a_id, "n/1", 0, "{}", true).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(jobs.cancel(&a_id, now).await, Err(StoreError::JobNotFound { .. })), "twice");
    assert!(matches!(jobs.get(&JobId::new()).await, Err(StoreError::JobNotFound { .. })));
    jobs.create(new_job(1), 2).await.expect("cancelling freed a place");
    assert_eq!(jobs.files_to_delete(now, 10).await.expect("list"), std::slice::from_ref(&a_id));
    jobs.mark_files_deleted(&a_id).await.expect("mark");
    assert!(jobs.files_to_delete(now, 10).await.expect("list").is_empty());
    let found = jobs
        .search(&JobQuery { status: Some(JobStatus::Accepted), requester: None, limit: 10 })
        .await
        .expect("search");
    assert_eq!(found.len(), 2);
    assert!(found.iter().any(|j| j.id == b_id));
    let mine = jobs
        .search(&JobQuery { status: None, requester: Some("nobody".into()), limit: 10 })
        .await
        .expect("search");
    assert!(mine.is_empty());

    // Manifest pages freeze once.
    assert!(jobs.manifest_pages(&b_id).await.expect("pages").is_empty());
    let pages = jobs.freeze_manifest_page(&b_id, 1, "first").await.expect("freeze");
    assert_eq!(pages, ["first"]);
    let pages = jobs.freeze_manifest_page(&b_id, 1, "again").await.expect("freeze");
    assert_eq!(pages, ["first"], "a frozen page never changes");
    let pages = jobs.freeze_manifest_page(&b_id, 2, "second").await.expect("freeze");
    assert_eq!(pages, ["first", "second"]);
}
