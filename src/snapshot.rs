// SPDX-License-Identifier: GPL-2.0

//! Snapshots: a set of devices whose change tracking switches together at
//! TAKE, their difference storage, their images, and an event queue.
//!
//! Locking: the control device's state mutex serializes create, take,
//! append, collect and destroy, and membership of devices in snapshots;
//! `taken` and `images` change only under it (`images` also has a mutex of
//! its own, for the readers). TAKE freezes every filesystem
//! of the snapshot, then holds the take barrier for writing while it
//! switches every device's change tracking and starts copy-on-write, so all
//! devices switch at one point in time with respect to every write.

use crate::sys::compat::prelude::*;
use crate::{
    diff_area::DiffArea,
    diff_storage,
    event_queue::EventQueue,
    params::Params,
    snapimage::{ImageHandle, Minors},
    storage::Storage,
    sys::{bdev::DevNum, disk::ImageMajor, errno, sync::TakeBarrier, CowQueue},
    tracker::{random_uuid, Tracker},
    uapi,
};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    new_mutex,
    sync::{Arc, Mutex},
};

/// What [`Snapshot::take`] needs from the module besides the snapshot.
pub(crate) struct TakeContext<'a> {
    /// The module's workqueue.
    pub(crate) queue: &'a Arc<CowQueue>,
    /// The image disks' major.
    pub(crate) major: &'a ImageMajor,
    /// The image minors in use.
    pub(crate) minors: &'a Arc<Minors>,
}

/// One snapshot: its devices' trackers, its difference storage, its event
/// queue and, once taken, one image per device.
#[pin_data]
pub(crate) struct Snapshot {
    id: [u8; 16],
    trackers: KVec<Arc<Tracker>>,
    taken: AtomicBool,
    storage: Arc<Storage>,
    events: Arc<EventQueue>,
    /// One per device once taken.
    #[pin]
    images: Mutex<KVec<ImageHandle>>,
}

impl Snapshot {
    /// Creates a snapshot of the devices of `trackers`, with its first
    /// low_free_space event (asking for [`Params::diff_storage_minimum`]
    /// sectors) queued.
    pub(crate) fn new(trackers: KVec<Arc<Tracker>>, params: &Params) -> Result<Arc<Self>> {
        let events = Arc::pin_init(EventQueue::new()?, GFP_KERNEL)?;
        let minimum = u64::try_from(params.diff_storage_minimum).unwrap_or(0);
        let storage = Storage::new(minimum, events.clone())?;
        let snapshot = Arc::pin_init(
            pin_init!(Snapshot {
                id: random_uuid(),
                trackers,
                taken: AtomicBool::new(false),
                storage,
                events,
                images <- new_mutex!(KVec::new(), "blksnap_images"),
            }),
            GFP_KERNEL,
        )?;
        snapshot.events.push(
            uapi::blk_snap_event_code_low_free_space,
            &minimum.to_ne_bytes(),
        );
        Ok(snapshot)
    }

    /// The snapshot's id, a random UUID.
    pub(crate) fn id(&self) -> &[u8; 16] {
        &self.id
    }

    /// Whether a tracker of this snapshot tracks `dev`.
    pub(crate) fn has_device(&self, dev: DevNum) -> bool {
        self.trackers.iter().any(|t| t.dev() == dev)
    }

