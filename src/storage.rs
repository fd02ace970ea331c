// SPDX-License-Identifier: GPL-2.0

//! A snapshot's difference storage ([`Storage`]): the ranges user space
//! appended with SNAPSHOT_APPEND_STORAGE, the storage devices they are on,
//! the snapshot's corruption state and the events both raise
//! (`low_free_space`, `corrupted`). The slot accounting itself is plain
//! logic in `diff_storage`.
//!
//! Locking:
//! * `Storage::inner` (a mutex) protects the accounting; it is only taken
//!   in process context.
//! * `Storage::devices` (IRQ-safe spinlock) holds the open storage devices,
//!   so the image's submit path finds one without sleeping. The list is
//!   replaced, never changed in place, under `inner`, and only grows: a
//!   device's index in it, which slots name, never changes. The first
//!   [`FAST_DEVICES`] are also in `Storage::fast`, set once at append and
//!   read with no lock at all (most snapshots have one storage device).
//! * `Storage::corrupted` is set once, atomically; whoever sets it queues
//!   the one `corrupted` event.
//! * Neither lock is taken while holding a diff area's chunk lock.

use crate::sys::compat::prelude::*;
use crate::{
    chunk_map,
    diff_storage::{self, DiffStorage, Extent},
    event_queue::EventQueue,
    sys::{
        bdev::{BlockDevice, DevNum},
        sync::{new_irq_spinlock, IrqSpinLock, OnceArc},
    },
    uapi,
};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    new_mutex,
    sync::{Arc, Mutex},
};

/// How many storage devices the image's reads find without a lock.
const FAST_DEVICES: usize = 4;

/// Where one chunk's data is in the difference storage: the storage
/// device's index in the storage's device list, and the sector there.
pub(crate) type Slot = diff_storage::Slot<u16>;

/// What the difference storage holds under its lock.
struct StorageInner {
    accounting: DiffStorage<KVec<Extent<DevNum>>>,
}

/// A snapshot's difference storage: the ranges user space appended, and
/// the snapshot's corruption state.
#[pin_data]
pub(crate) struct Storage {
    #[pin]
    inner: Mutex<StorageInner>,
    /// The storage devices, opened at append and kept until the storage is
    /// freed. Replaced (never changed in place) under `inner`, so lookups
    /// from the image's submit path take only this spinlock.
    #[pin]
    devices: IrqSpinLock<KVec<Arc<BlockDevice>>>,
    /// The first devices of `devices`, each set when it is appended.
    fast: [OnceArc<BlockDevice>; FAST_DEVICES],
    corrupted: AtomicBool,
    /// Sectors to ask for in low_free_space events.
    minimum: u64,
    events: Arc<EventQueue>,
}

impl Storage {
    /// Empty storage that reports to `events`.
    pub(crate) fn new(minimum: u64, events: Arc<EventQueue>) -> Result<Arc<Self>> {
        let inner = StorageInner {
            accounting: DiffStorage::new(KVec::new()),
        };
        Arc::pin_init(
            pin_init!(Storage {
                inner <- new_mutex!(inner, "blksnap_storage"),
                devices <- new_irq_spinlock!(KVec::new(), "blksnap_storage_devices"),
                fast: [const { OnceArc::new() }; FAST_DEVICES],
                corrupted: AtomicBool::new(false),
                minimum,
                events,
            }),
            GFP_KERNEL,
        )
    }

