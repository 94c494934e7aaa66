//! Behaviour of `OutputStore` on the local filesystem (in a temporary directory) and in memory.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use bulkfhir_model::ErrorKind;
use bulkfhir_output::{Compression, OutputError, OutputKey, OutputStore};
use futures::{FutureExt as _, TryStreamExt as _};
use proptest::prelude::*;
use tempfile::TempDir;

const SMALL_PART: usize = 256 * 1024;

struct Backend {
    name: &'static str,
    store: OutputStore,
    /// The local store's root; `None` in memory.
    dir: Option<TempDir>,
}

fn backends(part_size: usize) -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("create temp dir");
    let local = OutputStore::local(&dir.path().join("out")).expect("open local store");
    vec![
        Backend { name: "local", store: local.with_part_size(part_size), dir: Some(dir) },
        Backend {
            name: "memory",
            store: OutputStore::in_memory().with_part_size(part_size),
            dir: None,
        },
    ]
}

fn key(raw: &str) -> OutputKey {
    OutputKey::parse(raw).expect("valid key")
}

/// NDJSON lines that compress only about 2:1, so the gzip output still spans several parts.
fn ndjson(n_bytes: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(n_bytes + 200);
    let mut line_idx = 0;
    while out.len() < n_bytes {
        out.extend_from_slice(
            format!("{{\"resourceType\":\"Observation\",\"id\":\"{line_idx}\",\"valueString\":\"")
                .as_bytes(),
        );
        for _ in 0..40 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(format!("{:x}", state % 16).as_bytes());
        }
        out.extend_from_slice(b"\"}\n");
        line_idx += 1;
    }
    out
}

async fn read_all(store: &OutputStore, key: &OutputKey) -> Result<Vec<u8>, OutputError> {
    let (body, size) = store.read(key, None).await?;
    let chunks: Vec<_> = body.try_collect().await?;
    let bytes = chunks.concat();
    assert_eq!(bytes.len() as u64, size);
    Ok(bytes)
}

async fn read_range(
    store: &OutputStore,
    key: &OutputKey,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, OutputError> {
    let (body, _) = store.read(key, Some(range)).await?;
    let chunks: Vec<_> = body.try_collect().await?;
    Ok(chunks.concat())
}

/// Single-member decoder on purpose: it stops after the first member, as some clients do.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("valid gzip");
    out
}

/// Every file (not directory) below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries {
        let path = entry.expect("read dir entry").path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Writes `data` in uneven chunks: tiny ones, one larger than the 1 MiB compression chunk, and
/// the rest in 64 KiB pieces.
async fn write_uneven(writer: &mut bulkfhir_output::FileWriter, data: &[u8]) {
    let (tiny, rest) = data.split_at(100);
    for byte in tiny.chunks(7) {
        writer.write(byte).await.expect("write");
    }
    let (big, rest) = rest.split_at(rest.len().min(1_500_000));
    writer.write(big).await.expect("write");
    for chunk in rest.chunks(64 * 1024) {
        writer.write(chunk).await.expect("write");
    }
}

#[tokio::test]
async fn plain_file_round_trips_over_several_parts() {
    let data = ndjson(3 * 1024 * 1024);
    for backend in backends(SMALL_PART) {
        let file_key = key("jobs/j1/Observation-1.ndjson");
        let mut writer = backend.store.create(&file_key, Compression::None).await.expect("create");
        write_uneven(&mut writer, &data).await;
        let finished = writer.finish().await.expect("finish");

        assert_eq!(finished.key, file_key, "{}", backend.name);
        assert_eq!(finished.uncompressed_bytes, data.len() as u64, "{}", backend.name);
        assert_eq!(finished.stored_bytes, data.len() as u64, "{}", backend.name);
        assert_eq!(backend.store.size(&file_key).await.expect("size"), data.len() as u64);
        assert!(
            read_all(&backend.store, &file_key).await.expect("read") == data,
            "{}",
            backend.name
        );
    }
}

