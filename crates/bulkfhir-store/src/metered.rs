//! [`MeteredStore`]: a [`ResourceStore`] that records the latency of every call of the store it
//! wraps, as the histogram `bulkfhir_store_operation_duration_seconds{operation, outcome}`.
//!
//! A decorator in the manner of object_store's wrapper stores: any backend gets the same
//! metrics, and no backend names the metrics crate. Export scans are recorded per page.

use std::{sync::Arc, time::Instant as Clock};

use async_trait::async_trait;
use bulkfhir_model::{Instant, ResourceId, ResourceType};

use crate::{
    Atomicity, HistoryEntry, ResourceStore, ScanOptions, ScanPage, Snapshot, StoreError,
    StoredResource, WriteOp, WriteOutcome,
};

/// The histogram every call is recorded in.
pub const STORE_OPERATION_SECONDS: &str = "bulkfhir_store_operation_duration_seconds";

/// Wraps a store and times its calls.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ResourceStore>,
}

impl MeteredStore {
    /// Times the calls of `inner`.
    pub fn new(inner: Arc<dyn ResourceStore>) -> Self {
        MeteredStore { inner }
    }
}

fn record<T>(operation: &'static str, started: Clock, result: &Result<T, StoreError>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!(STORE_OPERATION_SECONDS, "operation" => operation, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

#[async_trait]
impl ResourceStore for MeteredStore {
    async fn transact(
        &self,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let started = Clock::now();
        let result = self.inner.transact(ops, atomicity).await;
        record("transact", started, &result);
        result
    }

    async fn read(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredResource, StoreError> {
        let started = Clock::now();
        let result = self.inner.read(resource_type, id).await;
        record("read", started, &result);
        result
    }

    async fn vread(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        version: u64,
    ) -> Result<StoredResource, StoreError> {
        let started = Clock::now();
        let result = self.inner.vread(resource_type, id, version).await;
        record("vread", started, &result);
        result
    }

    async fn history(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let started = Clock::now();
        let result = self.inner.history(resource_type, id, limit).await;
        record("history", started, &result);
        result
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let started = Clock::now();
        let result = self.inner.snapshot().await;
        record("snapshot", started, &result);
        result
    }

    async fn scan(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError> {
        let started = Clock::now();
        let result = self.inner.scan(snapshot, resource_type, options).await;
        record("scan", started, &result);
        result
    }

    async fn scan_compartment(
        &self,
        snapshot: Snapshot,
        patient: &ResourceId,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError> {
        let started = Clock::now();
        let result = self.inner.scan_compartment(snapshot, patient, resource_type, options).await;
        record("scan_compartment", started, &result);
        result
    }

    async fn scan_compartments(
        &self,
        snapshot: Snapshot,
        patients: &[ResourceId],
        resource_type: ResourceType,
        options: ScanOptions,
        restart_after: u64,
    ) -> Result<Vec<ScanPage>, StoreError> {
        let started = Clock::now();
        let result = self
            .inner
            .scan_compartments(snapshot, patients, resource_type, options, restart_after)
            .await;
        record("scan_compartments", started, &result);
        result
    }

    async fn read_many_at(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        ids: &[ResourceId],
    ) -> Result<Vec<StoredResource>, StoreError> {
        let started = Clock::now();
        let result = self.inner.read_many_at(snapshot, resource_type, ids).await;
        record("read_many_at", started, &result);
        result
    }

    async fn seq_bounds(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let started = Clock::now();
        let result = self.inner.seq_bounds(snapshot, resource_type).await;
        record("seq_bounds", started, &result);
        result
    }

    async fn count_versions(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        after_seq: u64,
        at_most: u64,
    ) -> Result<u64, StoreError> {
        let started = Clock::now();
        let result = self.inner.count_versions(snapshot, resource_type, after_seq, at_most).await;
        record("count_versions", started, &result);
        result
    }

    async fn seq_at(&self, time: Instant) -> Result<u64, StoreError> {
        let started = Clock::now();
        let result = self.inner.seq_at(time).await;
        record("seq_at", started, &result);
        result
    }

    async fn begin_bulk_load(&self) -> Result<bool, StoreError> {
        self.inner.begin_bulk_load().await
    }

    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        self.inner.end_bulk_load().await
    }
}
