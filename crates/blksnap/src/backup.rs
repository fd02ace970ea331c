// SPDX-License-Identifier: GPL-2.0
//! Full and incremental backups of snapshot images, driven by change
//! tracking (CBT), and their restore and verification.
//!
//! A backup directory holds a chain per device: a full image, then
//! incrementals that each hold only the tracking blocks the CBT map marks
//! as changed since the backup before. `chain.json` records, per device, the
//! CBT `generation_id` and `snap_number` of the last backup; the next one is
//! incremental when the generation is the same (the blocks whose map byte is
//! greater than the saved `snap_number` changed), and full otherwise.
//!
//! Files, for a device named `NAME` and backup number `SEQ` (six digits):
//!
//! * `NAME.SEQ.full`: the raw image (sparse: all-zero blocks are holes);
//! * `NAME.SEQ.incr`: an [`IncrementalHeader`], then the changed blocks'
//!   data in order;
//! * `NAME.SEQ.sums`: the xxh3-64 hash of every tracking block of the image
//!   as it was at that backup (little-endian `u64`s), for [`verify_image`]
//!   and [`verify_files`].
//!
//! A backup of the devices of a taken snapshot:
//!
//! ```no_run
//! use blksnap::backup::{device_name, BackupRun};
//! use blksnap::Control;
//!
//! # fn main() -> blksnap::Result<()> {
//! # let id: blksnap::SnapshotId = Default::default();
//! let ctl = Control::open()?;
//! let mut run = BackupRun::begin("/backup/host1")?;
//! let cbt = ctl.tracker_collect()?;
//! for image in ctl.snapshot_collect_images(id)? {
//!     let info = cbt.iter().find(|c| c.dev_id == image.orig_dev_id).unwrap();
//!     let name = device_name(image.orig_dev_id);
//!     let job = run.prepare(&name, info, false, || ctl.tracker_read_cbt_map_all(image.orig_dev_id))?;
//!     println!("{name}: {:?}, {} bytes to copy", job.plan, job.bytes);
//!     run.copy(&job, image.orig_dev_id, &image.image_path(), &|_bytes| {})?;
//! }
//! for r in run.commit()? {
//!     println!("{}: {} blocks, {} bytes", r.name, r.blocks, r.bytes);
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::libc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::storage::io_err;
use crate::types::{CbtInfo, DevId};

/// The metadata file of a backup directory.
pub const CHAIN_FILE: &str = "chain.json";
/// The version of the metadata and file formats.
pub const FORMAT: u32 = 1;
/// The magic number at the start of an incremental file.
pub const INCREMENTAL_MAGIC: &[u8; 8] = b"BLKSNAPI";

/// How much is read or written at once (at least one block).
const BATCH_BYTES: u64 = 8 << 20;

fn backup_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Backup {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The kind of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The whole image.
    Full,
    /// The blocks changed since the previous backup.
    Incremental,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        })
    }
}

/// One backup of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// The backup number (shared by the devices backed up together).
    pub seq: u64,
    /// Full or incremental.
    pub kind: Kind,
    /// The data file, relative to the backup directory.
    pub file: String,
    /// The block hashes file, relative to the backup directory.
    pub sums: String,
    /// When it was made (seconds since the epoch).
    pub time: u64,
    /// The CBT generation at this backup.
    pub generation_id: Uuid,
    /// The CBT snapshot number of the snapshot this backup was read from.
    pub snap_number: u8,
    /// For an incremental: the `snap_number` it counts changes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_snap_number: Option<u8>,
    /// Tracking blocks copied.
    pub blocks: u64,
    /// Bytes of data copied.
    pub bytes: u64,
}

/// The backups of one device and the CBT state of the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChain {
    /// The device's name (see [`device_name`]).
    pub name: String,
    /// Its `MAJOR:MINOR` at the last backup.
    pub dev_id: String,
    /// The CBT block size in bytes.
    pub block_size: u32,
    /// The device capacity in bytes.
    pub capacity: u64,
    /// The CBT generation at the last backup.
    pub generation_id: Uuid,
    /// The CBT snapshot number of the last backup.
    pub snap_number: u8,
    /// Every backup, oldest first.
    pub backups: Vec<BackupEntry>,
}