#[tokio::test]
async fn gzip_file_round_trips_as_one_member() {
    let data = ndjson(6 * 1024 * 1024);
    for backend in backends(SMALL_PART) {
        let file_key = key("jobs/j1/Observation-1.ndjson.gz");
        let mut writer =
            backend.store.create(&file_key, Compression::Gzip { level: 1 }).await.expect("create");
        write_uneven(&mut writer, &data).await;
        let finished = writer.finish().await.expect("finish");

        let stored = read_all(&backend.store, &file_key).await.expect("read");
        assert_eq!(finished.uncompressed_bytes, data.len() as u64, "{}", backend.name);
        assert_eq!(finished.stored_bytes, stored.len() as u64, "{}", backend.name);
        assert_eq!(backend.store.size(&file_key).await.expect("size"), stored.len() as u64);
        assert!(stored.len() > 4 * SMALL_PART, "{}: expected several parts", backend.name);
        assert!(stored.len() < data.len(), "{}: gzip did not compress", backend.name);
        assert!(gunzip(&stored) == data, "{}", backend.name);
    }
}

#[tokio::test]
async fn empty_files_are_valid() {
    for backend in backends(SMALL_PART) {
        let plain = key("jobs/j1/empty.ndjson");
        let finished = backend
            .store
            .create(&plain, Compression::None)
            .await
            .expect("create")
            .finish()
            .await
            .expect("finish");
        assert_eq!((finished.uncompressed_bytes, finished.stored_bytes), (0, 0));
        assert_eq!(backend.store.size(&plain).await.expect("size"), 0);

        let gzip = key("jobs/j1/empty.ndjson.gz");
        let writer =
            backend.store.create(&gzip, Compression::Gzip { level: 6 }).await.expect("create");
        let finished = writer.finish().await.expect("finish");
        let stored = read_all(&backend.store, &gzip).await.expect("read");
        assert_eq!(finished.stored_bytes, stored.len() as u64);
        assert!(gunzip(&stored).is_empty(), "{}", backend.name);
    }
}

#[tokio::test]
async fn nothing_is_visible_before_finish() {
    for backend in backends(SMALL_PART) {
        let prefix = key("jobs/j1");
        let file_key = prefix.join("Patient-1.ndjson").expect("key");
        let mut writer = backend.store.create(&file_key, Compression::None).await.expect("create");
        writer.write(&ndjson(SMALL_PART * 3)).await.expect("write");

        assert!(backend.store.list(&prefix).await.expect("list").is_empty(), "{}", backend.name);
        let error = backend.store.size(&file_key).await.expect_err("not there yet");
        assert!(matches!(error, OutputError::NotFound { .. }), "{}: {error:?}", backend.name);
        assert_eq!(error.kind(), ErrorKind::NotFound);
        let error = backend.store.read(&file_key, None).await.err().expect("not readable yet");
        assert!(matches!(error, OutputError::NotFound { .. }), "{}: {error:?}", backend.name);

        let finished = writer.finish().await.expect("finish");
        let listed = backend.store.list(&prefix).await.expect("list");
        assert_eq!(listed, vec![(file_key.clone(), finished.stored_bytes)], "{}", backend.name);
    }
}

#[tokio::test]
async fn abort_leaves_nothing() {
    for backend in backends(SMALL_PART) {
        let prefix = key("jobs/j1");
        let file_key = prefix.join("Patient-1.ndjson.gz").expect("key");
        let mut writer =
            backend.store.create(&file_key, Compression::Gzip { level: 1 }).await.expect("create");
        writer.write(&ndjson(3 * 1024 * 1024)).await.expect("write");
        writer.abort().await.expect("abort");

        assert!(backend.store.list(&prefix).await.expect("list").is_empty(), "{}", backend.name);
        let error = backend.store.read(&file_key, None).await.err().expect("nothing stored");
        assert!(matches!(error, OutputError::NotFound { .. }), "{}: {error:?}", backend.name);
        if let Some(dir) = &backend.dir {
            assert_eq!(files_below(dir.path()), Vec::<PathBuf>::new());
        }
    }
}

