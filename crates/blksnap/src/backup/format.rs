// SPDX-License-Identifier: GPL-2.0
//! The backup files' own formats: the header of an incremental file and
//! the `.sums` files of block hashes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use uuid::Uuid;
use xxhash_rust::xxh3::xxh3_64;

use super::{backup_err, BlockRange, Geometry, FORMAT};
use crate::error::{io_err, Result};

/// The magic number at the start of an incremental file.
pub const INCREMENTAL_MAGIC: &[u8; 8] = b"BLKSNAPI";

/// The header of an incremental file; the data of its ranges follows, in
/// order, each block `block_size` bytes except a partial last block of the
/// device.
///
/// Layout (little-endian): magic `BLKSNAPI`, version `u32`, block size
/// `u32`, capacity `u64`, generation id (16 bytes), snap number `u8`, since
/// snap number `u8`, 6 bytes of padding, range count `u64`, then per range
/// first block `u64` and block count `u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalHeader {
    /// Block size in bytes.
    pub block_size: u32,
    /// Device capacity in bytes.
    pub capacity: u64,
    /// CBT generation.
    pub generation_id: Uuid,
    /// CBT snap number of this backup.
    pub snap_number: u8,
    /// CBT snap number of the backup before.
    pub since_snap_number: u8,
    /// The blocks held.
    pub ranges: Vec<BlockRange>,
}

const HEADER_FIXED: usize = 56;

impl IncrementalHeader {
    /// The encoded header.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_FIXED + 16 * self.ranges.len());
        v.extend_from_slice(INCREMENTAL_MAGIC);
        v.extend_from_slice(&FORMAT.to_le_bytes());
        v.extend_from_slice(&self.block_size.to_le_bytes());
        v.extend_from_slice(&self.capacity.to_le_bytes());
        v.extend_from_slice(self.generation_id.as_bytes());
        v.push(self.snap_number);
        v.push(self.since_snap_number);
        v.extend_from_slice(&[0; 6]);
        v.extend_from_slice(&(self.ranges.len() as u64).to_le_bytes());
        for r in &self.ranges {
            v.extend_from_slice(&r.first.to_le_bytes());
            v.extend_from_slice(&r.count.to_le_bytes());
        }
        v
    }

    /// The size of the encoded header.
    pub fn len(&self) -> u64 {
        (HEADER_FIXED + 16 * self.ranges.len()) as u64
    }

    /// Always false: a header has a fixed part.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads a header, checking it against itself (ranges in order and
    /// inside the device).
    pub fn decode(r: &mut impl Read) -> std::result::Result<Self, String> {
        let mut fixed = [0u8; HEADER_FIXED];
        r.read_exact(&mut fixed)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        if &fixed[0..8] != INCREMENTAL_MAGIC {
            return Err("not an incremental backup file (bad magic)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(fixed[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(fixed[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT {
            return Err(format!(
                "incremental file version {version} is not supported"
            ));
        }
        let block_size = u32_at(12);
        let capacity = u64_at(16);
        let generation_id = Uuid::from_bytes(fixed[24..40].try_into().unwrap());
        let snap_number = fixed[40];
        let since_snap_number = fixed[41];
        let n = u64_at(48);
        if block_size == 0 {
            return Err("zero block size".into());
        }
        let geo = Geometry::new(block_size.into(), capacity);
        if n > geo.blocks() {
            return Err(format!("{n} ranges for {} blocks", geo.blocks()));
        }
        let mut raw = vec![0u8; 16 * n as usize];
        r.read_exact(&mut raw)
            .map_err(|e| format!("cannot read the range table: {e}"))?;
        let mut ranges = Vec::with_capacity(n as usize);
        let mut next = 0u64;
        for c in raw.chunks_exact(16) {
            let first = u64::from_le_bytes(c[0..8].try_into().unwrap());
            let count = u64::from_le_bytes(c[8..16].try_into().unwrap());
            let end = first.checked_add(count).ok_or("range overflow")?;
            if count == 0 || first < next || end > geo.blocks() {
                return Err(format!("bad range {first}+{count} in the range table"));
            }
            next = end;
            ranges.push(BlockRange { first, count });
        }
        Ok(IncrementalHeader {
            block_size,
            capacity,
            generation_id,
            snap_number,
            since_snap_number,
            ranges,
        })
    }
}

/// The hash of one block's data, as in the `.sums` files.
pub fn block_hash(data: &[u8]) -> u64 {
    xxh3_64(data)
}

/// Checks that the `.sums` file `path`, of `len` bytes, holds `blocks`
/// hashes.
fn check_sums_len(path: &Path, len: u64, blocks: u64) -> Result<()> {
    if len != blocks * 8 {
        return Err(backup_err(
            path,
            format!("{len} bytes of block hashes, expected {}", blocks * 8),
        ));
    }
    Ok(())
}

