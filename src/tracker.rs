// SPDX-License-Identifier: GPL-2.0

//! Trackers: one per tracked device, owning its open block device and its
//! change-tracking map.
//!
//! A tracker is created by the first SNAPSHOT_CREATE that names its device
//! (and removed again if that call fails) and lives until TRACKER_REMOVE or
//! module unload. The [`Registry`] owns the list of trackers and indexes
//! them by device number in the module's [`DevIndex`] ([`INDEX`]), which
//! the bio filter searches without locks.
//!
//! Locking:
//! * The control device's state mutex, which the [`Registry`] lives under,
//!   serializes every change to the set of trackers and snapshots and every
//!   decision about membership.
//! * `Tracker::cbt` (an IRQ-safe spinlock) protects the map and the
//!   copy-on-write state; the filter takes it under the take barrier, so
//!   TAKE (which holds the barrier for writing) switches maps and starts
//!   copy-on-write at one point in time.
//! * Order: control state mutex, then take barrier, then a tracker's map
//!   lock.

use crate::sys::compat::prelude::*;
use crate::{
    cbt_map::{CbtMap, Geometry, Switch},
    diff_area::DiffArea,
    params::Params,
    sys::{
        bdev::{BlockDevice, DevNum},
        dev_index::{DevIndex, IndexOwner, Keyed},
        sectors::Sectors,
        sync::{new_irq_spinlock, IrqSpinLock},
    },
    uapi::{blk_snap_cbt_info, blk_snap_dev, blk_snap_uuid},
};
use kernel::{alloc::VVec, sync::Arc};

/// Storage of one CBT table: virtually contiguous, so large devices need no
/// high-order allocation.
pub(crate) type Table = VVec<u8>;

/// The trackers by device number, for the bio filter; the [`Registry`]
/// owns its entries.
pub(crate) static INDEX: DevIndex<Tracker> = DevIndex::new();

/// What a tracker's lock protects: its change-tracking map and its
/// copy-on-write state.
pub(crate) struct TrackerState {
    map: CbtMap<Table>,
    /// Copy-on-write state while the device is in a taken snapshot.
    area: Option<Arc<DiffArea>>,
}

/// The change tracking of one device, which it holds open.
#[pin_data]
pub(crate) struct Tracker {
    dev: DevNum,
    bdev: BlockDevice,
    #[pin]
    cbt: IrqSpinLock<TrackerState>,
}

impl Keyed for Tracker {
    fn key(&self) -> DevNum {
        self.dev
    }
}

/// Allocates the two zeroed tables of `geometry`.
fn tables(geometry: &Geometry) -> Result<(Table, Table)> {
    let len = usize::try_from(geometry.blk_count).map_err(|_| EFBIG)?;
    Ok((
        VVec::from_elem(0, len, GFP_KERNEL)?,
        VVec::from_elem(0, len, GFP_KERNEL)?,
    ))
}

/// A random generation id (a version 4 UUID).
pub(crate) fn random_uuid() -> [u8; 16] {
    let mut id = [0u8; 16];
    crate::sys::generate_random_uuid(&mut id);
    id
}

/// The parts of a new map for a device's current capacity.
struct FreshMap {
    geometry: Geometry,
    active: Table,
    readable: Table,
}

impl FreshMap {
    /// Sizes and allocates a map for `capacity` sectors; `EFBIG` if the
    /// parameters cannot cut the device into few enough blocks.
    fn new(capacity: u64, params: &Params) -> Result<Self> {
        let geometry = Geometry::new(capacity, params).map_err(|_| EFBIG)?;
        let (active, readable) = tables(&geometry)?;
        Ok(FreshMap {
            geometry,
            active,
            readable,
        })
    }
}

impl Tracker {
    /// Opens `dev` and creates its tracker with empty tables.
    fn new(dev: DevNum, params: &Params) -> Result<Arc<Self>> {
        let bdev = BlockDevice::open(dev)?;
        let fresh = FreshMap::new(bdev.nr_sectors(), params)?;
        let map = CbtMap::new(fresh.geometry, fresh.active, fresh.readable, random_uuid())
            .ok_or(EINVAL)?;
        Arc::pin_init(
            pin_init!(Tracker {
                dev,
                bdev,
                cbt <- new_irq_spinlock!(TrackerState { map, area: None }, "blksnap_tracker_cbt"),
            }),
            GFP_KERNEL,
        )
    }

    /// The device's capacity now, in sectors.
    pub(crate) fn capacity(&self) -> u64 {
        self.bdev.nr_sectors()
    }

    /// The tracked device's number.
    pub(crate) fn dev(&self) -> DevNum {
        self.dev
    }

    /// The tracked device, held open.
    pub(crate) fn bdev(&self) -> &BlockDevice {
        &self.bdev
    }

    /// Marks `sectors` changed by a write and returns the copy-on-write
    /// state it may have to go through.
    ///
    /// Returns none when the device is in no taken snapshot or the chunks
    /// are known to be settled. Called by the filter under the take
    /// barrier; never sleeps.
    pub(crate) fn mark(&self, sectors: Sectors) -> Option<Arc<DiffArea>> {
        let mut state = self.cbt.lock();
        state.map.mark(sectors);
        state
            .area
            .as_ref()
            .filter(|area| !area.write_passes(sectors))
            .cloned()
    }