impl DeviceChain {
    /// The geometry of the device's images.
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.block_size.into(), self.capacity)
    }

    /// The backups to apply, in order, to rebuild the image as of backup
    /// `seq` (the last one if `None`): the last full backup up to it and
    /// the incrementals after that.
    pub fn restore_chain(
        &self,
        seq: Option<u64>,
    ) -> std::result::Result<Vec<&BackupEntry>, String> {
        let upto: Vec<&BackupEntry> = match seq {
            None => self.backups.iter().collect(),
            Some(seq) => {
                if !self.backups.iter().any(|b| b.seq == seq) {
                    return Err(format!("device {} has no backup number {seq}", self.name));
                }
                self.backups.iter().filter(|b| b.seq <= seq).collect()
            }
        };
        let start = upto
            .iter()
            .rposition(|b| b.kind == Kind::Full)
            .ok_or_else(|| format!("device {} has no full backup", self.name))?;
        Ok(upto[start..].to_vec())
    }

    /// The entry of backup `seq`, or the last one.
    pub fn entry(&self, seq: Option<u64>) -> Option<&BackupEntry> {
        match seq {
            None => self.backups.last(),
            Some(seq) => self.backups.iter().find(|b| b.seq == seq),
        }
    }
}

/// Why a backup must be full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// The device has no backup yet.
    FirstBackup,
    /// A full backup was asked for.
    Requested,
    /// The CBT generation changed: the change history is lost (tracker
    /// removed or recreated, module reloaded, device resized, or the 255
    /// snapshots of a generation used up).
    GenerationChanged,
    /// The CBT block size or the capacity changed.
    GeometryChanged,
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FullReason::FirstBackup => "first_backup",
            FullReason::Requested => "requested",
            FullReason::GenerationChanged => "generation_changed",
            FullReason::GeometryChanged => "geometry_changed",
        })
    }
}

/// What the next backup of a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The whole image.
    Full(FullReason),
    /// The blocks whose CBT byte is greater than `since`.
    Incremental {
        /// The `snap_number` of the previous backup.
        since: u8,
    },
}

/// The metadata of a backup directory (`chain.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// [`FORMAT`].
    pub format: u32,
    /// The number the next backup gets.
    pub next_seq: u64,
    /// The devices.
    pub devices: Vec<DeviceChain>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            format: FORMAT,
            next_seq: 1,
            devices: Vec::new(),
        }
    }
}

