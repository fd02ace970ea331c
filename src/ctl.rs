// SPDX-License-Identifier: GPL-2.0

//! The ioctl dispatcher of `/dev/blksnap`: wires the UAPI structs to the
//! trackers and snapshots.
//!
//! Every command needs `CAP_SYS_ADMIN`. Commands are matched on their full
//! number (type, number, size and direction), so a client built against
//! another layout gets `ENOTTY` instead of a misread argument. Arguments are
//! copied through user-slice readers and writers only; every count is
//! bounded before anything is allocated for it, and every check happens
//! before any state changes; what a command changed before a later step
//! failed is undone, so a failed command leaves nothing behind.
//!
//! Errors chosen on purpose: `EINVAL` for malformed input (bad device
//! number, duplicate devices, a snapshot of zero devices or of a snapshot
//! image, too large counts, empty ranges or ranges past the device's end
//! for MARK_DIRTY_BLOCKS, and for APPEND_STORAGE also misaligned or
//! overlapping ones),
//! `ENODEV` for a device that is not tracked (or, for COLLECT_IMAGES, a
//! snapshot not taken yet), `ESRCH` for an unknown
//! snapshot id, `EALREADY` for a device already in a snapshot or a snapshot
//! already taken, `EBUSY` for removing a tracker in use, `ENODATA` for a
//! collect array that is too small (the count says what is needed), `EPERM`
//! for reading change tracking before the snapshot is taken (as the
//! reference did), `EOVERFLOW` for a collection whose count does not fit the
//! UAPI's field, `ENOTTY` for unknown commands. MARK_DIRTY_BLOCKS and
//! APPEND_STORAGE with zero ranges change nothing and succeed (after the
//! device or snapshot checks), as in the reference.
//!
//! The three collections (TRACKER_COLLECT, SNAPSHOT_COLLECT,
//! SNAPSHOT_COLLECT_IMAGES) share the header's two-call protocol in
//! [`collect_reply`]: a null array asks for the count and succeeds.
//!
//! Locking: [`Control`]'s `state` (a mutex) serializes every command that
//! changes or reads the set of trackers and snapshots. WAIT_EVENT looks its
//! snapshot up under it and waits without it; READ_CBT_MAP looks its tracker
//! up under it and copies under the tracker's lock only. The image minors'
//! mutex ([`Minors`]) nests inside it.

use crate::sys::compat::prelude::*;
use crate::sys::compat::{user_slice, FromBytes};
use crate::{
    cbt_map::copy_prefix,
    params::Params,
    snapimage::Minors,
    snapshot::{Snapshot, TakeContext},
    sys::{
        self, bdev::DevNum, disk::ImageMajor, errno, miscdev::FileOps, sectors::Sectors, CowQueue,
    },
    tracker::{Registry, Tracker},
    uapi::*,
};
use core::mem::{offset_of, size_of};
use kernel::{
    alloc::KVVec,
    new_mutex,
    sync::{Arc, Mutex},
    uaccess::UserSliceWriter,
};

/// The module's version, as VERSION reports it.
const VERSION: blk_snap_version = blk_snap_version {
    major: 1,
    minor: 0,
    revision: 0,
    build: 0,
};

/// Most devices in one snapshot.
const MAX_SNAPSHOT_DEVICES: usize = 4096;
/// Most ranges in one MARK_DIRTY_BLOCKS or APPEND_STORAGE call.
const MAX_RANGES: usize = 1 << 20;
/// Bytes of CBT table copied per lock hold in READ_CBT_MAP.
const CBT_READ_BATCH: usize = 4096;

/// What the commands share, under [`Control`]'s mutex.
struct State {
    trackers: Registry,
    snapshots: KVec<Arc<Snapshot>>,
}

impl State {
    /// The snapshot with `id`; `ESRCH` if there is none.
    fn snapshot(&self, id: &blk_snap_uuid) -> Result<&Arc<Snapshot>> {
        self.snapshots.iter().find(|s| s.id() == &id.b).ok_or(ESRCH)
    }

    /// The snapshot `dev` is in, if any.
    fn snapshot_of_device(&self, dev: DevNum) -> Option<&Arc<Snapshot>> {
        self.snapshots.iter().find(|s| s.has_device(dev))
    }