    /// Marks `sectors` changed in both tables (MARK_DIRTY_BLOCKS and image
    /// writes; see [`CbtMap::mark_both`]).
    pub(crate) fn mark_dirty(&self, sectors: Sectors) {
        self.cbt.lock().map.mark_both(sectors);
    }

    /// Attaches or detaches copy-on-write state and returns the state it
    /// replaces; called with the take barrier held for writing.
    pub(crate) fn set_area(&self, area: Option<Arc<DiffArea>>) -> Option<Arc<DiffArea>> {
        core::mem::replace(&mut self.cbt.lock().area, area)
    }

    /// The UAPI description of this tracker.
    pub(crate) fn info(&self) -> blk_snap_cbt_info {
        let state = self.cbt.lock();
        let cbt = &state.map;
        let g = cbt.geometry();
        blk_snap_cbt_info {
            dev_id: blk_snap_dev {
                mj: self.dev.major(),
                mn: self.dev.minor(),
            },
            blk_size: g.blk_size(),
            device_capacity: g.capacity.saturating_mul(512),
            blk_count: g.blk_count,
            generation_id: blk_snap_uuid {
                b: *cbt.generation_id(),
            },
            snap_number: cbt.snap_number(),
        }
    }

    /// Copies the readable table from byte `offset` into `out`; returns how
    /// many bytes it copied (see [`CbtMap::read`]).
    pub(crate) fn read_cbt(&self, offset: usize, out: &mut [u8]) -> usize {
        self.cbt.lock().map.read(offset, out)
    }

    /// Prepares [`Tracker::switch`]: new tables if the capacity changed
    /// since the map was made, none otherwise.
    ///
    /// Called before the barrier is taken, since it allocates.
    pub(crate) fn prepare_switch(&self, params: &Params) -> Result<Option<PreparedSwitch>> {
        let capacity = self.bdev.nr_sectors();
        if capacity == self.cbt.lock().map.geometry().capacity {
            return Ok(None);
        }
        Ok(Some(PreparedSwitch(FreshMap::new(capacity, params)?)))
    }

    /// Switches change tracking for TAKE, with the take barrier held for
    /// writing.
    ///
    /// Resets the map if `prepared` has new tables, then switches it (see
    /// [`CbtMap::switch`]). Returns the tables it replaced, to be freed after
    /// the barrier is released.
    pub(crate) fn switch(
        &self,
        prepared: Option<PreparedSwitch>,
        new_generation: [u8; 16],
    ) -> Option<(Table, Table)> {
        let mut state = self.cbt.lock();
        let cbt = &mut state.map;
        let old = prepared.and_then(|PreparedSwitch(f)| {
            cbt.reset(f.geometry, f.active, f.readable, new_generation)
        });
        if cbt.switch(new_generation) == Switch::Wrapped && crate::sys::log_allowed() {
            pr_info!(
                "{}:{}: change tracking wrapped, new generation\n",
                self.dev.major(),
                self.dev.minor()
            );
        }
        old
    }
}

/// New tables for [`Tracker::switch`], allocated outside the barrier.
pub(crate) struct PreparedSwitch(FreshMap);

/// The set of trackers, which owns the entries of [`INDEX`].
pub(crate) struct Registry {
    trackers: KVec<Arc<Tracker>>,
    /// Every tracker of `trackers` is in the index.
    index: IndexOwner<Tracker>,
}

impl Registry {
    /// Creates an empty registry, which owns [`INDEX`] (`EBUSY` if
    /// something else does).
    pub(crate) fn new() -> Result<Self> {
        Ok(Registry {
            trackers: KVec::new(),
            index: INDEX.own()?,
        })
    }

    /// The tracker of `dev`, if any.
    pub(crate) fn find(&self, dev: DevNum) -> Option<&Arc<Tracker>> {
        self.trackers.iter().find(|t| t.dev == dev)
    }

    /// The tracker of `dev`, created (and indexed) if there is none.
    pub(crate) fn attach(&mut self, dev: DevNum, params: &Params) -> Result<Arc<Tracker>> {
        if let Some(t) = self.find(dev) {
            return Ok(t.clone());
        }
        let tracker = Tracker::new(dev, params)?;
        self.trackers.reserve(1, GFP_KERNEL)?;
        self.index.insert(tracker.clone())?;
        // Cannot fail: reserved above.
        self.trackers.push(tracker.clone(), GFP_KERNEL)?;
        Ok(tracker)
    }

    /// Stops tracking `dev`; `ENODEV` if it is not tracked.
    ///
    /// The caller has checked that no snapshot holds it. Sleeps (an RCU
    /// grace period before the index lets go of the tracker).
    pub(crate) fn remove(&mut self, dev: DevNum) -> Result {
        let pos = self
            .trackers
            .iter()
            .position(|t| t.dev == dev)
            .ok_or(ENODEV)?;
        drop(self.index.remove(dev));
        drop(self.trackers.swap_remove(pos));
        Ok(())
    }

    /// Every tracker.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Tracker>> {
        self.trackers.iter()
    }

    /// The number of trackers.
    pub(crate) fn len(&self) -> usize {
        self.trackers.len()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for t in self.trackers.iter() {
            drop(self.index.remove(t.dev));
        }
    }
}
