// SPDX-License-Identifier: GPL-2.0
//! Putting the module into each lifecycle state between batches of fuzzed
//! calls (no tracker, tracked, snapshot created, storage appended, taken,
//! destroyed, and two snapshots at once), and checking its state after a
//! batch: the collections still answer, every image a snapshot lists has
//! its /dev node and no other /dev/blksnap-image* exists, and a CREATE
//! whose id cannot be written back leaves nothing behind.

use std::collections::BTreeSet;
use std::mem::{offset_of, size_of};
use std::time::Duration;

use blksnap::uapi::{blk_snap_snapshot_create, IOCTL_BLK_SNAP_SNAPSHOT_CREATE};
use blksnap::{Control, DevId, Errno, SectorRange, SnapshotId};

use crate::arena::{Arena, PAGE};
use crate::known::{Device, Known};

/// A state the module is put in before a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// No tracker and no snapshot.
    NoTracker,
    /// The original devices tracked (a snapshot was made and destroyed).
    Tracked,
    /// A snapshot of the original devices, created only.
    Created,
    /// The snapshot with difference storage appended.
    StorageAppended,
    /// The snapshot taken: images exist.
    Taken,
    /// The snapshot taken and destroyed: its id is stale.
    Destroyed,
    /// Two snapshots on different devices, one taken, one created.
    Mixed,
}

/// Every phase, in a run's order.
pub const PHASES: [Phase; 7] = [
    Phase::NoTracker,
    Phase::Tracked,
    Phase::Created,
    Phase::StorageAppended,
    Phase::Taken,
    Phase::Destroyed,
    Phase::Mixed,
];

/// The prefix of image nodes in /dev.
const IMAGE_PREFIX: &str = "blksnap-image";

/// Puts the module into phases and checks its state.
pub struct Driver<'a> {
    ctl: Control,
    known: &'a Known,
}

fn err(what: &str, e: blksnap::Error) -> String {
    format!("{what}: {e}")
}

/// Page-aligned ranges over `part` (0 or 1) of two halves of a device, or
/// over all of it when `part` is `None`.
fn storage_ranges(dev: &Device, part: Option<usize>) -> Vec<SectorRange> {
    let pages = dev.sectors / 8;
    let half = pages / 2;
    let halves = [
        SectorRange::new(0, half * 8),
        SectorRange::new(half * 8, (pages - half) * 8),
    ];
    let chosen: Vec<SectorRange> = match part {
        Some(p) => vec![halves[p]],
        None => halves.to_vec(),
    };
    chosen.into_iter().filter(|r| r.count > 0).collect()
}

/// The minors of the image nodes in /dev.
pub fn image_nodes() -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/dev") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(IMAGE_PREFIX)?.parse().ok()
        })
        .collect()
}

impl<'a> Driver<'a> {
    /// A driver using its own handle on `path`.
    pub fn new(path: &str, known: &'a Known) -> Result<Self, String> {
        let ctl = Control::open_path(path).map_err(|e| err("open", e))?;
        Ok(Driver { ctl, known })
    }

    /// Destroys every snapshot and removes every tracker.
    pub fn reset(&self) -> Result<(), String> {
        for id in self.ctl.snapshot_collect().map_err(|e| err("collect", e))? {
            match self.ctl.snapshot_destroy(id) {
                Ok(()) => self.known.add_id(*id.as_bytes()),
                Err(e) if e.errno() == Some(Errno::ESRCH) => {}
                Err(e) => return Err(err("destroy", e)),
            }
        }
        for t in self.ctl.tracker_collect().map_err(|e| err("trackers", e))? {
            self.ctl
                .tracker_remove(t.dev_id)
                .map_err(|e| err(&format!("remove tracker {}", t.dev_id), e))?;
        }
        self.known.set_images(Vec::new());
        Ok(())
    }

    fn create(&self, devs: &[DevId]) -> Result<SnapshotId, String> {
        let id = self
            .ctl
            .snapshot_create(devs)
            .map_err(|e| err("create", e))?;
        self.known.add_id(*id.as_bytes());
        Ok(id)
    }

    fn append(&self, id: SnapshotId, part: Option<usize>) -> Result<(), String> {
        for dev in &self.known.storage {
            let ranges = storage_ranges(dev, part);
            if !ranges.is_empty() {
                self.ctl
                    .snapshot_append_storage(id, dev.id, &ranges)
                    .map_err(|e| err("append storage", e))?;
            }
        }
        Ok(())
    }

    fn take(&self, id: SnapshotId) -> Result<(), String> {
        self.ctl.snapshot_take(id).map_err(|e| err("take", e))?;
        let images = self
            .ctl
            .snapshot_collect_images(id)
            .map_err(|e| err("collect images", e))?;
        for i in images {
            self.known.add_image(i.image_dev_id);
        }
        Ok(())
    }

