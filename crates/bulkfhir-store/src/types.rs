use bulkfhir_model::{Instant, PreparedResource, ResourceId, ResourceType};
use bytes::Bytes;

/// One write in a [`ResourceStore::transact`](crate::ResourceStore::transact) call.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a new resource under `id`; fails with `AlreadyExists` if the id was ever used.
    Create {
        /// The resource; its own id, if any, is ignored in favour of `id`.
        resource: PreparedResource,
        /// The id to store it under (server-assigned for FHIR create).
        id: ResourceId,
    },
    /// Store a new version under `id`, creating the resource if it does not exist (upsert). A
    /// deleted resource is brought back with the next version number.
    Update {
        /// The resource.
        resource: PreparedResource,
        /// The id from the URL.
        id: ResourceId,
        /// `If-Match`: the update applies only if this is the current, undeleted version.
        if_match: Option<u64>,
    },
    /// Delete the resource: a tombstone version with its own sequence number and time. Deleting
    /// a missing or already-deleted resource succeeds and writes nothing.
    Delete {
        /// The type.
        resource_type: ResourceType,
        /// The id.
        id: ResourceId,
        /// `If-Match`, as for update.
        if_match: Option<u64>,
    },
}

/// How a batch of writes commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomicity {
    /// All succeed and commit together, or none has any effect (FHIR transaction).
    AllOrNothing,
    /// Each op succeeds or fails alone (FHIR batch, bulk load).
    EachOnItsOwn,
}

/// The result of one successful write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The type written.
    pub resource_type: ResourceType,
    /// The id written.
    pub id: ResourceId,
    /// The version now current (for a no-op delete: the last version, or 0 if none existed).
    pub version: u64,
    /// The write's time (`meta.lastUpdated`), or `None` when nothing was written.
    pub last_updated: Option<Instant>,
    /// The write's global sequence number, or `None` when nothing was written.
    pub seq: Option<u64>,
    /// True when this write created the resource (version 1, or a create).
    pub created: bool,
    /// The stored body (None for deletes).
    pub body: Option<Bytes>,
}

/// A stored version of a resource.
#[derive(Debug, Clone)]
pub struct StoredResource {
    /// The type.
    pub resource_type: ResourceType,
    /// The id.
    pub id: ResourceId,
    /// The version number, from 1.
    pub version: u64,
    /// The global sequence number of this version.
    pub seq: u64,
    /// `meta.lastUpdated` of this version.
    pub last_updated: Instant,
    /// The exact stored JSON, minified, with `meta` stamped (empty for a deletion).
    pub body: Bytes,
    /// The patients whose compartment holds this version, space-separated, when the scan asked
    /// for them ([`ScanOptions::with_patients`]) and there are any.
    pub patients: Option<Box<str>>,
}

/// One entry of an instance history: a version or a deletion.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The version number.
    pub version: u64,
    /// When it was written.
    pub last_updated: Instant,
    /// The body, or `None` when this version is a deletion.
    pub body: Option<Bytes>,
}

/// A consistent point in the store's history.
///
/// Every write has a global sequence number; a snapshot is the highest one committed when it was
/// taken, and its `time` is an instant no earlier than any write it includes and strictly earlier
/// than every write it excludes. Reading "as of" a snapshot gives, for every resource, the
/// version with the greatest sequence number not above `seq` — whatever writers do afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The highest sequence number included.
    pub seq: u64,
    /// The snapshot's instant (an export's `transactionTime`).
    pub time: Instant,
}

/// What a scan returns, beyond the snapshot and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Only versions with `seq > after_seq` (the cursor; `0` to start, or the `seq` of `_since`).
    pub after_seq: u64,
    /// The most resources in one page.
    pub limit: usize,
    /// Deletions (tombstones still in force at the snapshot) instead of live resources.
    pub deleted: bool,
    /// Only resources in at least one Patient compartment.
    pub in_any_compartment: bool,
    /// Fill [`StoredResource::patients`].
    pub with_patients: bool,
    /// Only versions with `seq < before_seq` (`u64::MAX`: no bound), so that one type can be
    /// read as several disjoint key ranges at once.
    pub before_seq: u64,
}

impl ScanOptions {
    /// Live resources after `after_seq`, `limit` per page.
    pub fn live(after_seq: u64, limit: usize) -> Self {
        ScanOptions {
            after_seq,
            limit,
            deleted: false,
            in_any_compartment: false,
            with_patients: false,
            before_seq: u64::MAX,
        }
    }
}

/// One page of a scan in sequence order.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// The resources, in ascending `seq` order.
    pub resources: Vec<StoredResource>,
    /// The cursor to pass as `after_seq` for the next page, or `None` when the scan is complete.
    pub next: Option<u64>,
}

impl ScanPage {
    /// A page of `limit` at most from rows read in order: each resource with the range of its
    /// body in `bodies`, one buffer for the whole page that every resource slices (one
    /// allocation per page, not per row). The page is full, and has a `next` cursor, when it
    /// holds `limit` resources.
    pub fn assemble(
        rows: Vec<(StoredResource, std::ops::Range<usize>)>,
        bodies: Vec<u8>,
        limit: usize,
    ) -> ScanPage {
        let bodies = Bytes::from(bodies);
        let resources: Vec<StoredResource> = rows
            .into_iter()
            .map(|(mut stored, range)| {
                stored.body = bodies.slice(range);
                stored
            })
            .collect();
        let next = if resources.len() >= limit { resources.last().map(|r| r.seq) } else { None };
        ScanPage { resources, next }
    }
}

/// `If-Match` for a write: passes when no version was asked for, or when the resource's current
/// version (`current`: its number and whether it is a deletion) is that version and not a
/// deletion; `PreconditionFailed` naming the current version otherwise.
pub fn check_if_match(
    resource_type: ResourceType,
    id: &ResourceId,
    current: Option<(u64, bool)>,
    if_match: Option<u64>,
) -> Result<(), crate::StoreError> {
    let Some(expected) = if_match else { return Ok(()) };
    match current {
        Some((version, false)) if version == expected => Ok(()),
        other => Err(crate::StoreError::PreconditionFailed {
            resource_type,
            id: id.clone(),
            expected,
            current: match other {
                Some((version, false)) => version.to_string(),
                Some((version, true)) => format!("{version} (deleted)"),
                None => "none".to_owned(),
            },
        }),
    }
}
