// SPDX-License-Identifier: GPL-2.0
//
// Shared by the module (src/uapi/mod.rs) and user space (crates/blksnap):
// both include this file right after the types bindgen generated from
// include/uapi/linux/blk_snap.h, so the ioctl numbers below come from the
// header's enum and struct sizes. The assertions pin every struct's size and
// field offsets and every ioctl number to the v1 ABI that existing clients
// use; a header change that breaks it does not compile.

/// `_IOC_WRITE` of `<asm-generic/ioctl.h>`.
const IOC_WRITE: u32 = 1;
/// `_IOC_READ` of `<asm-generic/ioctl.h>`.
const IOC_READ: u32 = 2;

/// Encodes an ioctl number as `_IOC(dir, 'V', nr, size)` does.
const fn blk_snap_ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((BLK_SNAP as u32) << 8) | nr
}

/// The number of `IOCTL_BLK_SNAP_VERSION`: get the module's version.
pub const IOCTL_BLK_SNAP_VERSION: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_version,
    core::mem::size_of::<blk_snap_version>(),
);
/// The number of `IOCTL_BLK_SNAP_TRACKER_REMOVE`: remove a device from tracking.
pub const IOCTL_BLK_SNAP_TRACKER_REMOVE: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_tracker_remove,
    core::mem::size_of::<blk_snap_tracker_remove>(),
);
/// The number of `IOCTL_BLK_SNAP_TRACKER_COLLECT`: collect every tracked device.
pub const IOCTL_BLK_SNAP_TRACKER_COLLECT: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_tracker_collect,
    core::mem::size_of::<blk_snap_tracker_collect>(),
);
/// The number of `IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP`: read a device's change-tracking map.
pub const IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP: u32 = blk_snap_ioc(
    IOC_READ,
    blk_snap_ioctl_tracker_read_cbt_map,
    core::mem::size_of::<blk_snap_tracker_read_cbt_bitmap>(),
);
/// The number of `IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS`: mark blocks of a device changed.
pub const IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS: u32 = blk_snap_ioc(
    IOC_READ,
    blk_snap_ioctl_tracker_mark_dirty_blocks,
    core::mem::size_of::<blk_snap_tracker_mark_dirty_blocks>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_CREATE`: create a snapshot.
pub const IOCTL_BLK_SNAP_SNAPSHOT_CREATE: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_snapshot_create,
    core::mem::size_of::<blk_snap_snapshot_create>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_DESTROY`: destroy a snapshot.
pub const IOCTL_BLK_SNAP_SNAPSHOT_DESTROY: u32 = blk_snap_ioc(
    IOC_READ,
    blk_snap_ioctl_snapshot_destroy,
    core::mem::size_of::<blk_snap_snapshot_destroy>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE`: append difference storage to a snapshot.
pub const IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_snapshot_append_storage,
    core::mem::size_of::<blk_snap_snapshot_append_storage>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_TAKE`: take a snapshot.
pub const IOCTL_BLK_SNAP_SNAPSHOT_TAKE: u32 = blk_snap_ioc(
    IOC_READ,
    blk_snap_ioctl_snapshot_take,
    core::mem::size_of::<blk_snap_snapshot_take>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_COLLECT`: collect every snapshot.
pub const IOCTL_BLK_SNAP_SNAPSHOT_COLLECT: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_snapshot_collect,
    core::mem::size_of::<blk_snap_snapshot_collect>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES`: collect a snapshot's images.
pub const IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_snapshot_collect_images,
    core::mem::size_of::<blk_snap_snapshot_collect_images>(),
);
/// The number of `IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT`: wait for a snapshot's next event.
pub const IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT: u32 = blk_snap_ioc(
    IOC_WRITE,
    blk_snap_ioctl_snapshot_wait_event,
    core::mem::size_of::<blk_snap_snapshot_event>(),
);

/// The number of every ioctl of the interface, in the header's order.
pub const IOCTL_BLK_SNAP_ALL: [u32; 12] = [
    IOCTL_BLK_SNAP_VERSION,
    IOCTL_BLK_SNAP_TRACKER_REMOVE,
    IOCTL_BLK_SNAP_TRACKER_COLLECT,
    IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP,
    IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS,
    IOCTL_BLK_SNAP_SNAPSHOT_CREATE,
    IOCTL_BLK_SNAP_SNAPSHOT_DESTROY,
    IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
    IOCTL_BLK_SNAP_SNAPSHOT_TAKE,
    IOCTL_BLK_SNAP_SNAPSHOT_COLLECT,
    IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES,
    IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT,
];

// The v1 ABI table (x86_64) that existing clients were built against.
const _: () = {
    assert!(IOCTL_BLK_SNAP_VERSION == 0x4008_5600);
    assert!(IOCTL_BLK_SNAP_TRACKER_REMOVE == 0x4008_5601);
    assert!(IOCTL_BLK_SNAP_TRACKER_COLLECT == 0x4010_5602);
    assert!(IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP == 0x8018_5603);
    assert!(IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS == 0x8018_5604);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_CREATE == 0x4020_5605);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_DESTROY == 0x8010_5606);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE == 0x4028_5607);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_TAKE == 0x8010_5608);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT == 0x4010_5609);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES == 0x4020_560a);
    assert!(IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT == 0x5000_560b);
};

