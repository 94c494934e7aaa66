//! Resource types and the per-type NDJSON files they are written to.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::GenerateError;
use crate::json::Json;
use crate::rng::{Id, fnv1a};

/// Buffer size of each per-type writer.
const WRITE_BUFFER: usize = 1 << 20;

/// The resource types the generator writes, one NDJSON file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceType {
    Patient,
    Encounter,
    Observation,
    Condition,
    Procedure,
    MedicationRequest,
    Immunization,
    DiagnosticReport,
    Claim,
    ExplanationOfBenefit,
    Organization,
    Practitioner,
    Location,
    Group,
}

impl ResourceType {
    pub(crate) const ALL: [Self; 14] = [
        Self::Patient,
        Self::Encounter,
        Self::Observation,
        Self::Condition,
        Self::Procedure,
        Self::MedicationRequest,
        Self::Immunization,
        Self::DiagnosticReport,
        Self::Claim,
        Self::ExplanationOfBenefit,
        Self::Organization,
        Self::Practitioner,
        Self::Location,
        Self::Group,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Patient => "Patient",
            Self::Encounter => "Encounter",
            Self::Observation => "Observation",
            Self::Condition => "Condition",
            Self::Procedure => "Procedure",
            Self::MedicationRequest => "MedicationRequest",
            Self::Immunization => "Immunization",
            Self::DiagnosticReport => "DiagnosticReport",
            Self::Claim => "Claim",
            Self::ExplanationOfBenefit => "ExplanationOfBenefit",
            Self::Organization => "Organization",
            Self::Practitioner => "Practitioner",
            Self::Location => "Location",
            Self::Group => "Group",
        }
    }

    /// The id-derivation stream of this type.
    const fn tag(self) -> u64 {
        fnv1a(self.name())
    }

    /// The id of resource number `key` of this type for `seed`.
    pub(crate) fn id(self, seed: u64, key: u64) -> Id {
        Id::derive(seed, self.tag(), key)
    }
}

/// One `<Type>.ndjson` file with its running totals.
#[derive(Debug)]
struct Sink {
    ty: ResourceType,
    path: PathBuf,
    writer: BufWriter<File>,
    count: u64,
    bytes: u64,
}

impl Sink {
    fn io_error(&self, source: std::io::Error) -> GenerateError {
        GenerateError::Io { path: self.path.clone(), source }
    }
}

/// All output files of one generation run.
#[derive(Debug)]
pub(crate) struct Output {
    sinks: Vec<Sink>,
    total: u64,
}

impl Output {
    /// Creates (truncating) one file per resource type in `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Self, GenerateError> {
        let mut sinks = Vec::with_capacity(ResourceType::ALL.len());
        for ty in ResourceType::ALL {
            let path = dir.join(format!("{}.ndjson", ty.name()));
            let file = File::create(&path)
                .map_err(|source| GenerateError::Io { path: path.clone(), source })?;
            sinks.push(Sink {
                ty,
                path,
                writer: BufWriter::with_capacity(WRITE_BUFFER, file),
                count: 0,
                bytes: 0,
            });
        }
        Ok(Self { sinks, total: 0 })
    }

    /// Resources written so far, all types together.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Writes the resource in `json` plus a newline to its type's file.
    #[inline]
    pub(crate) fn emit(&mut self, ty: ResourceType, json: &Json) -> Result<(), GenerateError> {
        let sink = &mut self.sinks[ty as usize];
        let line = json.as_bytes();
        let res = sink.writer.write_all(line).and_then(|()| sink.writer.write_all(b"\n"));
        res.map_err(|e| sink.io_error(e))?;
        sink.count += 1;
        sink.bytes += line.len() as u64 + 1;
        self.total += 1;
        Ok(())
    }

    /// Writes part of a resource too large to buffer whole (the Group);
    /// finish it with [`Output::end_partial`].
    pub(crate) fn emit_partial(
        &mut self,
        ty: ResourceType,
        json: &Json,
    ) -> Result<(), GenerateError> {
        let sink = &mut self.sinks[ty as usize];
        sink.writer.write_all(json.as_bytes()).map_err(|e| sink.io_error(e))?;
        sink.bytes += json.len() as u64;
        Ok(())
    }

    /// Ends a resource written with [`Output::emit_partial`].
    pub(crate) fn end_partial(&mut self, ty: ResourceType) -> Result<(), GenerateError> {
        let sink = &mut self.sinks[ty as usize];
        sink.writer.write_all(b"\n").map_err(|e| sink.io_error(e))?;
        sink.bytes += 1;
        sink.count += 1;
        self.total += 1;
        Ok(())
    }

    /// Flushes every file; returns per-type `(count, bytes)`.
    pub(crate) fn finish(self) -> Result<BTreeMap<String, (u64, u64)>, GenerateError> {
        let mut per_type = BTreeMap::new();
        for mut sink in self.sinks {
            sink.writer.flush().map_err(|e| sink.io_error(e))?;
            per_type.insert(sink.ty.name().to_owned(), (sink.count, sink.bytes));
        }
        Ok(per_type)
    }
}
