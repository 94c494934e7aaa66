//! Deterministic synthetic FHIR R4 population generator.
//!
//! [`generate_to_dir`] writes a Synthea-like population as bulk-data NDJSON:
//! one `<Type>.ndjson` file per resource type, one minified resource per
//! line. Per patient it produces Encounters, Observations (vital signs,
//! labs, surveys), DiagnosticReports, Conditions, Procedures,
//! MedicationRequests, Immunizations, Claims and ExplanationOfBenefits; the
//! population shares Organizations, Practitioners and Locations, and one
//! `Group` (`Group/all-patients`) lists every Patient.
//!
//! Properties:
//!
//! - **Deterministic.** The same [`GenerateOptions`] give byte-identical
//!   files on every run and machine. There is no clock: dates lie before
//!   the fixed reference date 2026-01-01. Randomness is a portable
//!   integer generator seeded per patient from `(seed, patient index)`, and
//!   ids are UUID-shaped hashes of `(seed, resource type, index)`, so that
//!   patients or types can later be generated independently.
//! - **Closed.** Every `reference` is a relative `Type/id` that resolves to
//!   a generated resource. Resources carry no `meta`.
//! - **Fast.** JSON is written by hand into reused buffers and streamed
//!   through large buffered writers (several hundred thousand resources
//!   per second on one core).
//!
//! ```no_run
//! use bulkfhir_generator::{GenerateOptions, generate_to_dir};
//!
//! let opts = GenerateOptions { patients: 100, seed: 42 };
//! let stats = generate_to_dir(&opts, "out".as_ref(), &mut |n| eprintln!("{n} resources"))?;
//! println!("{} resources, {} bytes", stats.resources, stats.bytes);
//! # Ok::<(), bulkfhir_generator::GenerateError>(())
//! ```

#![warn(missing_docs)]

mod billing;
mod clinical;
mod json;
mod output;
mod person;
mod population;
mod rng;
mod time;
mod vocab;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::json::Json;
use crate::output::Output;
use crate::population::PatientSim;
use crate::world::World;

/// How often (in resources written) `progress` is called, at most.
const PROGRESS_EVERY: u64 = 5_000;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Number of patients. About 380 resources are written per patient.
    pub patients: u64,
    /// Seed of the population; different seeds give different data.
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateStats {
    /// Resources written, all types together.
    pub resources: u64,
    /// Bytes written, all files together (including newlines).
    pub bytes: u64,
    /// Per resource type name: `(resources, bytes)`. Lists every type the
    /// generator writes, including any that came out empty.
    pub per_type: BTreeMap<String, (u64, u64)>,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Creating or writing an output file (or the output directory) failed.
    #[error("write {path}: {source}")]
    Io {
        /// The file or directory being written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the population into `out_dir` (created if missing), one
/// `<Type>.ndjson` per type, through buffered writers.
///
/// Existing files of the same names are overwritten. `progress` is called
/// with the number of resources written so far every few thousand
/// resources, and once more at the end with the total.
pub fn generate_to_dir(
    opts: &GenerateOptions,
    out_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<GenerateStats, GenerateError> {
    std::fs::create_dir_all(out_dir)
        .map_err(|source| GenerateError::Io { path: out_dir.to_path_buf(), source })?;
    let world = World::new(opts.seed, opts.patients);
    let mut out = Output::create(out_dir)?;
    let mut json = Json::with_capacity(64 * 1024);
    world.write_shared(&mut json, &mut out)?;

    let mut sim = PatientSim::new(&world);
    let mut next_report = PROGRESS_EVERY;
    for index in 0..opts.patients {
        sim.generate(index, &mut out)?;
        if out.total() >= next_report {
            progress(out.total());
            next_report = out.total() + PROGRESS_EVERY;
        }
    }
    world.write_group(&mut json, &mut out)?;

    let resources = out.total();
    let per_type = out.finish()?;
    progress(resources);
    let bytes = per_type.values().map(|&(_, b)| b).sum();
    Ok(GenerateStats { resources, bytes, per_type })
}

#[cfg(test)]
mod tests;
