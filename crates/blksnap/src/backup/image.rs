// SPDX-License-Identifier: GPL-2.0
//! Reading images, devices and backup files: opening, sizes, and the
//! batched walk over blocks that copies, restores and checks share.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::libc;

use super::{BlockRange, Geometry};
use crate::error::{io_err, Result};

/// How much is read or written at once (at least one block).
pub(super) const BATCH_BYTES: u64 = 8 << 20;

/// Opens a file or block device for reading.
pub fn open_read(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_err("open", path, &e))
}

/// The size of a file or block device in bytes.
pub fn size_of(file: &File, path: &Path) -> Result<u64> {
    let meta = file.metadata().map_err(|e| io_err("stat", path, &e))?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0))
            .map_err(|e| io_err("seek", path, &e))
    } else {
        Ok(meta.len())
    }
}

/// Whether `file` is a block device.
pub fn is_block_device(file: &File) -> bool {
    file.metadata()
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Calls `f(block, data)` for every block of `ranges`, reading `src` in
/// batches; `progress` gets the bytes of every batch.
pub(super) fn for_each_block(
    src: &File,
    src_path: &Path,
    geo: Geometry,
    ranges: &[BlockRange],
    progress: &dyn Fn(u64),
    mut f: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let per_batch = (BATCH_BYTES / geo.block_size).max(1);
    let mut buf = vec![0u8; (per_batch * geo.block_size) as usize];
    for r in ranges {
        let mut b = r.first;
        let end = r.first + r.count;
        while b < end {
            let n = per_batch.min(end - b);
            let len = geo.bytes(b, n) as usize;
            let data = &mut buf[..len];
            src.read_exact_at(data, geo.offset(b))
                .map_err(|e| io_err("read", src_path, &e))?;
            for (i, chunk) in data.chunks(geo.block_size as usize).enumerate() {
                f(b + i as u64, chunk)?;
            }
            progress(len as u64);
            b += n;
        }
    }
    Ok(())
}

pub(super) fn all_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|&b| b == 0) && words.into_iter().all(|c| c == [0u8; 8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(all_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!all_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!all_zero(&v));
        assert!(all_zero(&[]));
    }
}