impl Chain {
    /// Reads `dir/chain.json`; an empty chain when there is none.
    pub fn load(dir: &Path) -> Result<Chain> {
        let path = dir.join(CHAIN_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Chain::default()),
            Err(e) => return Err(io_err("read", &path, &e)),
        };
        Chain::parse(&text).map_err(|reason| backup_err(&path, reason))
    }

    /// Parses the text of a `chain.json`.
    pub fn parse(text: &str) -> std::result::Result<Chain, String> {
        let chain: Chain =
            serde_json::from_str(text).map_err(|e| format!("bad backup metadata: {e}"))?;
        if chain.format != FORMAT {
            return Err(format!(
                "backup metadata format {} is not supported (this tool reads {FORMAT})",
                chain.format
            ));
        }
        Ok(chain)
    }

    /// Writes `dir/chain.json` atomically (a temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CHAIN_FILE);
        let tmp = dir.join(format!("{CHAIN_FILE}.tmp"));
        let mut text = serde_json::to_string_pretty(self).expect("chain serializes");
        text.push('\n');
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, &e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("write", &tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("rename", &tmp, &e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The chain of the device named `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceChain> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// What the next backup of `name` is, given the device's CBT state
    /// now (read after TAKE) and whether a full one is asked for.
    pub fn plan(&self, name: &str, cbt: &CbtInfo, force_full: bool) -> Plan {
        if force_full {
            return Plan::Full(FullReason::Requested);
        }
        let Some(dc) = self.device(name).filter(|d| !d.backups.is_empty()) else {
            return Plan::Full(FullReason::FirstBackup);
        };
        if dc.generation_id != cbt.generation_id {
            return Plan::Full(FullReason::GenerationChanged);
        }
        if dc.block_size != cbt.block_size || dc.capacity != cbt.device_capacity {
            return Plan::Full(FullReason::GeometryChanged);
        }
        Plan::Incremental {
            since: dc.snap_number,
        }
    }

    /// Records a finished backup of `name` and its CBT state.
    pub fn record(&mut self, name: &str, dev: DevId, cbt: &CbtInfo, entry: BackupEntry) {
        let idx = match self.devices.iter().position(|d| d.name == name) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceChain {
                    name: name.to_string(),
                    dev_id: String::new(),
                    block_size: 0,
                    capacity: 0,
                    generation_id: Uuid::nil(),
                    snap_number: 0,
                    backups: Vec::new(),
                });
                self.devices.len() - 1
            }
        };
        let dc = &mut self.devices[idx];
        dc.dev_id = dev.to_string();
        dc.block_size = cbt.block_size;
        dc.capacity = cbt.device_capacity;
        dc.generation_id = cbt.generation_id;
        dc.snap_number = cbt.snap_number;
        self.next_seq = self.next_seq.max(entry.seq + 1);
        dc.backups.push(entry);
    }
}

/// The tracking-block layout of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Block size in bytes.
    pub block_size: u64,
    /// Image size in bytes.
    pub capacity: u64,
}

impl Geometry {
    /// A geometry (a zero block size counts as 1).
    pub fn new(block_size: u64, capacity: u64) -> Self {
        Geometry {
            block_size: block_size.max(1),
            capacity,
        }
    }

    /// The number of blocks (the last may be partial).
    pub fn blocks(&self) -> u64 {
        self.capacity.div_ceil(self.block_size)
    }

    /// The byte offset of block `b`.
    pub fn offset(&self, b: u64) -> u64 {
        b * self.block_size
    }

    /// The bytes of `count` blocks from `first` (the last may be partial).
    pub fn bytes(&self, first: u64, count: u64) -> u64 {
        let start = self.offset(first).min(self.capacity);
        let end = self.offset(first + count).min(self.capacity);
        end - start
    }

    /// The bytes of the blocks of `ranges`.
    pub fn range_bytes(&self, ranges: &[BlockRange]) -> u64 {
        ranges.iter().map(|r| self.bytes(r.first, r.count)).sum()
    }
}

/// A run of tracking blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockRange {
    /// The first block.
    pub first: u64,
    /// The number of blocks.
    pub count: u64,
}

/// The runs of blocks whose CBT byte is greater than `since`, among the
/// first `blocks` bytes of `map`.
///
/// ```
/// use blksnap::backup::{changed_blocks, BlockRange};
///
/// let map = [1, 3, 3, 1, 0, 2, 4];
/// assert_eq!(
///     changed_blocks(&map, 1, 7),
///     [BlockRange { first: 1, count: 2 }, BlockRange { first: 5, count: 2 }]
/// );
/// ```
pub fn changed_blocks(map: &[u8], since: u8, blocks: u64) -> Vec<BlockRange> {
    let n = usize::try_from(blocks).unwrap_or(usize::MAX).min(map.len());
    let mut out: Vec<BlockRange> = Vec::new();
    for (i, &b) in map[..n].iter().enumerate() {
        if b > since {
            let i = i as u64;
            match out.last_mut() {
                Some(r) if r.first + r.count == i => r.count += 1,
                _ => out.push(BlockRange { first: i, count: 1 }),
            }
        }
    }
    out
}

/// The number of blocks in `ranges`.
pub fn count_blocks(ranges: &[BlockRange]) -> u64 {
    ranges.iter().map(|r| r.count).sum()
}

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

/// Reads a `.sums` file of `blocks` hashes.
pub fn read_sums(path: &Path, blocks: u64) -> Result<Vec<u64>> {
    let raw = std::fs::read(path).map_err(|e| io_err("read", path, &e))?;
    if raw.len() as u64 != blocks * 8 {
        return Err(backup_err(
            path,
            format!(
                "{} bytes of block hashes, expected {}",
                raw.len(),
                blocks * 8
            ),
        ));
    }
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
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
fn for_each_block(
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

fn all_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|&b| b == 0) && words.into_iter().all(|c| c == [0u8; 8])
}

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
/// from `src`; updates `sums` (the hashes of the previous backup) to this
/// backup's.
pub fn write_incremental(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    header: &IncrementalHeader,
    sums: &mut [u64],
    progress: &dyn Fn(u64),
) -> Result<CopyStats> {
    let geo = Geometry::new(header.block_size.into(), header.capacity);
    let mut out = BufWriter::with_capacity(1 << 20, dst);
    let werr = |e: std::io::Error| io_err("write", dst_path, &e);
    out.write_all(&header.encode()).map_err(werr)?;
    let mut stats = CopyStats::default();
    for_each_block(src, src_path, geo, &header.ranges, progress, |b, data| {
        sums[b as usize] = block_hash(data);
        stats.blocks += 1;
        stats.bytes += data.len() as u64;
        out.write_all(data).map_err(werr)
    })?;
    let f = out.into_inner().map_err(|e| werr(e.into_error()))?;
    f.sync_all().map_err(werr)?;
    Ok(stats)
}

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

/// The name a device's files get: its kernel name (`DEVNAME` of
/// `/sys/dev/block/MAJOR:MINOR/uevent`, `/` replaced by `_`), or
/// `dev-MAJOR-MINOR`.
pub fn device_name(dev: DevId) -> String {
    let uevent =
        std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).unwrap_or_default();
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| valid_name(n))
        .map(|n| n.replace('/', "_"))
        .unwrap_or_else(|| format!("dev-{}-{}", dev.major, dev.minor))
}