    /// The tracker of `dev`, or of the original device if `dev` is a
    /// snapshot image.
    fn tracker_or_image_original(&self, dev: DevNum) -> Option<Arc<Tracker>> {
        if let Some(t) = self.trackers.find(dev) {
            return Some(t.clone());
        }
        self.snapshots
            .iter()
            .find_map(|s| s.image_original(dev.major(), dev.minor()))
    }
}

/// The handler behind `/dev/blksnap`: the [`FileOps`] of its misc device.
pub(crate) struct Control {
    state: Pin<KBox<Mutex<State>>>,
    queue: Arc<CowQueue>,
    major: ImageMajor,
    minors: Arc<Minors>,
}

impl Control {
    /// Creates the handler with no trackers and no snapshots; copy-on-write
    /// and image I/O will run on `queue`, and images get numbers of `major`.
    pub(crate) fn new(queue: Arc<CowQueue>, major: ImageMajor) -> Result<Self> {
        let state = State {
            trackers: Registry::new()?,
            snapshots: KVec::new(),
        };
        Ok(Control {
            state: KBox::pin_init(new_mutex!(state, "blksnap_control"), GFP_KERNEL)?,
            queue,
            major,
            minors: Minors::new()?,
        })
    }
}

/// The argument struct of a command, read from user space.
fn read_arg<T: FromBytes>(arg: usize) -> Result<T> {
    user_slice(arg, size_of::<T>()).reader().read::<T>()
}

/// Writes `bytes` at `offset` into the user's argument struct.
fn write_at(arg: usize, offset: usize, bytes: &[u8]) -> Result {
    let addr = arg.checked_add(offset).ok_or(EFAULT)?;
    user_slice(addr, bytes.len()).writer().write_slice(bytes)
}

