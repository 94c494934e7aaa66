//! Bulk mode: a load into an empty store, by its only user, without the random-key index.
//!
//! Resource ids are random (UUIDs), so each new resource lands on a random page of the key index
//! `(rtype, id, version)`. Once a batch's inserts outnumber that index's pages, nearly every page
//! is rewritten by every commit: at 1M resources the load wrote 8.3 GB to build a 1.9 GB
//! database, and the point read each write makes to find the current version was the largest
//! item of the writer's profile. Beyond the page cache (5M), each insert also reads its page.
//!
//! In bulk mode the key index is dropped, the current version of each resource written since is
//! found through an in-memory map from a 32-bit hash of `(type, id)` to its row's `seq` (a
//! rowid read confirms the match, so a hash collision costs a lookup, never a wrong answer), and
//! the index is built once, sorted, when the load ends. Only a caller that owns the store for
//! the whole load may ask for it (`bulkfhir load` holding the data directory's lock): until the
//! index is back, reads by id scan the table. A load killed half-way leaves committed batches
//! without the index: the next process to open the store builds it, once no process holds the
//! [`BulkLock`]. While one does, writes from elsewhere are refused (`Unavailable`), since
//! nothing would keep them from giving a resource a second version 1.

use std::{
    collections::HashMap,
    fs::{File, TryLockError},
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    path::{Path, PathBuf},
};

use bulkfhir_model::{ResourceId, ResourceType};
use rusqlite::{Connection, OptionalExtension, params};

use crate::sqlite::Current;

/// Whether the key index exists (it does not while some process is in bulk mode).
pub(crate) fn has_key_index(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = 'resource_version_key'",
    )?
    .query_row([], |_| Ok(()))
    .optional()
    .map(|found| found.is_some())
}

/// Builds the key index (sorted, in one pass over the table). Past the page cache the sort
/// spills to temporary files; with the connection's `temp_store = MEMORY` those would be memory
/// too, up to the index's size (about 300 MB at 5M resources; not measured apart from the rest
/// of the load's peak).
pub(crate) fn build_key_index(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA temp_store = FILE")?;
    let built = conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS resource_version_key
             ON resource_version (rtype, id, version)",
    );
    conn.execute_batch("PRAGMA temp_store = MEMORY")?;
    built
}

/// Drops the key index if the store holds no resource yet. Returns whether it did.
pub(crate) fn drop_key_index_if_empty(conn: &mut Connection) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let any: Option<i64> =
        tx.query_row("SELECT 1 FROM resource_version LIMIT 1", [], |row| row.get(0)).optional()?;
    if any.is_some() {
        return Ok(false);
    }
    tx.execute_batch("DROP INDEX IF EXISTS resource_version_key")?;
    tx.commit()?;
    Ok(true)
}

/// The lock a process holds while in bulk mode, on a file beside the database: another process
/// that opens the store and finds no key index learns from it whether a bulk load is still
/// running (leave the index alone) or died (build it).
#[derive(Debug)]
pub(crate) struct BulkLock(#[allow(dead_code, reason = "held for its lock")] File);

impl BulkLock {
    fn path(database: &Path) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(".bulk-lock");
        PathBuf::from(name)
    }

    /// Takes the lock, or `None` if another process holds it.
    pub(crate) fn try_take(database: &Path) -> std::io::Result<Option<BulkLock>> {
        let file = File::create(Self::path(database))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(BulkLock(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }
}

/// Spreads a 32-bit hash over the 64 bits the table uses (its top bits pick control bytes).
#[derive(Default)]
pub(crate) struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u32` is used; anything else still hashes, just less cheaply.
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u32(&mut self, value: u32) {
        self.0 = u64::from(value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Where the newest version of each resource written in bulk mode is.
///
/// 8 bytes a resource (a 32-bit hash of `(type, id)` and a 32-bit `seq`; about 75 MB at 5M
/// resources, 110 MB while the table doubles). A 32-bit hash is shared by some pairs of
/// resources (a new one meets an old one's hash about once per 1,000 at 5M): each hit is
/// confirmed by reading the row it names, and the second resource of a pair is kept, exactly,
/// in `collided`.
#[derive(Debug, Default)]
pub(crate) struct BulkIndex {
    hash: RandomState,
    /// `seq` of the newest version of the first resource seen with each hash.
    by_hash: HashMap<u32, u32, BuildHasherDefault<Spread>>,
    /// Resources whose hash another one holds (or whose `seq` does not fit 32 bits).
    collided: HashMap<(ResourceType, ResourceId), i64>,
    /// Tests: every resource gets the same hash, so all but the first collide.
    #[cfg(test)]
    pub(crate) collide_all: bool,
}

/// The version row `seq`, if it is one of this resource's.
fn read_row(
    conn: &Connection,
    seq: i64,
    resource_type: ResourceType,
    id: &ResourceId,
) -> rusqlite::Result<Option<Current>> {
    let row = conn
        .prepare_cached(
            "SELECT rtype, id, version, deleted, patients FROM resource_version WHERE seq = ?1",
        )?
        .query_row(params![seq], |row| {
            let same = row.get_ref(0)?.as_str().ok() == Some(resource_type.as_str())
                && row.get_ref(1)?.as_str().ok() == Some(id.as_str());
            Ok(same.then(|| -> rusqlite::Result<Current> {
                Ok(Current {
                    seq,
                    version: row.get(2)?,
                    deleted: row.get(3)?,
                    patients: row.get(4)?,
                })
            }))
        })
        .optional()?;
    row.flatten().transpose()
}

impl BulkIndex {
    fn key(&self, resource_type: ResourceType, id: &ResourceId) -> u32 {
        #[cfg(test)]
        if self.collide_all {
            return 7;
        }
        // The high half: RandomState's SipHash spreads every input bit over all 64.
        (self.hash.hash_one((resource_type.as_str(), id.as_str())) >> 32) as u32
    }

    /// The newest version of a resource; `written` holds the writes of the transaction in
    /// progress (not in the index until it commits).
    pub(crate) fn current(
        &self,
        conn: &Connection,
        written: &HashMap<(ResourceType, ResourceId), i64>,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> rusqlite::Result<Option<Current>> {
        let key = (resource_type, id.clone());
        if let Some(&seq) = written.get(&key) {
            return read_row(conn, seq, resource_type, id);
        }
        if let Some(&seq) = self.by_hash.get(&self.key(resource_type, id))
            && let Some(current) = read_row(conn, i64::from(seq), resource_type, id)?
        {
            return Ok(Some(current));
        }
        match self.collided.get(&key) {
            None => Ok(None),
            Some(&seq) => read_row(conn, seq, resource_type, id),
        }
    }

    /// Records the writes of a committed transaction.
    pub(crate) fn commit(
        &mut self,
        conn: &Connection,
        written: HashMap<(ResourceType, ResourceId), i64>,
    ) -> rusqlite::Result<()> {
        for ((resource_type, id), seq) in written {
            let key = self.key(resource_type, &id);
            // The hash's owner is the resource its row names: this one when the slot is free
            // or holds an older version of it.
            let owner = match self.by_hash.get(&key) {
                None => true,
                Some(&held) => read_row(conn, i64::from(held), resource_type, &id)?.is_some(),
            };
            match u32::try_from(seq) {
                Ok(short) if owner => {
                    self.by_hash.insert(key, short);
                    if !self.collided.is_empty() {
                        self.collided.remove(&(resource_type, id));
                    }
                }
                _ => {
                    if owner {
                        self.by_hash.remove(&key);
                    }
                    self.collided.insert((resource_type, id), seq);
                }
            }
        }
        Ok(())
    }
}
