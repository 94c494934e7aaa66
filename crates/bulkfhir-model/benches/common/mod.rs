//! What the model crate's benchmarks share: the data they run on and the timing loop.

use std::hint::black_box;
use std::time::{Duration, Instant as Clock};

/// How long each measurement runs (repeating the data set).
const MEASURE_FOR: Duration = Duration::from_secs(3);

/// Runs `step` over all lines repeatedly for [`MEASURE_FOR`]; returns resources/s and how many
/// lines one pass kept.
pub(crate) fn measure(
    lines: &[Vec<u8>],
    mut step: impl FnMut(&[u8], &mut Vec<u8>) -> bool,
) -> (f64, usize) {
    let mut out = Vec::with_capacity(1 << 24);
    let (mut n_done, mut kept_per_pass) = (0_usize, 0);
    let start = Clock::now();
    while start.elapsed() < MEASURE_FOR {
        let mut kept = 0;
        for line in lines {
            kept += usize::from(step(black_box(line), &mut out));
            if out.len() > 1 << 23 {
                black_box(&out);
                out.clear();
            }
        }
        kept_per_pass = kept;
        n_done += lines.len();
    }
    black_box(&out);
    (n_done as f64 / start.elapsed().as_secs_f64(), kept_per_pass)
}

/// The Observation lines of the medium set. Missing data is an error, not a skip.
pub(crate) fn observations() -> Vec<Vec<u8>> {
    let archive = manifest_dir().join("../../testdata/synthea/medium.tar.xz");
    assert!(archive.is_file(), "vendored data missing: {}", archive.display());
    let target = std::env::temp_dir().join(format!("bulkfhir-model-bench-{}", std::process::id()));
    std::fs::create_dir_all(&target).expect("temp dir");
    let status = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&target)
        .arg("Observation.ndjson")
        .status()
        .expect("run tar");
    assert!(status.success(), "unpack {}", archive.display());
    let text = std::fs::read(target.join("Observation.ndjson")).expect("read Observation.ndjson");
    std::fs::remove_dir_all(&target).expect("remove temp dir");
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

/// This crate's folder, as cargo tells the running test; the path compiled in is only the
/// fallback (a build cache reused from another checkout points at a folder that may be gone).
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), Into::into)
}