#[tokio::test]
async fn dropped_writer_leaves_no_object() {
    for backend in backends(SMALL_PART) {
        let prefix = key("jobs/j1");
        let file_key = prefix.join("Patient-1.ndjson").expect("key");
        let mut writer = backend.store.create(&file_key, Compression::None).await.expect("create");
        writer.write(&ndjson(SMALL_PART * 2)).await.expect("write");
        drop(writer);

        assert!(backend.store.list(&prefix).await.expect("list").is_empty(), "{}", backend.name);
        backend.store.remove_incomplete(&prefix).await.expect("remove incomplete");
        if let Some(dir) = &backend.dir {
            assert_eq!(files_below(dir.path()), Vec::<PathBuf>::new());
        }
    }
}

#[tokio::test]
async fn cancelled_write_is_never_published() {
    for backend in backends(SMALL_PART) {
        let file_key = key("jobs/j1/Patient-1.ndjson.gz");
        let mut writer =
            backend.store.create(&file_key, Compression::Gzip { level: 9 }).await.expect("create");
        let data = ndjson(4 * 1024 * 1024);
        // The first poll hands compression to the blocking pool and returns; dropping the future
        // there loses that input.
        assert!(writer.write(&data).now_or_never().is_none(), "{}", backend.name);

        let error = writer.write(b"{}\n").await.expect_err("writer is broken");
        assert_eq!(error.kind(), ErrorKind::Internal);
        let error = writer.finish().await.expect_err("finish refuses a broken writer");
        assert!(matches!(error, OutputError::Io { .. }), "{}: {error:?}", backend.name);
        assert!(backend.store.list(&key("jobs")).await.expect("list").is_empty());
        if let Some(dir) = &backend.dir {
            assert_eq!(files_below(dir.path()), Vec::<PathBuf>::new());
        }
    }
}

/// The name `LocalFileSystem` gives the `n`-th concurrent staged upload of `path`.
fn staged_name(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("#{n}"));
    name.into()
}

const PATIENT: &[u8] = b"{\"resourceType\":\"Patient\"}\n";

#[tokio::test]
async fn crash_leftovers_are_removed_on_the_local_filesystem() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let root = dir.path().join("out");
    let store = OutputStore::local(&root).expect("open local store").with_part_size(SMALL_PART);
    let prefix = key("jobs/j1");

    let complete = prefix.join("Patient-1.ndjson").expect("key");
    let mut writer = store.create(&complete, Compression::None).await.expect("create");
    writer.write(PATIENT).await.expect("write");
    writer.finish().await.expect("finish");

    // A crash: the writer never finishes, aborts or drops, so its staged file stays.
    let crashed = prefix.join("Observation-1.ndjson").expect("key");
    let mut writer = store.create(&crashed, Compression::None).await.expect("create");
    writer.write(&ndjson(SMALL_PART * 2)).await.expect("write");
    std::mem::forget(writer);
    let crashed_path = root.join("jobs/j1/Observation-1.ndjson");
    assert_eq!(
        files_below(&root),
        vec![staged_name(&crashed_path, 1), root.join("jobs/j1/Patient-1.ndjson")]
    );
    // And one left by an earlier crash, deeper down, made the way LocalFileSystem names them.
    std::fs::create_dir_all(root.join("jobs/j1/part")).expect("mkdir");
    std::fs::write(staged_name(&root.join("jobs/j1/part/Condition-2.ndjson"), 3), b"{")
        .expect("write staged file");

    assert_eq!(
        store.list(&prefix).await.expect("list"),
        vec![(complete.clone(), PATIENT.len() as u64)]
    );

    store.remove_incomplete(&prefix).await.expect("remove incomplete");
    assert_eq!(files_below(&root), vec![root.join("jobs/j1/Patient-1.ndjson")]);
    assert_eq!(read_all(&store, &complete).await.expect("read"), PATIENT);

    let mut writer = store.create(&crashed, Compression::None).await.expect("create");
    writer.write(b"{}\n").await.expect("write");
    std::mem::forget(writer);
    assert_eq!(store.delete_prefix(&prefix).await.expect("delete"), 1);
    assert_eq!(files_below(&root), Vec::<PathBuf>::new());
    assert!(!root.join("jobs/j1").exists(), "emptied directories are pruned");
    assert!(root.exists(), "the root stays");
}

