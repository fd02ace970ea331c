// SPDX-License-Identifier: GPL-2.0
//! Safe user-space interface to the blksnap kernel module: block device
//! snapshots and changed block tracking (CBT).
//!
//! The module is driven through ioctls on its control device,
//! `/dev/blksnap`. [`Control`] opens it and offers one method per ioctl of
//! `include/uapi/linux/blk_snap.h`, with typed arguments ([`DevId`],
//! [`SnapshotId`], [`SectorRange`]) and results ([`Version`], [`CbtInfo`],
//! [`ImageInfo`], [`Event`]); failures keep their errno in [`Error`]. The raw
//! header types are in [`uapi`].
//!
//! On top of the ioctls:
//!
//! * [`session`]: a snapshot with managed difference storage ([`Session`]):
//!   files preallocated in a directory (or fixed ranges of a device), grown
//!   by a background thread on every `low_free_space` event, and removed
//!   when the session ends;
//! * [`storage`]: preallocated files mapped with `FS_IOC_FIEMAP` into the
//!   page-aligned sector ranges the module takes;
//! * [`backup`]: full and CBT-driven incremental backups of snapshot images,
//!   restore of a chain, verification.
//!
//! ```no_run
//! use blksnap::{Control, DevId, Event, SectorRange};
//!
//! fn main() -> Result<(), blksnap::Error> {
//!     let ctl = Control::open()?;
//!     println!("module version {}", ctl.version()?);
//!
//!     let dev = DevId::of_path("/dev/sdb1")?;
//!     let id = ctl.snapshot_create(&[dev])?;
//!     // The module asks for its first difference storage right away.
//!     if let Event::LowFreeSpace { requested_sectors, .. } = ctl.snapshot_wait_event(id, 1000)? {
//!         let storage = DevId::of_path("/dev/sdc")?;
//!         ctl.snapshot_append_storage(id, storage, &[SectorRange::new(0, requested_sectors)])?;
//!     }
//!     ctl.snapshot_take(id)?;
//!     for image in ctl.snapshot_collect_images(id)? {
//!         println!("{} -> {}", image.orig_dev_id, image.image_path().display());
//!     }
//!     ctl.snapshot_destroy(id)?;
//!     Ok(())
//! }
//! ```

pub mod backup;
mod control;
mod error;
pub mod session;
pub mod storage;
#[cfg(test)]
mod testutil;
mod types;
pub mod uapi;

pub use control::{Control, DEFAULT_CONTROL_PATH};
pub use error::{errno_name, io_errno, Error, Result};
pub use nix::errno::Errno;
pub use session::{DirectoryStorage, Session, SessionBuilder, SessionEvent, StorageSpec};
pub use types::{CbtInfo, DevId, Event, ImageInfo, SectorRange, SnapshotId, Version, SECTOR_SIZE};
pub use uuid::Uuid;