    /// Resets the module and puts it into `phase`.
    pub fn enter(&self, phase: Phase) -> Result<(), String> {
        self.reset()?;
        let devs: Vec<DevId> = self.known.originals.iter().map(|d| d.id).collect();
        if devs.is_empty() && phase != Phase::NoTracker {
            return Ok(());
        }
        match phase {
            Phase::NoTracker => {}
            Phase::Tracked => {
                let id = self.create(&devs)?;
                self.ctl
                    .snapshot_destroy(id)
                    .map_err(|e| err("destroy", e))?;
            }
            Phase::Created => {
                self.create(&devs)?;
            }
            Phase::StorageAppended => {
                let id = self.create(&devs)?;
                self.append(id, None)?;
            }
            Phase::Taken | Phase::Destroyed => {
                let id = self.create(&devs)?;
                self.append(id, None)?;
                self.take(id)?;
                if phase == Phase::Destroyed {
                    self.ctl
                        .snapshot_destroy(id)
                        .map_err(|e| err("destroy", e))?;
                    self.known.set_images(Vec::new());
                }
            }
            Phase::Mixed => {
                let (first, rest) = devs.split_at(1);
                let a = self.create(first)?;
                self.append(a, Some(0))?;
                self.take(a)?;
                if !rest.is_empty() {
                    let b = self.create(rest)?;
                    self.append(b, Some(1))?;
                }
            }
        }
        Ok(())
    }

    /// The snapshots, the trackers' devices and the image minors the
    /// module lists.
    fn listing(&self) -> Result<(usize, BTreeSet<DevId>, BTreeSet<u32>), String> {
        let snaps = self
            .ctl
            .snapshot_collect()
            .map_err(|e| err("SNAPSHOT_COLLECT after the batch", e))?;
        let trackers = self
            .ctl
            .tracker_collect()
            .map_err(|e| err("TRACKER_COLLECT after the batch", e))?
            .into_iter()
            .map(|t| t.dev_id)
            .collect();
        let mut minors = BTreeSet::new();
        for id in &snaps {
            match self.ctl.snapshot_collect_images(*id) {
                Ok(images) => minors.extend(images.iter().map(|i| i.image_dev_id.minor)),
                Err(e) if e.errno() == Some(Errno::ENODEV) => {}
                Err(e) => return Err(err("SNAPSHOT_COLLECT_IMAGES after the batch", e)),
            }
        }
        Ok((snaps.len(), trackers, minors))
    }

    /// Checks the state after a batch; the problems found.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut last = String::new();
        for _ in 0..20 {
            match self.listing() {
                Err(e) => {
                    problems.push(e);
                    return problems;
                }
                Ok((_, _, minors)) => {
                    let nodes = image_nodes();
                    if nodes == minors {
                        last.clear();
                        break;
                    }
                    last = format!(
                        "image nodes in /dev {nodes:?} differ from the images the snapshots list {minors:?}"
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !last.is_empty() {
            problems.push(last);
        }
        problems
    }

    /// CREATE of the original devices with the id field in read-only
    /// memory: must fail and leave the snapshots and trackers as they were.
    pub fn probe_create_readonly(&self, arena: &mut Arena) -> Option<String> {
        type T = blk_snap_snapshot_create;
        let before = match self.listing() {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        let mut devs = Vec::new();
        for d in &self.known.originals {
            devs.extend_from_slice(&d.id.major.to_ne_bytes());
            devs.extend_from_slice(&d.id.minor.to_ne_bytes());
        }
        if devs.is_empty() {
            return None;
        }
        arena.write_rw(PAGE, &devs);
        let mut arg = vec![0u8; size_of::<T>()];
        let count = self.known.originals.len() as u32;
        arg[offset_of!(T, count)..][..4].copy_from_slice(&count.to_ne_bytes());
        let ptr = arena.rw() as u64 + PAGE as u64;
        arg[offset_of!(T, dev_id_array)..][..8].copy_from_slice(&ptr.to_ne_bytes());
        // Everything before `id` writable, `id` read-only.
        let at = arena.ro().wrapping_sub(offset_of!(T, id));
        if let Err(e) = arena.write_at(at, &arg) {
            return Some(format!("probe setup: {e}"));
        }
        let (ret, errno) = crate::raw_ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&self.ctl_fd()),
            IOCTL_BLK_SNAP_SNAPSHOT_CREATE,
            at as u64,
        );
        let after = match self.listing() {
            Ok(l) => l,
            Err(e) => return Some(e),
        };
        if ret >= 0 {
            return Some("CREATE with a read-only id field succeeded".into());
        }
        if before != after {
            return Some(format!(
                "CREATE with a read-only id field failed ({}) but changed the state: \
                 snapshots/trackers/images {before:?} -> {after:?}",
                crate::stats::result_name(errno)
            ));
        }
        None
    }

    fn ctl_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.ctl)
    }
}