/// Whether `name` is usable as a device name in a backup directory.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// What [`BackupRun::prepare`] decided for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The device name.
    pub name: String,
    /// Full or incremental, and why.
    pub plan: Plan,
    /// The device's CBT state now.
    pub cbt: CbtInfo,
    /// The blocks to copy.
    pub ranges: Vec<BlockRange>,
    /// The bytes to copy.
    pub bytes: u64,
}

/// One device's backup in a [`BackupRun`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResult {
    /// The device name.
    pub name: String,
    /// The original device.
    pub dev: DevId,
    /// The backup number.
    pub seq: u64,
    /// Full or incremental.
    pub kind: Kind,
    /// For a full backup, why.
    pub full_reason: Option<FullReason>,
    /// The data file (in the backup directory).
    pub file: String,
    /// Blocks of the device.
    pub blocks_total: u64,
    /// Blocks copied.
    pub blocks: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Seconds the copy took.
    pub seconds: f64,
    /// The CBT generation.
    pub generation_id: Uuid,
    /// The CBT snap number saved for the next backup.
    pub snap_number: u8,
}

/// One backup of several devices into a backup directory: [`prepare`]
/// and [`copy`] each device, then [`commit`] saves the metadata. Dropped
/// without a commit, it deletes the files it wrote.
///
/// [`prepare`]: BackupRun::prepare
/// [`copy`]: BackupRun::copy
/// [`commit`]: BackupRun::commit
#[derive(Debug)]
pub struct BackupRun {
    dir: PathBuf,
    chain: Chain,
    seq: u64,
    written: Vec<PathBuf>,
    results: Vec<DeviceResult>,
    pending: Vec<(String, DevId, CbtInfo, BackupEntry)>,
    committed: bool,
}

