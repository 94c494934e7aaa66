//! `organizeOutputBy=Patient`: one block per patient, files ending between blocks.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::Ordering,
};

use bulkfhir_model::{ResourceId, ResourceRef, ResourceType, json::write_json_string};
use bulkfhir_output::FileWriter;
use bulkfhir_store::{ScanOptions, StoredResource};
use memchr::memmem;

use crate::{
    ExportError,
    docs::{Checkpoint, FileEntry, FileKind},
    unit::{JobContext, append_resource, collect_supporting, owner, parse_type, save},
};

/// `organizeOutputBy=Patient`: writes one block per member in `range`.
///
/// A block (header, Patient, compartment, supporting resources) is built in memory — the IG
/// allows one block of buffering — then appended to the current file. Files end between blocks;
/// a block larger than a file is split into files that each start with the header line, chained
/// by `continuesInFile`. The checkpoint is saved whenever a file ends, naming the first member
/// whose block is not yet in a finished file, so a resumed unit rewrites exactly the unfinished
/// file.
pub(crate) async fn run_blocks(
    ctx: &JobContext,
    unit_index: u32,
    mut checkpoint: Checkpoint,
    (first, end): (usize, usize),
    part: u32,
    after_seq: u64,
) -> Result<Checkpoint, ExportError> {
    let max_lines = ctx.config.max_resources_per_file.max(1);
    let mut file = BlockFile::default();
    let start = checkpoint.member_idx.max(first);
    checkpoint.member_idx = start;
    for member_idx in start..end {
        ctx.check_cancelled()?;
        let (block, lines) = build_block(ctx, member_idx, after_seq, &mut checkpoint).await?;
        if lines.len() <= 1 {
            continue; // nothing but the header: this patient has nothing to export
        }
        let n_resources = (lines.len() - 1) as u64;
        if file.lines > 0 && file.lines + n_resources > max_lines {
            file.finish(ctx, &mut checkpoint, None).await?;
            checkpoint.member_idx = member_idx;
            save(ctx, unit_index, &checkpoint, false).await?;
            ctx.check_draining()?;
        }
        if n_resources <= max_lines {
            file.append(ctx, &checkpoint, part, &block, n_resources).await?;
        } else {
            // Too big for one file: split it, repeating the header (spec F10).
            let header = &block[..lines[1]];
            let mut chunk_start = 1;
            while chunk_start < lines.len() {
                let chunk_end = (chunk_start + usize::try_from(max_lines).unwrap_or(usize::MAX))
                    .min(lines.len());
                let from = lines[chunk_start];
                let to = lines.get(chunk_end).copied().unwrap_or(block.len());
                let mut chunk = Vec::with_capacity(header.len() + to - from);
                chunk.extend_from_slice(header);
                chunk.extend_from_slice(&block[from..to]);
                if file.lines > 0 {
                    file.finish(ctx, &mut checkpoint, None).await?;
                }
                file.append(ctx, &checkpoint, part, &chunk, (chunk_end - chunk_start) as u64)
                    .await?;
                chunk_start = chunk_end;
                if chunk_start < lines.len() {
                    let next = block_file_name(ctx, &checkpoint, part, 1);
                    file.finish(ctx, &mut checkpoint, Some(next)).await?;
                }
            }
        }
        ctx.written.fetch_add(n_resources, Ordering::Relaxed);
    }
    if file.lines > 0 {
        file.finish(ctx, &mut checkpoint, None).await?;
    }
    checkpoint.member_idx = end;
    save(ctx, unit_index, &checkpoint, true).await?;
    Ok(checkpoint)
}

/// The file being filled by a `Blocks` unit.
#[derive(Default)]
struct BlockFile {
    writer: Option<FileWriter>,
    name: String,
    lines: u64,
}

impl BlockFile {
    async fn append(
        &mut self,
        ctx: &JobContext,
        checkpoint: &Checkpoint,
        part: u32,
        bytes: &[u8],
        n_resources: u64,
    ) -> Result<(), ExportError> {
        if self.writer.is_none() {
            self.name = block_file_name(ctx, checkpoint, part, 0);
            self.writer = Some(ctx.output.create(&ctx.key(&self.name)?, ctx.compression()).await?);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer.write(bytes).await?;
        }
        self.lines += n_resources;
        Ok(())
    }

