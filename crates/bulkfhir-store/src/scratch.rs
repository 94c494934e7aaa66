//! Folders that outlive a test process's statics: a PostgreSQL cluster, an object-store
//! emulator, an unpacked dataset. A `static` is never dropped, so a `TempDir` held in one is
//! never removed; on a machine that runs the suite again and again (CI keeps one) those
//! folders would fill the disk. Each such folder is named after its process instead, and the
//! folders of processes that are gone are removed before a new one is made.

use std::path::{Path, PathBuf};

/// An empty folder `bulkfhir-{kind}-{pid}` under the system's temporary folder, for this
/// process. Folders of the same `kind` whose process no longer runs are removed first.
///
/// # Panics
/// When the folder cannot be created (a test helper: the message names the folder).
pub fn process_dir(kind: &str) -> PathBuf {
    let root = std::env::temp_dir();
    sweep(&root, kind);
    let dir = root.join(format!("bulkfhir-{kind}-{}", std::process::id()));
    // A folder of this pid left by an earlier process of the same pid is stale too.
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("create {}: {e}", dir.display());
    }
    dir
}

/// Remove `bulkfhir-{kind}-{pid}` folders under `root` whose process is gone.
fn sweep(root: &Path, kind: &str) {
    let prefix = format!("bulkfhir-{kind}-");
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_gone_processes_are_swept_and_live_ones_kept() {
        let root = tempfile_root();
        // pid 0 is never a process of ours and /proc/0 does not exist; pid 1 always runs.
        let gone = root.join("bulkfhir-probe-0");
        let live = root.join("bulkfhir-probe-1");
        let other = root.join("bulkfhir-other-0");
        for d in [&gone, &live, &other] {
            std::fs::create_dir_all(d.join("inner")).unwrap();
        }
        sweep(&root, "probe");
        assert!(!gone.exists(), "a gone process's folder is removed");
        assert!(live.exists(), "a running process's folder stays");
        assert!(other.exists(), "another kind's folder stays");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn tempfile_root() -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("bulkfhir-scratch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }
}