/// Asserts a struct's size and the offsets of its fields at compile time.
macro_rules! blk_snap_assert_layout {
    ($ty:ident, $size:expr $(, $field:ident @ $off:expr)*) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            $(assert!(core::mem::offset_of!($ty, $field) == $off);)*
        };
    };
}

blk_snap_assert_layout!(blk_snap_version, 8, major @ 0, minor @ 2, revision @ 4, build @ 6);
blk_snap_assert_layout!(blk_snap_dev, 8, mj @ 0, mn @ 4);
blk_snap_assert_layout!(blk_snap_tracker_remove, 8, dev_id @ 0);
blk_snap_assert_layout!(blk_snap_uuid, 16, b @ 0);
blk_snap_assert_layout!(
    blk_snap_cbt_info, 48,
    dev_id @ 0, blk_size @ 8, device_capacity @ 16, blk_count @ 24,
    generation_id @ 28, snap_number @ 44
);
blk_snap_assert_layout!(blk_snap_tracker_collect, 16, count @ 0, cbt_info_array @ 8);
blk_snap_assert_layout!(
    blk_snap_tracker_read_cbt_bitmap, 24,
    dev_id @ 0, offset @ 8, length @ 12, buff @ 16
);
blk_snap_assert_layout!(blk_snap_block_range, 16, sector_offset @ 0, sector_count @ 8);
blk_snap_assert_layout!(
    blk_snap_tracker_mark_dirty_blocks, 24,
    dev_id @ 0, count @ 8, dirty_blocks_array @ 16
);
blk_snap_assert_layout!(blk_snap_snapshot_create, 32, count @ 0, dev_id_array @ 8, id @ 16);
blk_snap_assert_layout!(blk_snap_snapshot_destroy, 16, id @ 0);
blk_snap_assert_layout!(
    blk_snap_snapshot_append_storage, 40,
    id @ 0, dev_id @ 16, count @ 24, ranges @ 32
);
blk_snap_assert_layout!(blk_snap_snapshot_take, 16, id @ 0);
blk_snap_assert_layout!(blk_snap_snapshot_collect, 16, count @ 0, ids @ 8);
blk_snap_assert_layout!(blk_snap_image_info, 16, orig_dev_id @ 0, image_dev_id @ 8);
blk_snap_assert_layout!(
    blk_snap_snapshot_collect_images, 32,
    id @ 0, count @ 16, image_info_array @ 24
);
blk_snap_assert_layout!(
    blk_snap_snapshot_event, 4096,
    id @ 0, timeout_ms @ 16, code @ 20, time_label @ 24, data @ 32
);
blk_snap_assert_layout!(blk_snap_event_low_free_space, 8, requested_nr_sect @ 0);
blk_snap_assert_layout!(blk_snap_event_corrupted, 12, orig_dev_id @ 0, err_code @ 8);

const _: () = {
    assert!(blk_snap_event_code_low_free_space == 0);
    assert!(blk_snap_event_code_corrupted == 1);
};