    /// SNAPSHOT_APPEND_STORAGE: adds page-aligned ranges of `dev`. `EINVAL`
    /// for an empty, misaligned, overflowing, out-of-device or overlapping
    /// range, or past the sectors chunk states can name
    /// ([`chunk_map::SECTOR_LIMIT`], 32 PiB), or a 65537th device; nothing is
    /// added unless every range is valid.
    pub(crate) fn append(&self, dev: DevNum, ranges: &[uapi::blk_snap_block_range]) -> Result {
        let bdev = BlockDevice::open(dev)?;
        let capacity = bdev.nr_sectors().min(chunk_map::SECTOR_LIMIT);
        let mut inner = self.inner.lock();
        let known = self.find(dev).is_some();
        if !known && self.devices.lock().len() > usize::from(u16::MAX) {
            return Err(EINVAL);
        }
        for (i, r) in ranges.iter().enumerate() {
            diff_storage::check_range(r.sector_offset, r.sector_count, capacity)
                .map_err(|_| EINVAL)?;
            let e = Extent {
                dev,
                start: r.sector_offset,
                count: r.sector_count,
            };
            let earlier = ranges.get(..i).unwrap_or(&[]);
            let overlaps_earlier = earlier.iter().any(|o| {
                o.sector_offset < e.start + e.count && e.start < o.sector_offset + o.sector_count
            });
            if overlaps_earlier || inner.accounting.overlaps(&e) {
                return Err(EINVAL);
            }
        }
        inner
            .accounting
            .extents_mut()
            .reserve(ranges.len(), GFP_KERNEL)?;
        if !known {
            // A new list with room for the new device, built outside the
            // spinlock; appends are serialized by `inner`.
            let bdev = Arc::new(bdev, GFP_KERNEL)?;
            // (Its own statement: the guard must be gone before allocating.)
            let count = self.devices.lock().len();
            let mut devices = KVec::with_capacity(count + 1, GFP_KERNEL)?;
            let mut current = self.devices.lock();
            for d in Iterator::chain(current.iter(), core::iter::once(&bdev)) {
                // Within the capacity allocated above: does not allocate.
                devices.push(d.clone(), GFP_NOWAIT)?;
            }
            core::mem::swap(&mut *current, &mut devices);
            drop(current);
            if let Some(cell) = self.fast.get(count) {
                // Appends are serialized, so index `count` is new: the cell
                // is empty and takes the device.
                let _ = cell.set(bdev);
            }
        }
        for r in ranges {
            let e = Extent {
                dev,
                start: r.sector_offset,
                count: r.sector_count,
            };
            // Reserved above: does not allocate.
            inner.accounting.extents_mut().push(e, GFP_KERNEL)?;
            inner.accounting.appended(r.sector_count);
        }
        Ok(())
    }

    /// Whether the snapshot is corrupted.
    pub(crate) fn is_corrupted(&self) -> bool {
        self.corrupted.load(Ordering::Acquire)
    }

    /// Marks the snapshot corrupted because of `err` on `orig` (queues the
    /// one `corrupted` event).
    pub(crate) fn corrupt(&self, orig: DevNum, err: Error) {
        if self.corrupted.swap(true, Ordering::AcqRel) {
            return;
        }
        if crate::sys::log_allowed() {
            pr_err!(
                "snapshot of {}:{} corrupted: error {}\n",
                orig.major(),
                orig.minor(),
                err.to_errno()
            );
        }
        // struct blk_snap_event_corrupted: orig_dev_id, err_code.
        let mut data = [0u8; 12];
        let (mj, mn) = (orig.major().to_ne_bytes(), orig.minor().to_ne_bytes());
        let code = (-err.to_errno()).to_ne_bytes();
        let fields = Iterator::chain(Iterator::chain(mj.iter(), mn.iter()), code.iter());
        for (d, s) in data.iter_mut().zip(fields) {
            *d = *s;
        }
        self.events.push(uapi::blk_snap_event_code_corrupted, &data);
    }

    /// Hands out a slot of `sectors` and the device it is on; asks user
    /// space for more storage when free space drops below half the minimum.
    pub(crate) fn alloc(&self, sectors: u64) -> Result<(Slot, Arc<BlockDevice>)> {
        let mut inner = self.inner.lock();
        let slot = inner.accounting.alloc(sectors).ok_or(ENOSPC)?;
        if inner.accounting.should_request(self.minimum) {
            self.events.push(
                uapi::blk_snap_event_code_low_free_space,
                &self.minimum.to_ne_bytes(),
            );
        }
        drop(inner);
        let (dev, bdev) = self.find(slot.dev).ok_or(EIO)?;
        Ok((
            Slot {
                dev,
                sector: slot.sector,
            },
            bdev,
        ))
    }

    /// The open storage device with index `dev` in the device list. Does
    /// not sleep.
    pub(crate) fn device(&self, dev: u16) -> Result<Arc<BlockDevice>> {
        if let Some(d) = self.fast.get(usize::from(dev)).and_then(OnceArc::get) {
            return Ok(d.into());
        }
        self.devices
            .lock()
            .get(usize::from(dev))
            .cloned()
            .ok_or(EIO)
    }

    /// Storage device `dev`'s index in the device list and the device, if
    /// it is there.
    fn find(&self, dev: DevNum) -> Option<(u16, Arc<BlockDevice>)> {
        let devices = self.devices.lock();
        let i = devices.iter().position(|d| d.dev() == dev)?;
        Some((u16::try_from(i).ok()?, devices.get(i)?.clone()))
    }
}
