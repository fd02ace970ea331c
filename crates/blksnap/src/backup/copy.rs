// SPDX-License-Identifier: GPL-2.0
//! Backing up: the full image file or the incremental file of a backup,
//! written from a snapshot image, with the block hashes of the backup.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::image::{all_zero, for_each_block};
use super::{block_hash, BlockRange, Geometry, IncrementalHeader};
use crate::error::{io_err, Result};

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyStats {
    /// Blocks copied.
    pub blocks: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// Copies the whole image `src` into the new file `dst` (holes for zero
/// blocks) and returns the block hashes.
pub fn write_full(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    geo: Geometry,
    progress: &dyn Fn(u64),
) -> Result<(Vec<u64>, CopyStats)> {
    let all = [BlockRange {
        first: 0,
        count: geo.blocks(),
    }];
    let mut sums = Vec::with_capacity(geo.blocks() as usize);
    let mut stats = CopyStats::default();
    for_each_block(src, src_path, geo, &all, progress, |b, data| {
        sums.push(block_hash(data));
        stats.blocks += 1;
        stats.bytes += data.len() as u64;
        if !all_zero(data) {
            dst.write_all_at(data, geo.offset(b))
                .map_err(|e| io_err("write", dst_path, &e))?;
        }
        Ok(())
    })?;
    dst.set_len(geo.capacity)
        .and_then(|()| dst.sync_all())
        .map_err(|e| io_err("write", dst_path, &e))?;
    Ok((sums, stats))
}

/// Writes an incremental file: `header`, then the data of its ranges read
/// from `src`; returns the hashes of the blocks written, in the order of
/// the header's ranges (see [`derive_sums`](super::derive_sums)).
pub fn write_incremental(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    header: &IncrementalHeader,
    progress: &dyn Fn(u64),
) -> Result<(Vec<u64>, CopyStats)> {
    let geo = Geometry::new(header.block_size.into(), header.capacity);
    let mut out = BufWriter::with_capacity(1 << 20, dst);
    let werr = |e: std::io::Error| io_err("write", dst_path, &e);
    out.write_all(&header.encode()).map_err(werr)?;
    let mut stats = CopyStats::default();
    let mut sums = Vec::new();
    for_each_block(src, src_path, geo, &header.ranges, progress, |_, data| {
        sums.push(block_hash(data));
        stats.blocks += 1;
        stats.bytes += data.len() as u64;
        out.write_all(data).map_err(werr)
    })?;
    let f = out.into_inner().map_err(|e| werr(e.into_error()))?;
    f.sync_all().map_err(werr)?;
    Ok((sums, stats))
}