    async fn finish(
        &mut self,
        ctx: &JobContext,
        checkpoint: &mut Checkpoint,
        continues_in: Option<String>,
    ) -> Result<(), ExportError> {
        let Some(writer) = self.writer.take() else { return Ok(()) };
        let finished = writer.finish().await?;
        ctx.file_finished(&self.name, self.lines, finished.stored_bytes);
        checkpoint.files.push(FileEntry {
            name: std::mem::take(&mut self.name),
            resource_type: "Patient".to_owned(),
            count: self.lines,
            bytes: finished.stored_bytes,
            kind: FileKind::Output,
            continues_in,
        });
        checkpoint.written += self.lines;
        self.lines = 0;
        Ok(())
    }
}

/// `Patient-blocks-{part}-{n}.ndjson`: the n-th file of this unit (`ahead` files after the next).
fn block_file_name(ctx: &JobContext, checkpoint: &Checkpoint, part: u32, ahead: usize) -> String {
    let number = checkpoint.files.len() + 1 + ahead;
    format!("Patient-blocks-{part}-{number}{}", ctx.extension())
}

/// One patient's block: the header line, then the lines; returns the bytes and the offset of
/// each line (`offsets[0]` is the header).
async fn build_block(
    ctx: &JobContext,
    member_idx: usize,
    after_seq: u64,
    checkpoint: &mut Checkpoint,
) -> Result<(Vec<u8>, Vec<usize>), ExportError> {
    let patient = &ctx.plan.members[member_idx];
    let patient_id = ResourceId::parse(patient).map_err(|e| ExportError::Corrupt(e.to_string()))?;
    let mut block = Vec::new();
    let mut offsets = vec![0];
    block.extend_from_slice(br#"{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"#);
    write_json_string(&mut block, &format!("Patient/{patient}"));
    block.extend_from_slice(b"}}]}\n");
    let mut references = BTreeSet::new();
    let finder = memmem::Finder::new(br#""reference":""#);
    let mut push = |block: &mut Vec<u8>,
                    offsets: &mut Vec<usize>,
                    resource: &StoredResource,
                    references: &mut BTreeSet<String>| {
        offsets.push(block.len());
        append_resource(ctx, block, resource, checkpoint);
        block.push(b'\n');
        collect_supporting(ctx, &finder, &resource.body, references);
    };
    if ctx.plan.block_patient {
        let found = ctx
            .store
            .read_many_at(ctx.snapshot, ResourceType::PATIENT, std::slice::from_ref(&patient_id))
            .await?;
        for resource in found.iter().filter(|r| r.seq > after_seq) {
            if ctx.passes_filters(resource)? {
                push(&mut block, &mut offsets, resource, &mut references);
            }
        }
    }
    for type_name in &ctx.plan.block_types {
        let resource_type = parse_type(type_name)?;
        let mut after = after_seq;
        loop {
            let options = ScanOptions {
                after_seq: after,
                limit: ctx.config.page_size,
                deleted: false,
                in_any_compartment: true,
                with_patients: true,
                before_seq: u64::MAX,
            };
            let page = ctx
                .store
                .scan_compartment(ctx.snapshot, &patient_id, resource_type, options)
                .await?;
            for resource in page
                .resources
                .iter()
                .filter(|r| owner(r, &ctx.member_set).is_none_or(|o| o == patient.as_str()))
            {
                if ctx.passes_filters(resource)? {
                    push(&mut block, &mut offsets, resource, &mut references);
                }
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    let mut by_type: BTreeMap<ResourceType, Vec<ResourceId>> = BTreeMap::new();
    for reference in &references {
        if let Some(target) = ResourceRef::parse(reference) {
            by_type.entry(target.resource_type).or_default().push(target.id);
        }
    }
    for (resource_type, ids) in by_type {
        let mut found = ctx.store.read_many_at(ctx.snapshot, resource_type, &ids).await?;
        found.sort_by_key(|r| r.seq);
        for resource in &found {
            offsets.push(block.len());
            append_resource(ctx, &mut block, resource, checkpoint);
            block.push(b'\n');
        }
    }
    Ok((block, offsets))
}
