use std::fmt::Debug;

use async_trait::async_trait;
use bulkfhir_model::{ResourceId, ResourceType};

use bulkfhir_model::Instant;

use crate::{
    Atomicity, HistoryEntry, ScanOptions, ScanPage, Snapshot, StoreError, StoredResource, WriteOp,
    WriteOutcome,
};

/// A versioned FHIR resource store, designed for export.
///
/// # Contract
/// - **Versions.** Every successful create, update or delete writes a new version row with the
///   next version number of that resource (from 1) and the next value of one store-wide,
///   strictly increasing sequence number (`seq`). The store stamps `meta.versionId` and
///   `meta.lastUpdated` into the stored body; bodies are kept byte for byte as stamped.
/// - **Time.** `lastUpdated` never decreases as `seq` grows; all writes of one `transact` call
///   share one `lastUpdated`.
/// - **Deletes** are tombstone versions with their own `seq` and time; history keeps them.
/// - **Snapshots.** [`snapshot`](Self::snapshot) returns the highest committed `seq` and an
///   instant with every included write at or before it and every later write strictly after it.
///   Reads "as of" a snapshot see, per resource, the newest version with `seq <= snapshot.seq`,
///   unaffected by later writes, on any connection or process, and after a restart.
/// - **Scans** return resources in ascending `seq` (a stable key order: a version's `seq` never
///   changes). A page's `next` cursor resumes the scan exactly after its last resource, so a scan
///   resumed from a cursor, even after a restart, returns each resource once.
/// - **Atomicity.** [`transact`](Self::transact) with [`Atomicity::AllOrNothing`] commits all ops
///   or none; with [`Atomicity::EachOnItsOwn`] each op commits or fails alone.
/// - **Errors.** `NotFound` (never existed), `Gone` (deleted), `VersionNotFound`,
///   `AlreadyExists`, `PreconditionFailed`, `Invalid`; `Backend`/`Unavailable` mean nothing was
///   written.
/// - **Cancel safety.** Dropping a returned future never leaves a partial write behind: a write
///   either commits whole or not at all.
#[async_trait]
pub trait ResourceStore: Send + Sync + Debug {
    /// Applies `ops` in order. With `AllOrNothing`, the first failing op aborts the call with
    /// `StoreError::OpFailed { index, .. }` and nothing is written. With `EachOnItsOwn`, the
    /// result holds one outcome per op. An outer `Err` otherwise means nothing was written.
    async fn transact(
        &self,
        ops: Vec<WriteOp>,
        atomicity: Atomicity,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;

    /// The current version of a resource (`NotFound`, or `Gone` when deleted).
    async fn read(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<StoredResource, StoreError>;

    /// A specific version (`VersionNotFound`, or `Gone` when that version is a deletion).
    async fn vread(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        version: u64,
    ) -> Result<StoredResource, StoreError>;

    /// Up to `limit` versions of a resource, newest first (`NotFound` if it never existed).
    async fn history(
        &self,
        resource_type: ResourceType,
        id: &ResourceId,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Takes a snapshot: see the trait docs.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Up to `options.limit` resources of `resource_type` as of `snapshot` with
    /// `seq > options.after_seq`, in ascending `seq`: live resources, or with `options.deleted`
    /// the deletions in force at the snapshot (their `body` is empty).
    async fn scan(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError>;

    /// Like [`scan`](Self::scan), limited to the Patient compartment of `patient`: the resources
    /// whose version as of `snapshot` references that patient at a compartment path (and the
    /// Patient itself). `options.in_any_compartment` is implied.
    async fn scan_compartment(
        &self,
        snapshot: Snapshot,
        patient: &ResourceId,
        resource_type: ResourceType,
        options: ScanOptions,
    ) -> Result<ScanPage, StoreError>;

    /// [`scan_compartment`](Self::scan_compartment) for several patients in one call, for
    /// exports of many members: one page per patient, in the order given, the first starting
    /// after `options.after_seq` and the others after `restart_after`. The pages share the
    /// budget `options.limit`: the call stops after the patient whose page reaches it (that
    /// page's `next` then says where that patient continues) or after the last patient, so it
    /// covers at least one patient and may cover fewer than asked.
    async fn scan_compartments(
        &self,
        snapshot: Snapshot,
        patients: &[ResourceId],
        resource_type: ResourceType,
        options: ScanOptions,
        restart_after: u64,
    ) -> Result<Vec<ScanPage>, StoreError>;

    /// The versions of the given resources live as of `snapshot` (missing and deleted ones are
    /// left out), in no particular order, with [`StoredResource::patients`] filled.
    async fn read_many_at(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        ids: &[ResourceId],
    ) -> Result<Vec<StoredResource>, StoreError>;

    /// The lowest and highest `seq` of any version of `resource_type` at or below the snapshot
    /// (`None` when the type has none): the key range a scan of the type covers.
    async fn seq_bounds(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
    ) -> Result<Option<(u64, u64)>, StoreError>;

    /// How many versions of `resource_type` (live, replaced or deleted, in a compartment or
    /// not) have a `seq` after `after_seq` and at or below the snapshot, counting no further
    /// than `at_most`: the rows a scan of that key range would look at. Answered from the key
    /// index, without reading a resource, so a kick-off can size a type cheaply.
    async fn count_versions(
        &self,
        snapshot: Snapshot,
        resource_type: ResourceType,
        after_seq: u64,
        at_most: u64,
    ) -> Result<u64, StoreError>;

    /// The highest `seq` whose `lastUpdated` is at or before `time` (0 when none): the cursor
    /// from which a scan returns exactly the changes made after `time`.
    async fn seq_at(&self, time: Instant) -> Result<u64, StoreError>;

    /// Asks for bulk mode: writes tuned for a load into an empty store, until
    /// [`end_bulk_load`](Self::end_bulk_load). Only a caller that is the store's one user for
    /// that whole time may ask (reads by id may be slow, and writes from other processes are
    /// refused, until it ends). Returns whether the store switched; a store that holds data, or
    /// a backend without such a mode, says no and writes as always. The contract of every
    /// method is unchanged in bulk mode.
    async fn begin_bulk_load(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Leaves bulk mode (building what it deferred); nothing when not in it.
    async fn end_bulk_load(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
