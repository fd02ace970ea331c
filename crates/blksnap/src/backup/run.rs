// SPDX-License-Identifier: GPL-2.0
//! One backup of several devices ([`BackupRun`]): what to copy of each,
//! the copy into new files, and the metadata saved only when all are done.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::libc;
use uuid::Uuid;

use super::{
    backup_err, changed_blocks, derive_sums, open_stream, size_of, valid_name, write_full,
    write_incremental, write_sums, BackupEntry, BlockRange, Chain, FullReason, Geometry,
    IncrementalHeader, Kind, Plan,
};
use crate::error::{io_err, Result};
use crate::types::{CbtInfo, DevId};

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
        let src = open_stream(image)?;
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
        let (stats, since) = match job.plan {
            Plan::Full(_) => {
                let (sums, stats) = write_full(&src, image, &dst, &path, geo, progress)?;
                self.written.push(sums_path.clone());
                write_sums(&sums_path, &sums)?;
                (stats, None)
            }
            Plan::Incremental { since } => {
                let dc = self
                    .chain
                    .device(&job.name)
                    .expect("planned from the chain");
                let last = dc.backups.last().expect("planned from the chain");
                let header = IncrementalHeader {
                    block_size: job.cbt.block_size,
                    capacity: job.cbt.device_capacity,
                    generation_id: job.cbt.generation_id,
                    snap_number: job.cbt.snap_number,
                    since_snap_number: since,
                    ranges: job.ranges.clone(),
                };
                let (changed, stats) =
                    write_incremental(&src, image, &dst, &path, &header, progress)?;
                self.written.push(sums_path.clone());
                derive_sums(
                    &self.dir.join(&last.sums),
                    &sums_path,
                    geo.blocks(),
                    &header.ranges,
                    &changed,
                )?;
                (stats, Some(since))
            }
        };
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