/// Reads a `.sums` file of `blocks` hashes.
pub fn read_sums(path: &Path, blocks: u64) -> Result<Vec<u64>> {
    let raw = std::fs::read(path).map_err(|e| io_err("read", path, &e))?;
    check_sums_len(path, raw.len() as u64, blocks)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Writes the `.sums` file `to` of an incremental backup: the previous
/// backup's `from` (of `blocks` hashes) with the hashes of the blocks of
/// `ranges` replaced by `changed` (in the ranges' order).
///
/// The copy is the kernel's (`copy_file_range`, a reflink where the
/// filesystem shares blocks), and only the changed hashes are written, so
/// the cost follows the changed blocks, not the device's size.
pub fn derive_sums(
    from: &Path,
    to: &Path,
    blocks: u64,
    ranges: &[BlockRange],
    changed: &[u64],
) -> Result<()> {
    let src = File::open(from).map_err(|e| io_err("open", from, &e))?;
    let len = src.metadata().map_err(|e| io_err("stat", from, &e))?.len();
    check_sums_len(from, len, blocks)?;
    if ranges.iter().map(|r| r.count).sum::<u64>() != changed.len() as u64
        || ranges.iter().any(|r| r.first + r.count > blocks)
    {
        return Err(backup_err(to, "changed hashes do not match their ranges"));
    }
    let mut dst = File::create(to).map_err(|e| io_err("create", to, &e))?;
    let werr = |e: std::io::Error| io_err("write", to, &e);
    std::io::copy(&mut &src, &mut dst).map_err(werr)?;
    let mut rest = changed;
    for r in ranges {
        let (these, after) = rest.split_at(r.count as usize);
        let raw: Vec<u8> = these.iter().flat_map(|s| s.to_le_bytes()).collect();
        dst.write_all_at(&raw, r.first * 8).map_err(werr)?;
        rest = after;
    }
    dst.sync_all().map_err(werr)
}

/// Writes a `.sums` file.
pub fn write_sums(path: &Path, sums: &[u64]) -> Result<()> {
    let mut raw = Vec::with_capacity(sums.len() * 8);
    for s in sums {
        raw.extend_from_slice(&s.to_le_bytes());
    }
    let mut f = File::create(path).map_err(|e| io_err("create", path, &e))?;
    f.write_all(&raw)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("write", path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn derived_sums_are_the_previous_with_the_changed_replaced() {
        let dir = TempDir::new("sums");
        let (prev, next) = (dir.path().join("a.sums"), dir.path().join("b.sums"));
        let old: Vec<u64> = (0..100).collect();
        write_sums(&prev, &old).unwrap();
        let ranges = [
            BlockRange { first: 0, count: 2 },
            BlockRange {
                first: 50,
                count: 3,
            },
            BlockRange {
                first: 99,
                count: 1,
            },
        ];
        let changed = [1000, 1001, 1050, 1051, 1052, 1099];
        derive_sums(&prev, &next, 100, &ranges, &changed).unwrap();
        let mut want = old.clone();
        for (b, s) in [0, 1, 50, 51, 52, 99].into_iter().zip(changed) {
            want[b] = s;
        }
        assert_eq!(read_sums(&next, 100).unwrap(), want);
        // The previous file is untouched.
        assert_eq!(read_sums(&prev, 100).unwrap(), old);
        // Hashes that do not fill the ranges, ranges past the end, or a
        // previous file of another size are refused.
        assert!(derive_sums(&prev, &next, 100, &ranges, &changed[..5]).is_err());
        let past = [BlockRange {
            first: 99,
            count: 2,
        }];
        assert!(derive_sums(&prev, &next, 100, &past, &[1, 2]).is_err());
        assert!(derive_sums(&prev, &next, 101, &ranges, &changed).is_err());
    }

    #[test]
    fn header_round_trip() {
        let h = IncrementalHeader {
            block_size: 4096,
            capacity: 10 * 4096 + 100,
            generation_id: Uuid::from_bytes([7; 16]),
            snap_number: 9,
            since_snap_number: 8,
            ranges: vec![
                BlockRange { first: 1, count: 2 },
                BlockRange { first: 7, count: 4 },
            ],
        };
        let raw = h.encode();
        assert_eq!(raw.len() as u64, h.len());
        assert_eq!(IncrementalHeader::decode(&mut &raw[..]).unwrap(), h);
        let mut bad = raw.clone();
        bad[0] = b'X';
        assert!(IncrementalHeader::decode(&mut &bad[..])
            .unwrap_err()
            .contains("magic"));
        // A range past the end of the device, overlapping ranges.
        let mut h2 = h.clone();
        h2.ranges[1].count = 5;
        assert!(IncrementalHeader::decode(&mut &h2.encode()[..]).is_err());
        h2.ranges = vec![
            BlockRange { first: 1, count: 2 },
            BlockRange { first: 2, count: 1 },
        ];
        assert!(IncrementalHeader::decode(&mut &h2.encode()[..]).is_err());
        assert!(IncrementalHeader::decode(&mut &raw[..20]).is_err());
    }
}