/// Reads a user array of `count` elements of `T`, bounded by `max`. An
/// empty array is not read (its pointer may be null).
fn read_array<T: FromBytes>(ptr: usize, count: u32, max: usize) -> Result<KVVec<T>> {
    let count = usize::try_from(count).map_err(|_| EINVAL)?;
    if count > max {
        return Err(EINVAL);
    }
    if count == 0 {
        return Ok(KVVec::new());
    }
    let len = count.checked_mul(size_of::<T>()).ok_or(EINVAL)?;
    let mut reader = user_slice(ptr, len).reader();
    let mut out = KVVec::with_capacity(count, GFP_KERNEL)?;
    for _ in 0..count {
        out.push(reader.read::<T>()?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Where a collect command's answer goes: the user's argument struct, the
/// offset of its count field, the count and array pointer the user passed,
/// and the size of one array element.
struct Collect {
    arg: usize,
    count_off: usize,
    count: u32,
    array: usize,
    item_size: usize,
}

/// Answers a collection with the header's two-call protocol, shared by
/// TRACKER_COLLECT, SNAPSHOT_COLLECT and SNAPSHOT_COLLECT_IMAGES.
///
/// The count field is always set to `items`, the number of elements there
/// are. A null array is the size query: it returns 0 (whatever count was
/// passed). A non-null array with room for fewer than `items` elements is
/// left untouched and the call fails with `ENODATA`. Otherwise `fill`
/// writes the `items` elements through a writer over exactly that many.
fn collect_reply(
    c: Collect,
    items: usize,
    fill: impl FnOnce(&mut UserSliceWriter) -> Result,
) -> Result<isize> {
    let needed = u32::try_from(items).map_err(|_| errno::eoverflow())?;
    write_at(c.arg, c.count_off, &needed.to_ne_bytes())?;
    if c.array == 0 {
        return Ok(0);
    }
    if c.count < needed {
        return Err(errno::enodata());
    }
    let len = items
        .checked_mul(c.item_size)
        .ok_or_else(errno::eoverflow)?;
    fill(&mut user_slice(c.array, len).writer())?;
    Ok(0)
}

/// The [`DevNum`] of a UAPI device id; `EINVAL` if it cannot be one.
fn dev_t(id: &blk_snap_dev) -> Result<DevNum> {
    DevNum::new(id.mj, id.mn).ok_or(EINVAL)
}

/// The UAPI bytes of a `blk_snap_cbt_info`, padding zeroed.
fn cbt_info_bytes(info: &blk_snap_cbt_info) -> [u8; size_of::<blk_snap_cbt_info>()] {
    let mut b = [0u8; size_of::<blk_snap_cbt_info>()];
    let mut put = |off: usize, bytes: &[u8]| {
        if let Some(dst) = b.get_mut(off..) {
            copy_prefix(dst, bytes);
        }
    };
    put(
        offset_of!(blk_snap_cbt_info, dev_id),
        &info.dev_id.mj.to_ne_bytes(),
    );
    put(
        offset_of!(blk_snap_cbt_info, dev_id) + 4,
        &info.dev_id.mn.to_ne_bytes(),
    );
    put(
        offset_of!(blk_snap_cbt_info, blk_size),
        &info.blk_size.to_ne_bytes(),
    );
    put(
        offset_of!(blk_snap_cbt_info, device_capacity),
        &info.device_capacity.to_ne_bytes(),
    );
    put(
        offset_of!(blk_snap_cbt_info, blk_count),
        &info.blk_count.to_ne_bytes(),
    );
    put(
        offset_of!(blk_snap_cbt_info, generation_id),
        &info.generation_id.b,
    );
    put(
        offset_of!(blk_snap_cbt_info, snap_number),
        &[info.snap_number],
    );
    b
}

impl Control {
    /// VERSION: writes [`VERSION`] into the argument.
    fn version(&self, arg: usize) -> Result<isize> {
        user_slice(arg, size_of::<blk_snap_version>())
            .writer()
            .write(&VERSION)?;
        Ok(0)
    }

    /// TRACKER_REMOVE: stops tracking a device that is in no snapshot.
    fn tracker_remove(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_tracker_remove = read_arg(arg)?;
        let dev = dev_t(&a.dev_id)?;
        let mut state = self.state.lock();
        if state.trackers.find(dev).is_none() {
            return Err(ENODEV);
        }
        if state.snapshot_of_device(dev).is_some() {
            return Err(EBUSY);
        }
        state.trackers.remove(dev)?;
        Ok(0)
    }

    /// TRACKER_COLLECT: describes every tracker ([`collect_reply`]).
    fn tracker_collect(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_tracker_collect = read_arg(arg)?;
        let state = self.state.lock();
        collect_reply(
            Collect {
                arg,
                count_off: offset_of!(blk_snap_tracker_collect, count),
                count: a.count,
                array: a.cbt_info_array as usize,
                item_size: size_of::<blk_snap_cbt_info>(),
            },
            state.trackers.len(),
            |writer| {
                for t in state.trackers.iter() {
                    writer.write_slice(&cbt_info_bytes(&t.info()))?;
                }
                Ok(())
            },
        )
    }

    /// TRACKER_READ_CBT_MAP: copies part of a device's readable table, once
    /// its snapshot is taken; returns how many bytes it copied.
    fn tracker_read_cbt_map(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_tracker_read_cbt_bitmap = read_arg(arg)?;
        let dev = dev_t(&a.dev_id)?;
        let tracker = {
            let state = self.state.lock();
            let tracker = state.trackers.find(dev).ok_or(ENODEV)?.clone();
            if !state.snapshot_of_device(dev).is_some_and(|s| s.is_taken()) {
                return Err(EPERM);
            }
            tracker
        };
        let mut writer = user_slice(a.buff as usize, a.length as usize).writer();
        let mut buf = [0u8; CBT_READ_BATCH];
        let mut offset = a.offset as usize;
        let mut copied = 0usize;
        while copied < a.length as usize {
            let want = (a.length as usize - copied).min(CBT_READ_BATCH);
            let n = tracker.read_cbt(offset, buf.get_mut(..want).unwrap_or(&mut []));
            if n == 0 {
                break;
            }
            writer.write_slice(buf.get(..n).unwrap_or(&[]))?;
            copied += n;
            offset += n;
        }
        Ok(copied as isize)
    }

    /// TRACKER_MARK_DIRTY_BLOCKS: marks ranges of a tracked device, or of
    /// the original of an image, changed in both tables.
    fn tracker_mark_dirty_blocks(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_tracker_mark_dirty_blocks = read_arg(arg)?;
        let dev = dev_t(&a.dev_id)?;
        let ranges =
            read_array::<blk_snap_block_range>(a.dirty_blocks_array as usize, a.count, MAX_RANGES)?;
        for r in ranges.iter() {
            if r.sector_count == 0 || r.sector_offset.checked_add(r.sector_count).is_none() {
                return Err(EINVAL);
            }
        }
        let state = self.state.lock();
        let tracker = state.tracker_or_image_original(dev).ok_or(ENODEV)?;
        let capacity = tracker.capacity();
        if ranges
            .iter()
            .any(|r| r.sector_offset + r.sector_count > capacity)
        {
            return Err(EINVAL);
        }
        for r in ranges.iter() {
            tracker.mark_dirty(Sectors::new(r.sector_offset, r.sector_count));
        }
        Ok(0)
    }

    /// SNAPSHOT_CREATE: makes a snapshot of the given devices, tracking
    /// those not tracked yet, and writes its id into the argument.
    fn snapshot_create(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_create = read_arg(arg)?;
        // A snapshot of no devices is no snapshot.
        if a.count == 0 {
            return Err(EINVAL);
        }
        let ids =
            read_array::<blk_snap_dev>(a.dev_id_array as usize, a.count, MAX_SNAPSHOT_DEVICES)?;
        let mut devs = KVVec::with_capacity(ids.len(), GFP_KERNEL)?;
        for id in ids.iter() {
            let dev = dev_t(id)?;
            // Distinct devices, and no snapshot of a snapshot image.
            if devs.contains(&dev) || id.mj == self.major.major() {
                return Err(EINVAL);
            }
            devs.push(dev, GFP_KERNEL)?;
        }
        let params = Params::current();
        let mut state = self.state.lock();
        if devs.iter().any(|&d| state.snapshot_of_device(d).is_some()) {
            return Err(errno::ealready());
        }
        state.snapshots.reserve(1, GFP_KERNEL)?;
        // Attach trackers, make the snapshot and report its id; on failure,
        // detach the trackers this call created (after the snapshot is gone).
        let mut created = KVec::with_capacity(devs.len(), GFP_KERNEL)?;
        let made = (|| -> Result<Arc<Snapshot>> {
            let mut trackers = KVec::with_capacity(devs.len(), GFP_KERNEL)?;
            for &dev in devs.iter() {
                if state.trackers.find(dev).is_none() {
                    created.push(dev, GFP_KERNEL)?;
                }
                trackers.push(state.trackers.attach(dev, &params)?, GFP_KERNEL)?;
            }
            let snapshot = Snapshot::new(trackers, &params)?;
            let id_off = offset_of!(blk_snap_snapshot_create, id);
            if let Err(e) = write_at(arg, id_off, snapshot.id()) {
                snapshot.destroy();
                return Err(e);
            }
            Ok(snapshot)
        })();
        match made {
            // Cannot fail: reserved above.
            Ok(snapshot) => state.snapshots.push(snapshot, GFP_KERNEL)?,
            Err(e) => {
                for &dev in created.iter() {
                    let _ = state.trackers.remove(dev);
                }
                return Err(e);
            }
        }
        Ok(0)
    }

    /// SNAPSHOT_DESTROY: destroys a snapshot ([`Snapshot::destroy`]).
    fn snapshot_destroy(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_destroy = read_arg(arg)?;
        let mut state = self.state.lock();
        let pos = state
            .snapshots
            .iter()
            .position(|s| s.id() == &a.id.b)
            .ok_or(ESRCH)?;
        if let Some(snapshot) = state.snapshots.swap_remove(pos) {
            snapshot.destroy();
        }
        Ok(0)
    }

    /// SNAPSHOT_APPEND_STORAGE: adds ranges to a snapshot's difference
    /// storage.
    fn snapshot_append_storage(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_append_storage = read_arg(arg)?;
        let dev = dev_t(&a.dev_id)?;
        let ranges = read_array::<blk_snap_block_range>(a.ranges as usize, a.count, MAX_RANGES)?;
        let state = self.state.lock();
        let snapshot = state.snapshot(&a.id)?;
        // No ranges: nothing to append (the device is not even opened).
        if !ranges.is_empty() {
            snapshot.append_storage(dev, &ranges)?;
        }
        Ok(0)
    }

    /// SNAPSHOT_TAKE: takes a snapshot ([`Snapshot::take`]).
    fn snapshot_take(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_take = read_arg(arg)?;
        let params = Params::current();
        let state = self.state.lock();
        let snapshot = state.snapshot(&a.id)?.clone();
        snapshot.take(
            &params,
            TakeContext {
                queue: &self.queue,
                major: &self.major,
                minors: &self.minors,
            },
        )?;
        Ok(0)
    }

    /// SNAPSHOT_COLLECT: lists every snapshot's id ([`collect_reply`]).
    fn snapshot_collect(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_collect = read_arg(arg)?;
        let state = self.state.lock();
        collect_reply(
            Collect {
                arg,
                count_off: offset_of!(blk_snap_snapshot_collect, count),
                count: a.count,
                array: a.ids as usize,
                item_size: size_of::<blk_snap_uuid>(),
            },
            state.snapshots.len(),
            |writer| {
                for s in state.snapshots.iter() {
                    writer.write_slice(s.id())?;
                }
                Ok(())
            },
        )
    }

    /// SNAPSHOT_COLLECT_IMAGES: lists a taken snapshot's images with their
    /// originals ([`collect_reply`]).
    fn snapshot_collect_images(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_collect_images = read_arg(arg)?;
        let mut images = KVec::new();
        {
            let state = self.state.lock();
            let snapshot = state.snapshot(&a.id)?;
            if !snapshot.is_taken() {
                return Err(ENODEV);
            }
            snapshot.images(&mut images)?;
        }
        collect_reply(
            Collect {
                arg,
                count_off: offset_of!(blk_snap_snapshot_collect_images, count),
                count: a.count,
                array: a.image_info_array as usize,
                item_size: size_of::<blk_snap_image_info>(),
            },
            images.len(),
            |writer| {
                for i in images.iter() {
                    for v in [
                        i.orig_dev_id.mj,
                        i.orig_dev_id.mn,
                        i.image_dev_id.mj,
                        i.image_dev_id.mn,
                    ] {
                        writer.write_slice(&v.to_ne_bytes())?;
                    }
                }
                Ok(())
            },
        )
    }

    /// SNAPSHOT_WAIT_EVENT: waits for a snapshot's next event and writes it
    /// into the argument.
    fn snapshot_wait_event(&self, arg: usize) -> Result<isize> {
        let a: blk_snap_snapshot_event_head = read_arg(arg)?;
        let snapshot = self.state.lock().snapshot(&a.id)?.clone();
        let event = snapshot.events().wait(a.timeout_ms)?;
        write_at(
            arg,
            offset_of!(blk_snap_snapshot_event, code),
            &event.code.to_ne_bytes(),
        )?;
        write_at(
            arg,
            offset_of!(blk_snap_snapshot_event, time_label),
            &event.time_ns.to_ne_bytes(),
        )?;
        write_at(arg, offset_of!(blk_snap_snapshot_event, data), &event.data)?;
        Ok(0)
    }
}

impl FileOps for Control {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        if !sys::capable_sys_admin() {
            return Err(EPERM);
        }
        match cmd {
            IOCTL_BLK_SNAP_VERSION => self.version(arg),
            IOCTL_BLK_SNAP_TRACKER_REMOVE => self.tracker_remove(arg),
            IOCTL_BLK_SNAP_TRACKER_COLLECT => self.tracker_collect(arg),
            IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP => self.tracker_read_cbt_map(arg),
            IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS => self.tracker_mark_dirty_blocks(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_CREATE => self.snapshot_create(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_DESTROY => self.snapshot_destroy(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE => self.snapshot_append_storage(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_TAKE => self.snapshot_take(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_COLLECT => self.snapshot_collect(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES => self.snapshot_collect_images(arg),
            IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT => self.snapshot_wait_event(arg),
            _ => Err(ENOTTY),
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        while let Some(s) = state.snapshots.pop() {
            s.destroy();
        }
    }
}