impl BackupRun {
    /// Starts a backup into `dir` (created if needed).
    pub fn begin(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, &e))?;
        let chain = Chain::load(dir)?;
        Ok(BackupRun {
            dir: dir.to_path_buf(),
            seq: chain.next_seq,
            chain,
            written: Vec::new(),
            results: Vec::new(),
            pending: Vec::new(),
            committed: false,
        })
    }

    /// The number of this backup.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The metadata as it was at the start.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Decides what to copy of device `name` given its CBT state now;
    /// `read_map` (reading the device's CBT map) is called only for an
    /// incremental.
    pub fn prepare(
        &self,
        name: &str,
        cbt: &CbtInfo,
        force_full: bool,
        read_map: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Job> {
        if !valid_name(name) || name.contains('/') {
            return Err(backup_err(&self.dir, format!("bad device name {name:?}")));
        }
        if self.pending.iter().any(|p| p.0 == name) {
            return Err(backup_err(&self.dir, format!("device {name} given twice")));
        }
        let geo = Geometry::new(cbt.block_size.into(), cbt.device_capacity);
        let plan = self.chain.plan(name, cbt, force_full);
        let ranges = match plan {
            Plan::Full(_) => vec![BlockRange {
                first: 0,
                count: geo.blocks(),
            }],
            Plan::Incremental { since } => changed_blocks(&read_map()?, since, geo.blocks()),
        };
        Ok(Job {
            name: name.to_string(),
            plan,
            cbt: *cbt,
            bytes: geo.range_bytes(&ranges),
            ranges,
        })
    }

    /// Copies `job` from the snapshot image at `image` (of original device
    /// `dev`); `progress` gets the bytes as they are read.
    pub fn copy(
        &mut self,
        job: &Job,
        dev: DevId,
        image: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<DeviceResult> {
        let t0 = Instant::now();
        let geo = Geometry::new(job.cbt.block_size.into(), job.cbt.device_capacity);
        let src = open_read(image)?;
        let size = size_of(&src, image)?;
        if size < geo.capacity {
            return Err(backup_err(
                image,
                format!("the image has {size} bytes, the device {}", geo.capacity),
            ));
        }
        let (kind, ext) = match job.plan {
            Plan::Full(_) => (Kind::Full, "full"),
            Plan::Incremental { .. } => (Kind::Incremental, "incr"),
        };
        let file = format!("{}.{:06}.{ext}", job.name, self.seq);
        let sums_file = format!("{}.{:06}.sums", job.name, self.seq);
        let path = self.dir.join(&file);
        let sums_path = self.dir.join(&sums_file);
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io_err("create", &path, &e))?;
        self.written.push(path.clone());
        let (sums, stats, since) = match job.plan {
            Plan::Full(_) => {
                let (sums, stats) = write_full(&src, image, &dst, &path, geo, progress)?;
                (sums, stats, None)
            }
            Plan::Incremental { since } => {
                let dc = self
                    .chain
                    .device(&job.name)
                    .expect("planned from the chain");
                let last = dc.backups.last().expect("planned from the chain");
                let mut sums = read_sums(&self.dir.join(&last.sums), geo.blocks())?;
                let header = IncrementalHeader {
                    block_size: job.cbt.block_size,
                    capacity: job.cbt.device_capacity,
                    generation_id: job.cbt.generation_id,
                    snap_number: job.cbt.snap_number,
                    since_snap_number: since,
                    ranges: job.ranges.clone(),
                };
                let stats =
                    write_incremental(&src, image, &dst, &path, &header, &mut sums, progress)?;
                (sums, stats, Some(since))
            }
        };
        self.written.push(sums_path.clone());
        write_sums(&sums_path, &sums)?;
        let entry = BackupEntry {
            seq: self.seq,
            kind,
            file: file.clone(),
            sums: sums_file,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            generation_id: job.cbt.generation_id,
            snap_number: job.cbt.snap_number,
            since_snap_number: since,
            blocks: stats.blocks,
            bytes: stats.bytes,
        };
        self.pending.push((job.name.clone(), dev, job.cbt, entry));
        let result = DeviceResult {
            name: job.name.clone(),
            dev,
            seq: self.seq,
            kind,
            full_reason: match job.plan {
                Plan::Full(r) => Some(r),
                Plan::Incremental { .. } => None,
            },
            file,
            blocks_total: geo.blocks(),
            blocks: stats.blocks,
            bytes: stats.bytes,
            seconds: t0.elapsed().as_secs_f64(),
            generation_id: job.cbt.generation_id,
            snap_number: job.cbt.snap_number,
        };
        self.results.push(result.clone());
        Ok(result)
    }

    /// Saves the metadata with every device copied; returns their results.
    pub fn commit(mut self) -> Result<Vec<DeviceResult>> {
        let mut chain = self.chain.clone();
        for (name, dev, cbt, entry) in std::mem::take(&mut self.pending) {
            chain.record(&name, dev, &cbt, entry);
        }
        chain.next_seq = chain.next_seq.max(self.seq + 1);
        chain.save(&self.dir)?;
        self.committed = true;
        Ok(std::mem::take(&mut self.results))
    }
}

