// SPDX-License-Identifier: GPL-2.0

//! Snapshots: a set of devices whose change tracking switches together at
//! TAKE, the difference storage user space hands in, and an event queue.
//!
//! Locking: the control device's state mutex serializes create, take,
//! append and destroy, and membership of devices in snapshots. `taken` is
//! only written under it. TAKE freezes every filesystem of the snapshot,
//! then holds the take barrier for writing while it switches every device,
//! so they all switch at one point in time with respect to every write.

use crate::{
    event_queue::EventQueue,
    params::Params,
    sys::{bdev::BlockDevice, errno, sync::TakeBarrier},
    tracker::{random_uuid, Tracker},
    uapi,
};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
};

/// Sectors in a page: difference storage ranges are page-aligned.
const PAGE_SECTORS: u64 = 8;

/// A range of difference storage on a device.
// Recorded by APPEND_STORAGE; the copy-on-write engine allocates from them.
#[allow(dead_code)]
pub(crate) struct StorageRange {
    /// The device's `dev_t`.
    pub(crate) dev: u32,
    /// First sector.
    pub(crate) start: u64,
    /// Length in sectors.
    pub(crate) count: u64,
}

/// One snapshot.
#[pin_data]
pub(crate) struct Snapshot {
    id: [u8; 16],
    trackers: KVec<Arc<Tracker>>,
    taken: AtomicBool,
    /// Difference storage appended so far (used by copy-on-write).
    #[pin]
    storage: Mutex<KVec<StorageRange>>,
    #[pin]
    events: EventQueue,
}

impl Snapshot {
    /// A snapshot of the devices of `trackers`, with its first
    /// low_free_space event (asking for `diff_storage_minimum`) queued.
    pub(crate) fn new(trackers: KVec<Arc<Tracker>>, params: &Params) -> Result<Arc<Self>> {
        let snapshot = Arc::pin_init(
            try_pin_init!(Snapshot {
                id: random_uuid(),
                trackers,
                taken: AtomicBool::new(false),
                storage <- new_mutex!(KVec::new(), "blksnap_diff_storage"),
                events <- EventQueue::new()?,
            }),
            GFP_KERNEL,
        )?;
        let requested = u64::try_from(params.diff_storage_minimum).unwrap_or(0);
        snapshot.events.push(
            uapi::blk_snap_event_code_low_free_space,
            &requested.to_ne_bytes(),
        );
        Ok(snapshot)
    }

    /// The snapshot's id.
    pub(crate) fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// Whether a tracker of this snapshot tracks `dev`.
    pub(crate) fn has_device(&self, dev: u32) -> bool {
        self.trackers.iter().any(|t| t.dev() == dev)
    }

    /// Whether TAKE has happened.
    pub(crate) fn is_taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }

    /// The event queue.
    pub(crate) fn events(&self) -> &EventQueue {
        &self.events
    }

    /// SNAPSHOT_APPEND_STORAGE: adds page-aligned sector ranges of `dev` to
    /// the difference storage. `EINVAL` for an empty, misaligned, overflowing
    /// or out-of-device range; nothing is added unless every range is valid.
    pub(crate) fn append_storage(&self, dev: u32, ranges: &[uapi::blk_snap_block_range]) -> Result {
        let bdev = BlockDevice::open(dev)?;
        let capacity = bdev.nr_sectors();
        let mut list = self.storage.lock();
        list.reserve(ranges.len(), GFP_KERNEL)?;
        for r in ranges {
            let end = r.sector_offset.checked_add(r.sector_count).ok_or(EINVAL)?;
            if r.sector_count == 0
                || r.sector_offset % PAGE_SECTORS != 0
                || r.sector_count % PAGE_SECTORS != 0
                || end > capacity
            {
                return Err(EINVAL);
            }
        }
        for r in ranges {
            list.push(
                StorageRange {
                    dev,
                    start: r.sector_offset,
                    count: r.sector_count,
                },
                GFP_KERNEL,
            )?;
        }
        Ok(())
    }

    /// SNAPSHOT_TAKE. `EALREADY` if taken before.
    pub(crate) fn take(&self, params: &Params) -> Result {
        if self.is_taken() {
            return Err(errno::ealready());
        }
        let n = self.trackers.len();
        // Everything that allocates or sleeps happens before the barrier.
        let mut prepared = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut generations = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut replaced = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut frozen = KVec::with_capacity(n, GFP_KERNEL)?;
        for t in self.trackers.iter() {
            prepared.push(t.prepare_switch(params)?, GFP_KERNEL)?;
            generations.push(random_uuid(), GFP_KERNEL)?;
        }
        for t in self.trackers.iter() {
            frozen.push(t.bdev().freeze()?, GFP_KERNEL)?;
        }
        {
            let _barrier = TakeBarrier::write();
            for ((t, p), g) in self
                .trackers
                .iter()
                .zip(prepared)
                .zip(generations.iter())
            {
                // Capacity reserved above: this push does not allocate.
                let _ = replaced.push(t.switch(p, *g), GFP_NOWAIT);
            }
            self.taken.store(true, Ordering::Release);
        }
        drop(frozen);
        drop(replaced);
        Ok(())
    }

    /// SNAPSHOT_DESTROY: wakes every waiter with `ESRCH`.
    pub(crate) fn destroy(&self) {
        self.events.close();
    }
}