#[tokio::test]
async fn ranges_read_stored_bytes() {
    for backend in backends(SMALL_PART) {
        let file_key = key("jobs/j1/Encounter-1.ndjson");
        let data = ndjson(100_000);
        let mut writer = backend.store.create(&file_key, Compression::None).await.expect("create");
        writer.write(&data).await.expect("write");
        writer.finish().await.expect("finish");
        let size = data.len() as u64;
        let store = &backend.store;

        assert_eq!(read_range(store, &file_key, 10..20).await.expect("read"), &data[10..20]);
        assert_eq!(read_range(store, &file_key, 0..size).await.expect("read"), data);
        assert_eq!(
            read_range(store, &file_key, size - 1..size).await.expect("read"),
            &data[data.len() - 1..]
        );
        for empty in [0..0, 5..5, size..size] {
            let (body, total) = store.read(&file_key, Some(empty)).await.expect("read empty");
            assert_eq!(total, size);
            assert!(body.try_collect::<Vec<_>>().await.expect("read").is_empty());
        }
        #[allow(clippy::reversed_empty_ranges)]
        let invalid = [0..size + 1, size + 1..size + 2, 20..10];
        for range in invalid {
            let error = store.read(&file_key, Some(range.clone())).await.err().expect("refused");
            assert!(matches!(error, OutputError::InvalidRange { .. }), "{range:?}: {error:?}");
            assert_eq!(error.kind(), ErrorKind::Invalid);
        }
        let error = store.read(&key("jobs/j1/missing"), Some(0..1)).await.err().expect("missing");
        assert!(matches!(error, OutputError::NotFound { .. }), "{}: {error:?}", backend.name);
    }
}

#[tokio::test]
async fn gzip_ranges_are_compressed_bytes() {
    for backend in backends(SMALL_PART) {
        let file_key = key("jobs/j1/Encounter-1.ndjson.gz");
        let mut writer =
            backend.store.create(&file_key, Compression::Gzip { level: 2 }).await.expect("create");
        writer.write(&ndjson(100_000)).await.expect("write");
        writer.finish().await.expect("finish");

        let stored = read_all(&backend.store, &file_key).await.expect("read");
        assert_eq!(&stored[..2], &[0x1f, 0x8b], "gzip magic");
        let middle = read_range(&backend.store, &file_key, 100..200).await.expect("read");
        assert_eq!(middle, &stored[100..200], "{}", backend.name);
    }
}

async fn put(store: &OutputStore, raw: &str, content: &[u8]) {
    let mut writer = store.create(&key(raw), Compression::None).await.expect("create");
    writer.write(content).await.expect("write");
    writer.finish().await.expect("finish");
}

#[tokio::test]
async fn delete_prefix_removes_everything_below_and_nothing_else() {
    for backend in backends(SMALL_PART) {
        let store = &backend.store;
        for raw in ["jobs/a/x.ndjson", "jobs/a/sub/y.ndjson", "jobs/ab/z.ndjson", "jobs/b/w.ndjson"]
        {
            put(store, raw, raw.as_bytes()).await;
        }

        assert_eq!(
            store.delete_prefix(&key("jobs/a")).await.expect("delete"),
            2,
            "{}",
            backend.name
        );
        let left: Vec<_> =
            store.list(&key("jobs")).await.expect("list").into_iter().map(|(k, _)| k).collect();
        assert_eq!(left, vec![key("jobs/ab/z.ndjson"), key("jobs/b/w.ndjson")], "{}", backend.name);
        assert_eq!(store.delete_prefix(&key("jobs/a")).await.expect("delete again"), 0);
        assert_eq!(store.delete_prefix(&key("never/written")).await.expect("delete missing"), 0);
        if let Some(dir) = &backend.dir {
            assert!(!dir.path().join("out/jobs/a").exists(), "{}", backend.name);
        }
    }
}