impl Drop for BackupRun {
    fn drop(&mut self) {
        if !self.committed {
            for p in &self.written {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn cbt(block_size: u32, capacity: u64, generation: u8, snap: u8) -> CbtInfo {
        CbtInfo {
            dev_id: DevId::new(1, 0),
            block_size,
            device_capacity: capacity,
            block_count: capacity.div_ceil(block_size.into()) as u32,
            generation_id: Uuid::from_bytes([generation; 16]),
            snap_number: snap,
        }
    }

    #[test]
    fn geometry() {
        let g = Geometry::new(4096, 10_000);
        assert_eq!(g.blocks(), 3);
        assert_eq!(g.bytes(0, 3), 10_000);
        assert_eq!(g.bytes(2, 1), 10_000 - 8192);
        assert_eq!(g.bytes(1, 5), 10_000 - 4096);
        assert_eq!(
            g.range_bytes(&[
                BlockRange { first: 0, count: 1 },
                BlockRange { first: 2, count: 1 }
            ]),
            4096 + 1808
        );
        assert_eq!(Geometry::new(0, 5).block_size, 1);
    }

    #[test]
    fn changed() {
        let map = [0u8, 1, 2, 2, 5, 1, 0, 7];
        assert_eq!(changed_blocks(&map, 1, 8).len(), 2);
        assert_eq!(count_blocks(&changed_blocks(&map, 1, 8)), 4);
        assert_eq!(count_blocks(&changed_blocks(&map, 0, 8)), 6);
        assert_eq!(changed_blocks(&map, 7, 8), vec![]);
        // Only the device's blocks count, whatever the map's length.
        assert_eq!(
            changed_blocks(&map, 1, 4),
            vec![BlockRange { first: 2, count: 2 }]
        );
        assert_eq!(count_blocks(&changed_blocks(&map, 0, 100)), 6);
    }

    #[test]
    fn plans() {
        let mut chain = Chain::default();
        let now = cbt(65536, 1 << 20, 1, 3);
        assert_eq!(
            chain.plan("ram0", &now, false),
            Plan::Full(FullReason::FirstBackup)
        );
        let entry = |seq, kind| BackupEntry {
            seq,
            kind,
            file: format!("ram0.{seq}"),
            sums: format!("ram0.{seq}.sums"),
            time: 0,
            generation_id: now.generation_id,
            snap_number: now.snap_number,
            since_snap_number: None,
            blocks: 0,
            bytes: 0,
        };
        chain.record("ram0", DevId::new(1, 0), &now, entry(1, Kind::Full));
        assert_eq!(chain.next_seq, 2);
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 1 << 20, 1, 4), false),
            Plan::Incremental { since: 3 }
        );
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 1 << 20, 1, 4), true),
            Plan::Full(FullReason::Requested)
        );
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 1 << 20, 2, 1), false),
            Plan::Full(FullReason::GenerationChanged)
        );
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 2 << 20, 1, 4), false),
            Plan::Full(FullReason::GeometryChanged)
        );
        assert_eq!(
            chain.plan("ram0", &cbt(4096, 1 << 20, 1, 4), false),
            Plan::Full(FullReason::GeometryChanged)
        );
        assert_eq!(
            chain.plan("ram1", &now, false),
            Plan::Full(FullReason::FirstBackup)
        );

        // Restore chains: the last full one and what follows.
        chain.record("ram0", DevId::new(1, 0), &now, entry(2, Kind::Incremental));
        chain.record("ram0", DevId::new(1, 0), &now, entry(3, Kind::Full));
        chain.record("ram0", DevId::new(1, 0), &now, entry(5, Kind::Incremental));
        let dc = chain.device("ram0").unwrap();
        let seqs = |s| {
            dc.restore_chain(s)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(None), vec![3, 5]);
        assert_eq!(seqs(Some(2)), vec![1, 2]);
        assert_eq!(seqs(Some(1)), vec![1]);
        assert_eq!(seqs(Some(3)), vec![3]);
        assert!(dc.restore_chain(Some(4)).is_err());
        assert_eq!(chain.next_seq, 6);

        // Save and load round trip, and the format check.
        let text = serde_json::to_string(&chain).unwrap();
        assert_eq!(Chain::parse(&text).unwrap(), chain);
        assert!(text.contains("\"kind\":\"incremental\""));
        let bad = text.replace("\"format\":1", "\"format\":9");
        assert!(Chain::parse(&bad).unwrap_err().contains("format 9"));
        assert!(Chain::parse("{").is_err());
        let dir = TempDir::new("chain");
        assert_eq!(Chain::load(dir.path()).unwrap(), Chain::default());
        chain.save(dir.path()).unwrap();
        assert_eq!(Chain::load(dir.path()).unwrap(), chain);
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

    /// A pseudo-random generator for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Full + incrementals from a file standing for a snapshot image, with a
    /// model CBT map; restore of every point; verify; corruption found.
    #[test]
    fn backup_restore_cycle() {
        let dir = TempDir::new("cycle");
        let bdir = dir.path().join("backup");
        let img = dir.path().join("image");
        const BS: u32 = 4096;
        let cap: u64 = 64 * 4096 + 1000; // a partial last block
        let geo = Geometry::new(BS.into(), cap);
        let mut data = vec![0u8; cap as usize];
        let mut rng = Rng(0x1234_5678);
        for b in data[..20 * 4096].iter_mut() {
            *b = rng.next() as u8;
        }
        let mut map = vec![1u8; geo.blocks() as usize];
        let generation = 3;
        let mut snap = 1u8;
        let mut snapshots = Vec::new();
        for cycle in 0..4 {
            std::fs::write(&img, &data).unwrap();
            let info = cbt(BS, cap, generation, snap);
            let mut run = BackupRun::begin(&bdir).unwrap();
            let job = run
                .prepare("dev0", &info, false, || Ok(map.clone()))
                .unwrap();
            if cycle == 0 {
                assert_eq!(job.plan, Plan::Full(FullReason::FirstBackup));
                assert_eq!(job.bytes, cap);
            } else {
                assert_eq!(job.plan, Plan::Incremental { since: snap - 1 });
            }
            let expected_blocks = count_blocks(&job.ranges);
            let r = run.copy(&job, DevId::new(1, 0), &img, &|_| {}).unwrap();
            assert_eq!(r.blocks, expected_blocks);
            let results = run.commit().unwrap();
            assert_eq!(results.len(), 1);
            snapshots.push((results[0].seq, data.clone()));

            // Writes after TAKE: random blocks (and the partial last one).
            snap += 1;
            let mut written = std::collections::BTreeSet::new();
            for _ in 0..6 {
                let off = rng.next() % cap;
                let len = (rng.next() % 6000 + 1).min(cap - off);
                for i in off..off + len {
                    data[i as usize] = rng.next() as u8;
                }
                for b in off / 4096..=(off + len - 1) / 4096 {
                    written.insert(b);
                    map[b as usize] = snap;
                }
            }
            if cycle == 2 {
                data[cap as usize - 1] ^= 0xff;
                map[geo.blocks() as usize - 1] = snap;
                written.insert(geo.blocks() - 1);
            }
            // The next incremental copies exactly the written blocks.
            let next = changed_blocks(&map, snap - 1, geo.blocks());
            assert_eq!(count_blocks(&next), written.len() as u64);
        }
        let chain = Chain::load(&bdir).unwrap();
        let dc = chain.device("dev0").unwrap();
        assert_eq!(dc.backups.len(), 4);
        assert_eq!(dc.backups[0].kind, Kind::Full);
        assert!(dc.backups[1..].iter().all(|b| b.kind == Kind::Incremental));
        assert_eq!(dc.snap_number, 4);
        // Full image files are sparse where the image is zero.
        assert_eq!(
            std::fs::metadata(bdir.join(&dc.backups[0].file))
                .unwrap()
                .len(),
            cap
        );

        for (seq, want) in &snapshots {
            let out = dir.path().join(format!("restored-{seq}"));
            let st = restore(&bdir, dc, Some(*seq), &out, &|_| {}).unwrap();
            assert_eq!(st.seq, *seq);
            assert_eq!(st.applied.first(), Some(&1));
            assert_eq!(&std::fs::read(&out).unwrap(), want, "backup {seq}");
            // The restored image matches the recorded hashes of its backup.
            let sums = read_sums(
                &bdir.join(&dc.entry(Some(*seq)).unwrap().sums),
                geo.blocks(),
            )
            .unwrap();
            let f = open_read(&out).unwrap();
            assert_eq!(
                verify_image(&f, &out, geo, &sums, &|_| {}).unwrap(),
                Vec::<u64>::new()
            );
        }
        std::fs::write(&img, &data).unwrap();
        let last = dir.path().join(format!("restored-{}", snapshots[3].0));
        let c = compare(&last, &img, 4096, &|_| {}).unwrap();
        assert!(!c.equal(), "the image changed after the last backup");
        let same = compare(&last, &last, 4096, &|_| {}).unwrap();
        assert!(same.equal());
        assert_eq!(verify_files(&bdir, dc, &|_| {}), vec![]);

        // A flipped byte in an incremental is found, and in a restored image.
        let incr = bdir.join(&dc.backups[2].file);
        let mut raw = std::fs::read(&incr).unwrap();
        let n = raw.len();
        raw[n - 10] ^= 1;
        std::fs::write(&incr, &raw).unwrap();
        let problems = verify_files(&bdir, dc, &|_| {});
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].seq, dc.backups[2].seq);
        let out = dir.path().join("restored-bad");
        restore(&bdir, dc, None, &out, &|_| {}).unwrap();
        let sums = read_sums(&bdir.join(&dc.backups[3].sums), geo.blocks()).unwrap();
        let bad = verify_image(&open_read(&out).unwrap(), &out, geo, &sums, &|_| {}).unwrap();
        assert!(bad.len() <= 1);
        let c = compare(
            &out,
            &dir.path().join(format!("restored-{}", snapshots[3].0)),
            4096,
            &|_| {},
        )
        .unwrap();
        assert!(c.differing_blocks <= 1);
        // A truncated incremental fails to restore.
        std::fs::write(&incr, &raw[..n - 5000]).unwrap();
        assert!(restore(&bdir, dc, None, &out, &|_| {}).is_err());
    }

    #[test]
    fn generation_change_forces_full_and_uncommitted_runs_leave_nothing() {
        let dir = TempDir::new("gen");
        let bdir = dir.path().join("b");
        let img = dir.path().join("image");
        std::fs::write(&img, vec![5u8; 8192]).unwrap();
        let mut run = BackupRun::begin(&bdir).unwrap();
        let job = run
            .prepare("d", &cbt(4096, 8192, 1, 1), false, || unreachable!())
            .unwrap();
        run.copy(&job, DevId::new(1, 0), &img, &|_| {}).unwrap();
        run.commit().unwrap();
        let run = BackupRun::begin(&bdir).unwrap();
        assert_eq!(run.seq(), 2);
        let job = run
            .prepare("d", &cbt(4096, 8192, 2, 1), false, || unreachable!())
            .unwrap();
        assert_eq!(job.plan, Plan::Full(FullReason::GenerationChanged));
        // Not committed: the files it wrote go away with it.
        let mut run = run;
        run.copy(&job, DevId::new(1, 0), &img, &|_| {}).unwrap();
        assert!(bdir.join("d.000002.full").exists());
        drop(run);
        assert!(!bdir.join("d.000002.full").exists());
        assert!(!bdir.join("d.000002.sums").exists());
        assert_eq!(Chain::load(&bdir).unwrap().next_seq, 2);
        // Names are checked.
        let run = BackupRun::begin(&bdir).unwrap();
        assert!(run
            .prepare("../x", &cbt(4096, 8192, 1, 2), false, || unreachable!())
            .is_err());
        assert!(valid_name("ram0") && valid_name("dev-8-1") && !valid_name("a b"));
    }

    #[test]
    fn names_of_devices() {
        // A device number nobody has.
        assert_eq!(device_name(DevId::new(4095, 1048575)), "dev-4095-1048575");
    }
}
