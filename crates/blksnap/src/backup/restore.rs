// SPDX-License-Identifier: GPL-2.0
//! Restoring: an image rebuilt from the last full backup up to a point and
//! the incrementals after it.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::libc;

use super::image::{all_zero, for_each_block, BATCH_BYTES};
use super::{
    backup_err, open_read, size_of, BackupEntry, BlockRange, DeviceChain, Geometry,
    IncrementalHeader, Kind,
};
use crate::error::{io_err, Result};

/// Applies one incremental file to `dst`; returns the bytes written.
pub fn apply_incremental(
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    geo: Geometry,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let f = open_read(src_path)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let h = IncrementalHeader::decode(&mut r).map_err(|e| backup_err(src_path, e))?;
    if u64::from(h.block_size) != geo.block_size || h.capacity != geo.capacity {
        return Err(backup_err(
            src_path,
            format!(
                "block size {} and capacity {} differ from the chain's {} and {}",
                h.block_size, h.capacity, geo.block_size, geo.capacity
            ),
        ));
    }
    let per_batch = (BATCH_BYTES / geo.block_size).max(1);
    let mut buf = vec![0u8; (per_batch * geo.block_size) as usize];
    let mut written = 0;
    for range in &h.ranges {
        let mut b = range.first;
        let end = range.first + range.count;
        while b < end {
            let n = per_batch.min(end - b);
            let len = geo.bytes(b, n) as usize;
            r.read_exact(&mut buf[..len])
                .map_err(|e| backup_err(src_path, format!("truncated data at block {b}: {e}")))?;
            dst.write_all_at(&buf[..len], geo.offset(b))
                .map_err(|e| io_err("write", dst_path, &e))?;
            progress(len as u64);
            written += len as u64;
            b += n;
        }
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)
        .map_err(|e| io_err("read", src_path, &e))?
        != 0
    {
        return Err(backup_err(
            src_path,
            "data beyond the blocks of the range table",
        ));
    }
    Ok(written)
}

/// Copies a full image file to `dst`; with `sparse` (a fresh regular file)
/// zero blocks are left as holes. Returns the bytes written.
pub fn apply_full(
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    geo: Geometry,
    sparse: bool,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let src = open_read(src_path)?;
    let len = size_of(&src, src_path)?;
    if len != geo.capacity {
        return Err(backup_err(
            src_path,
            format!("{len} bytes, expected {}", geo.capacity),
        ));
    }
    let all = [BlockRange {
        first: 0,
        count: geo.blocks(),
    }];
    let mut written = 0;
    for_each_block(&src, src_path, geo, &all, progress, |b, data| {
        if !sparse || !all_zero(data) {
            dst.write_all_at(data, geo.offset(b))
                .map_err(|e| io_err("write", dst_path, &e))?;
            written += data.len() as u64;
        }
        Ok(())
    })?;
    Ok(written)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreStats {
    /// The backup number restored.
    pub seq: u64,
    /// The backups applied (the full one first).
    pub applied: Vec<u64>,
    /// Bytes written to the output.
    pub bytes: u64,
}

/// The total bytes a restore of `entries` reads (for a progress bar).
pub fn restore_bytes(dir: &Path, dc: &DeviceChain, entries: &[&BackupEntry]) -> u64 {
    entries
        .iter()
        .map(|e| match e.kind {
            Kind::Full => dc.capacity,
            Kind::Incremental => std::fs::metadata(dir.join(&e.file))
                .map(|m| m.len())
                .unwrap_or(0),
        })
        .sum()
}

/// Rebuilds the image of `dc` as of backup `seq` (the last if `None`) into
/// `output`: a regular file (created or truncated, sparse) or a block
/// device at least as large as the image.
pub fn restore(
    dir: &Path,
    dc: &DeviceChain,
    seq: Option<u64>,
    output: &Path,
    progress: &dyn Fn(u64),
) -> Result<RestoreStats> {
    let entries = dc
        .restore_chain(seq)
        .map_err(|reason| backup_err(dir, reason))?;
    let geo = dc.geometry();
    let exists_as_dev = std::fs::metadata(output)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let dst = if exists_as_dev {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(output)
            .map_err(|e| io_err("open", output, &e))?;
        let size = size_of(&f, output)?;
        if size < geo.capacity {
            return Err(backup_err(
                output,
                format!(
                    "the device has {size} bytes, the image needs {}",
                    geo.capacity
                ),
            ));
        }
        f
    } else {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(output)
            .map_err(|e| io_err("create", output, &e))?;
        f.set_len(geo.capacity)
            .map_err(|e| io_err("write", output, &e))?;
        f
    };
    let mut bytes = 0;
    let mut applied = Vec::new();
    for e in &entries {
        let path = dir.join(&e.file);
        bytes += match e.kind {
            Kind::Full => apply_full(&path, &dst, output, geo, !exists_as_dev, progress)?,
            Kind::Incremental => apply_incremental(&path, &dst, output, geo, progress)?,
        };
        applied.push(e.seq);
    }
    dst.sync_all().map_err(|e| io_err("write", output, &e))?;
    Ok(RestoreStats {
        seq: entries.last().map_or(0, |e| e.seq),
        applied,
        bytes,
    })
}