    /// Whether TAKE has happened.
    pub(crate) fn is_taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }

    /// The snapshot's event queue.
    pub(crate) fn events(&self) -> &EventQueue {
        &self.events
    }

    /// Appends `ranges` of the device `dev` to the difference storage
    /// (SNAPSHOT_APPEND_STORAGE; see [`Storage::append`]).
    pub(crate) fn append_storage(
        &self,
        dev: DevNum,
        ranges: &[uapi::blk_snap_block_range],
    ) -> Result {
        self.storage.append(dev, ranges)
    }

    /// Appends the original's and the image's device numbers of every image
    /// to `out`.
    pub(crate) fn images(&self, out: &mut KVec<uapi::blk_snap_image_info>) -> Result {
        let images = self.images.lock();
        for image in images.iter() {
            let orig = image.area().tracker().dev();
            let (mj, mn) = image.dev();
            out.push(
                uapi::blk_snap_image_info {
                    orig_dev_id: uapi::blk_snap_dev {
                        mj: orig.major(),
                        mn: orig.minor(),
                    },
                    image_dev_id: uapi::blk_snap_dev { mj, mn },
                },
                GFP_KERNEL,
            )?;
        }
        Ok(())
    }

    /// The original device of the image `(major, minor)`, if it is one of
    /// this snapshot's.
    pub(crate) fn image_original(&self, major: u32, minor: u32) -> Option<Arc<Tracker>> {
        let images = self.images.lock();
        images
            .iter()
            .find(|i| i.dev() == (major, minor))
            .map(|i| i.area().tracker().clone())
    }

    /// Takes the snapshot (SNAPSHOT_TAKE): every device switches its change
    /// tracking and starts copy-on-write at one point in time, and gets an
    /// image.
    ///
    /// Fails with `EALREADY` if taken before. On any other error (out of
    /// memory or image minors, a device the parameters cannot size, a
    /// failed freeze) the snapshot is as it was: nothing was switched, and
    /// the images made so far are gone with their minors.
    pub(crate) fn take(&self, params: &Params, ctx: TakeContext<'_>) -> Result {
        if self.is_taken() {
            return Err(errno::ealready());
        }
        let n = self.trackers.len();
        // Everything that allocates or sleeps happens before the barrier:
        // new CBT tables, copy-on-write state, and the image disks (which
        // show the original until the switch, and nobody may rely on them
        // before TAKE returns).
        let mut prepared = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut generations = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut replaced = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut areas = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut images = KVec::with_capacity(n, GFP_KERNEL)?;
        for t in self.trackers.iter() {
            prepared.push(t.prepare_switch(params)?, GFP_KERNEL)?;
            generations.push(random_uuid(), GFP_KERNEL)?;
            let capacity = t.capacity();
            let shift = diff_storage::chunk_shift(
                capacity,
                u32::try_from(params.chunk_minimum_shift).map_err(|_| EINVAL)?,
                u32::try_from(params.chunk_maximum_shift).map_err(|_| EINVAL)?,
                u64::try_from(params.chunk_maximum_count).map_err(|_| EINVAL)?,
                t.bdev().io_min(),
            )
            .ok_or(EFBIG)?;
            let area = DiffArea::new(
                t.clone(),
                self.storage.clone(),
                ctx.queue.clone(),
                shift,
                capacity,
            )?;
            areas.push(area, GFP_KERNEL)?;
        }
        // On any error from here on, the images made so far are dropped:
        // their disks go, and their minors are free again.
        for area in areas.iter() {
            images.push(
                ImageHandle::create(area.clone(), ctx.major, ctx.minors)?,
                GFP_KERNEL,
            )?;
        }
        // Before the freeze: announcing waits for a grace period.
        let announced = TakeBarrier::announce();
        {
            let mut frozen = KVec::with_capacity(n, GFP_KERNEL)?;
            for t in self.trackers.iter() {
                // A failed freeze thaws those frozen so far (their drop)
                // before the images go.
                frozen.push(t.bdev().freeze()?, GFP_KERNEL)?;
            }
            let _barrier = announced.write();
            for (((t, p), g), area) in self
                .trackers
                .iter()
                .zip(prepared)
                .zip(generations.iter())
                .zip(areas.iter())
            {
                // Capacity reserved above: these pushes do not allocate.
                let _ = replaced.push(t.switch(p, *g), GFP_NOWAIT);
                // Not in a taken snapshot before: there is no old area.
                let _ = t.set_area(Some(area.clone()));
            }
            self.taken.store(true, Ordering::Release);
        }
        *self.images.lock() = images;
        drop(replaced);
        Ok(())
    }

    /// Destroys the snapshot (SNAPSHOT_DESTROY): stops copy-on-write
    /// (held-back writes pass), fails image I/O, removes the images and
    /// wakes every event waiter with `ESRCH`.
    ///
    /// The trackers stay.
    pub(crate) fn destroy(&self) {
        // Without memory for this list, areas are dropped under the barrier
        // instead of after it; both are safe.
        let mut detached =
            KVec::with_capacity(self.trackers.len(), GFP_KERNEL).unwrap_or_else(|_| KVec::new());
        let announced = TakeBarrier::announce();
        {
            let _barrier = announced.write();
            for t in self.trackers.iter() {
                if let Some(area) = t.set_area(None) {
                    let _ = detached.push(area, GFP_NOWAIT);
                }
            }
        }
        drop(announced);
        let mut images = self.images.lock();
        for image in images.iter() {
            image.area().deactivate();
        }
        for area in detached.iter() {
            area.deactivate();
        }
        // Removes the disks, waits for their reads, frees their minors.
        while images.pop().is_some() {}
        drop(images);
        if let Some(queue) = detached.iter().next().map(|a| a.queue().clone()) {
            queue.flush();
        }
        self.events.close();
    }
}