#[tokio::test]
async fn list_is_sorted_with_sizes_and_below_the_prefix_only() {
    for backend in backends(SMALL_PART) {
        let store = &backend.store;
        for raw in
            ["jobs/j1/c.ndjson", "jobs/j1/a.ndjson", "jobs/j1/b/d.ndjson", "jobs/j10/e.ndjson"]
        {
            put(store, raw, raw.as_bytes()).await;
        }
        let listed = store.list(&key("jobs/j1")).await.expect("list");
        let expected: Vec<_> = ["jobs/j1/a.ndjson", "jobs/j1/b/d.ndjson", "jobs/j1/c.ndjson"]
            .into_iter()
            .map(|raw| (key(raw), raw.len() as u64))
            .collect();
        assert_eq!(listed, expected, "{}", backend.name);
        assert!(store.list(&key("nothing/here")).await.expect("list").is_empty());
    }
}

#[tokio::test]
async fn a_store_prefix_is_hidden_from_keys() {
    let shared: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(object_store::memory::InMemory::new());
    let tenant = OutputStore::from_object_store(shared.clone(), "tenants/t1");
    let other = OutputStore::from_object_store(shared.clone(), "tenants/t2");
    put(&tenant, "jobs/j1/a.ndjson", b"a").await;
    put(&other, "jobs/j1/a.ndjson", b"bb").await;

    assert_eq!(tenant.list(&key("jobs")).await.expect("list"), vec![(key("jobs/j1/a.ndjson"), 1)]);
    let raw = object_store::ObjectStoreExt::head(
        shared.as_ref(),
        &object_store::path::Path::from("tenants/t1/jobs/j1/a.ndjson"),
    )
    .await
    .expect("object under the prefix");
    assert_eq!(raw.size, 1);
    assert_eq!(tenant.delete_prefix(&key("jobs")).await.expect("delete"), 1);
    assert_eq!(other.size(&key("jobs/j1/a.ndjson")).await.expect("other tenant untouched"), 2);
}

#[test]
fn key_examples() {
    for good in ["a", "jobs/0193a/Observation-1.ndjson.gz", "a_b/c-d/e.f", "...", ".hidden/x"] {
        assert_eq!(OutputKey::parse(good).expect(good).as_str(), good);
    }
    for bad in [
        "", "/abs", "a/", "a//b", "..", "a/../b", "./a", "a\\b", "a b", "a\nb", "a#1", "é", "a/./b",
    ] {
        let error = OutputKey::parse(bad).expect_err(bad);
        assert!(matches!(error, OutputError::InvalidKey(_)), "{bad:?}");
        assert_eq!(error.kind(), ErrorKind::Invalid);
    }
    assert!(OutputKey::parse(&"a".repeat(201)).is_err(), "segment too long");
    assert_eq!(key("jobs/j1").join("b/c.ndjson").expect("join"), key("jobs/j1/b/c.ndjson"));
    assert!(key("jobs").join("../etc").is_err());
    assert_eq!(key("a/b").to_string(), "a/b");
}

proptest! {
    #[test]
    fn key_parse_never_panics(raw in any::<String>()) {
        let _ = OutputKey::parse(&raw);
    }

    #[test]
    fn key_parse_accepts_normal_keys(segments in prop::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,30}", 1..6)) {
        let raw = segments.join("/");
        let parsed = OutputKey::parse(&raw);
        prop_assert!(parsed.is_ok(), "{raw:?}: {parsed:?}");
        let parsed = parsed.expect("checked");
        prop_assert_eq!(parsed.as_str(), raw.as_str());
    }

    #[test]
    fn key_parse_refuses_traversal_absolute_and_empty_segments(
        before in prop::collection::vec("[A-Za-z0-9._-]{1,10}", 0..3),
        after in prop::collection::vec("[A-Za-z0-9._-]{1,10}", 0..3),
        bad in prop::sample::select(vec!["..", ".", ""]),
    ) {
        let raw = before.iter().map(String::as_str).chain([bad]).chain(after.iter().map(String::as_str)).collect::<Vec<_>>().join("/");
        prop_assert!(OutputKey::parse(&raw).is_err(), "{raw:?}");
        let absolute = format!("/{}", before.iter().chain(&after).map(String::as_str).collect::<Vec<_>>().join("/"));
        prop_assert!(OutputKey::parse(&absolute).is_err(), "{absolute:?}");
    }
}
