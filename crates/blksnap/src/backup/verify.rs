// SPDX-License-Identifier: GPL-2.0
//! Checking: an image against the block hashes of a backup, every file of
//! a chain against its own hashes, and two images byte for byte.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::image::{for_each_block, BATCH_BYTES};
use super::{
    backup_err, block_hash, open_read, read_sums, size_of, BlockRange, DeviceChain, Geometry,
    IncrementalHeader, Kind,
};
use crate::error::{io_err, Result};

/// Hashes every block of `image` and returns the blocks whose hash differs
/// from `sums`.
pub fn verify_image(
    image: &File,
    image_path: &Path,
    geo: Geometry,
    sums: &[u64],
    progress: &dyn Fn(u64),
) -> Result<Vec<u64>> {
    let size = size_of(image, image_path)?;
    if size < geo.capacity {
        return Err(backup_err(
            image_path,
            format!("{size} bytes, the backup has {}", geo.capacity),
        ));
    }
    let all = [BlockRange {
        first: 0,
        count: geo.blocks(),
    }];
    let mut bad = Vec::new();
    for_each_block(image, image_path, geo, &all, progress, |b, data| {
        if sums.get(b as usize) != Some(&block_hash(data)) {
            bad.push(b);
        }
        Ok(())
    })?;
    Ok(bad)
}

/// A problem [`verify_files`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The backup number.
    pub seq: u64,
    /// The file.
    pub file: String,
    /// What is wrong.
    pub problem: String,
}

/// Checks every data file of `dc` against its block hashes: a full image
/// block by block, an incremental's blocks against the hashes of its own
/// backup. Returns the problems found (empty when all is well).
pub fn verify_files(dir: &Path, dc: &DeviceChain, progress: &dyn Fn(u64)) -> Vec<FileProblem> {
    let geo = dc.geometry();
    let mut problems = Vec::new();
    for e in &dc.backups {
        let mut problem = |p: String| {
            problems.push(FileProblem {
                seq: e.seq,
                file: e.file.clone(),
                problem: p,
            })
        };
        let sums = match read_sums(&dir.join(&e.sums), geo.blocks()) {
            Ok(s) => s,
            Err(err) => {
                problem(err.to_string());
                continue;
            }
        };
        let path = dir.join(&e.file);
        let bad = match e.kind {
            Kind::Full => open_read(&path).and_then(|f| {
                let len = size_of(&f, &path)?;
                if len != geo.capacity {
                    return Err(backup_err(
                        &path,
                        format!("{len} bytes, expected {}", geo.capacity),
                    ));
                }
                verify_image(&f, &path, geo, &sums, progress)
            }),
            Kind::Incremental => verify_incremental(&path, geo, &sums, progress),
        };
        match bad {
            Ok(bad) if bad.is_empty() => {}
            Ok(bad) => problem(format!(
                "{} blocks differ from their recorded hashes (first: block {})",
                bad.len(),
                bad[0]
            )),
            Err(err) => problem(err.to_string()),
        }
    }
    problems
}

fn verify_incremental(
    path: &Path,
    geo: Geometry,
    sums: &[u64],
    progress: &dyn Fn(u64),
) -> Result<Vec<u64>> {
    let f = open_read(path)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let h = IncrementalHeader::decode(&mut r).map_err(|e| backup_err(path, e))?;
    if u64::from(h.block_size) != geo.block_size || h.capacity != geo.capacity {
        return Err(backup_err(path, "geometry differs from the chain's"));
    }
    let mut bad = Vec::new();
    let mut buf = vec![0u8; geo.block_size as usize];
    for range in &h.ranges {
        for b in range.first..range.first + range.count {
            let len = geo.bytes(b, 1) as usize;
            r.read_exact(&mut buf[..len])
                .map_err(|e| backup_err(path, format!("truncated data at block {b}: {e}")))?;
            if sums[b as usize] != block_hash(&buf[..len]) {
                bad.push(b);
            }
            progress(len as u64);
        }
    }
    Ok(bad)
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Size of the first.
    pub size_a: u64,
    /// Size of the second.
    pub size_b: u64,
    /// Blocks (of the given size) that differ in the common length.
    pub differing_blocks: u64,
    /// The byte offset of the first difference in the common length.
    pub first_difference: Option<u64>,
}

impl Comparison {
    /// Same size and same bytes.
    pub fn equal(&self) -> bool {
        self.size_a == self.size_b && self.differing_blocks == 0
    }
}

/// Compares two files or devices byte for byte, in blocks of `block_size`.
pub fn compare(a: &Path, b: &Path, block_size: u64, progress: &dyn Fn(u64)) -> Result<Comparison> {
    let fa = open_read(a)?;
    let fb = open_read(b)?;
    let size_a = size_of(&fa, a)?;
    let size_b = size_of(&fb, b)?;
    let geo = Geometry::new(block_size, size_a.min(size_b));
    let per_batch = (BATCH_BYTES / geo.block_size).max(1);
    let mut ba = vec![0u8; (per_batch * geo.block_size) as usize];
    let mut bb = ba.clone();
    let mut differing_blocks = 0;
    let mut first_difference = None;
    let mut blk = 0;
    while blk < geo.blocks() {
        let n = per_batch.min(geo.blocks() - blk);
        let len = geo.bytes(blk, n) as usize;
        fa.read_exact_at(&mut ba[..len], geo.offset(blk))
            .map_err(|e| io_err("read", a, &e))?;
        fb.read_exact_at(&mut bb[..len], geo.offset(blk))
            .map_err(|e| io_err("read", b, &e))?;
        for (i, (ca, cb)) in ba[..len]
            .chunks(geo.block_size as usize)
            .zip(bb[..len].chunks(geo.block_size as usize))
            .enumerate()
        {
            if ca != cb {
                differing_blocks += 1;
                if first_difference.is_none() {
                    let at = ca.iter().zip(cb).position(|(x, y)| x != y).unwrap_or(0);
                    first_difference = Some(geo.offset(blk + i as u64) + at as u64);
                }
            }
        }
        progress(len as u64);
        blk += n;
    }
    Ok(Comparison {
        size_a,
        size_b,
        differing_blocks,
        first_difference,
    })
}
