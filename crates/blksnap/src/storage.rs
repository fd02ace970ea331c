// SPDX-License-Identifier: GPL-2.0
//! Difference storage in preallocated files.
//!
//! The module stores copy-on-write data in sector ranges of block devices.
//! The usual source of such ranges is a file: it is preallocated with
//! `fallocate(2)`, its physical extents are found with the `FS_IOC_FIEMAP`
//! ioctl, and the extents are converted to page-aligned sector ranges on the
//! block device that holds the file system ([`extents_to_ranges`]).
//!
//! While the module writes into those sectors, the file must not be
//! deleted, truncated or written through the file system, or its blocks would
//! go to other files. [`StorageFile`] keeps the file open and, unless told
//! otherwise, sets its immutable attribute (`chattr +i`) so that nobody can
//! change or delete it; [`StorageFile::remove`] undoes both and deletes it.
//!
//! ```no_run
//! use blksnap::storage::StorageFile;
//!
//! # fn main() -> blksnap::Result<()> {
//! let file = StorageFile::create("/var/tmp/snap.diff", 256 << 20, true)?;
//! println!("{} sectors on {}", file.sectors(), file.device());
//! for r in file.ranges() {
//!     println!("  {r}");
//! }
//! file.remove()?;
//! # Ok(())
//! # }
//! ```

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use linux_raw_sys::ioctl::{self, FIEMAP_FLAG_SYNC, FS_IOC_FIEMAP};
use nix::errno::Errno;
use nix::libc;

use crate::error::{io_err, Error, Result};
use crate::types::{DevId, SectorRange, SECTOR_SIZE};

/// The alignment the module requires of storage ranges, in bytes (a page).
pub const STORAGE_ALIGNMENT: u64 = 4096;

/// Sectors per [`STORAGE_ALIGNMENT`].
const SECTORS_PER_PAGE: u64 = STORAGE_ALIGNMENT / SECTOR_SIZE;

/// `FIEMAP_EXTENT_LAST`: the last extent of the file.
pub const FIEMAP_EXTENT_LAST: u32 = ioctl::FIEMAP_EXTENT_LAST;
/// `FIEMAP_EXTENT_UNKNOWN`: the location is not known.
pub const FIEMAP_EXTENT_UNKNOWN: u32 = ioctl::FIEMAP_EXTENT_UNKNOWN;
/// `FIEMAP_EXTENT_DELALLOC`: delayed allocation, no location yet.
pub const FIEMAP_EXTENT_DELALLOC: u32 = ioctl::FIEMAP_EXTENT_DELALLOC;
/// `FIEMAP_EXTENT_ENCODED`: the data is encoded (compressed...).
pub const FIEMAP_EXTENT_ENCODED: u32 = ioctl::FIEMAP_EXTENT_ENCODED;
/// `FIEMAP_EXTENT_DATA_ENCRYPTED`: the data is encrypted.
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = ioctl::FIEMAP_EXTENT_DATA_ENCRYPTED;
/// `FIEMAP_EXTENT_NOT_ALIGNED`: the extent is not block-aligned.
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = ioctl::FIEMAP_EXTENT_NOT_ALIGNED;
/// `FIEMAP_EXTENT_DATA_INLINE`: the data lives in metadata.
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = ioctl::FIEMAP_EXTENT_DATA_INLINE;
/// `FIEMAP_EXTENT_DATA_TAIL`: the data is packed with other files' tails.
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = ioctl::FIEMAP_EXTENT_DATA_TAIL;
/// `FIEMAP_EXTENT_UNWRITTEN`: allocated but not written (what `fallocate`
/// gives; fine for difference storage).
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = ioctl::FIEMAP_EXTENT_UNWRITTEN;
/// `FIEMAP_EXTENT_SHARED`: the blocks are shared with another file.
pub const FIEMAP_EXTENT_SHARED: u32 = ioctl::FIEMAP_EXTENT_SHARED;

/// Extent flags that make an extent unusable as difference storage: its
/// sectors are unknown, not the file's alone, or not plain data.
const UNUSABLE_FLAGS: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_ENCODED
    | FIEMAP_EXTENT_DATA_ENCRYPTED
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL
    | FIEMAP_EXTENT_SHARED;

/// One extent of a file as `FS_IOC_FIEMAP` reports it (all in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the block device holding the file system.
    pub physical: u64,
    /// Length.
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

/// The page-aligned sector range inside `length` bytes at byte `physical`:
/// the start is rounded up and the end down to [`STORAGE_ALIGNMENT`].
/// `None` when no whole page is inside.
///
/// ```
/// use blksnap::storage::align_to_pages;
/// use blksnap::SectorRange;
///
/// assert_eq!(align_to_pages(4096, 8192), Some(SectorRange::new(8, 16)));
/// // 1 KiB file system blocks: only the whole page inside is usable.
/// assert_eq!(align_to_pages(1024, 7168), Some(SectorRange::new(8, 8)));
/// assert_eq!(align_to_pages(1024, 2048), None);
/// ```
pub fn align_to_pages(physical: u64, length: u64) -> Option<SectorRange> {
    let start = physical.div_ceil(STORAGE_ALIGNMENT);
    let end = physical.checked_add(length)? / STORAGE_ALIGNMENT;
    (end > start)
        .then(|| SectorRange::new(start * SECTORS_PER_PAGE, (end - start) * SECTORS_PER_PAGE))
}

/// Sorts `ranges` and merges the ones that touch or overlap.
pub fn merge_ranges(mut ranges: Vec<SectorRange>) -> Vec<SectorRange> {
    ranges.retain(|r| r.count > 0);
    ranges.sort();
    let mut out: Vec<SectorRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.start + last.count => {
                let end = (last.start + last.count).max(r.start + r.count);
                last.count = end - last.start;
            }
            _ => out.push(r),
        }
    }
    out
}

/// The total number of sectors in `ranges`.
pub fn total_sectors(ranges: &[SectorRange]) -> u64 {
    ranges.iter().map(|r| r.count).sum()
}

/// Converts the extents of a file into page-aligned, merged sector ranges
/// for the module.
///
/// Fails (with the reason) when an extent has a flag that makes its
/// sectors unusable: unknown or delayed location, encoded, encrypted,
/// inline, tail-packed, not aligned, or shared with another file (reflink).
/// Unwritten extents, what `fallocate` makes, are fine.
///
/// ```
/// use blksnap::storage::{extents_to_ranges, Extent, FIEMAP_EXTENT_UNWRITTEN};
/// use blksnap::SectorRange;
///
/// let ext = |logical, physical, length| Extent { logical, physical, length, flags: FIEMAP_EXTENT_UNWRITTEN };
/// let ranges = extents_to_ranges(&[ext(0, 1 << 20, 65536), ext(65536, (1 << 20) + 65536, 4096)]).unwrap();
/// assert_eq!(ranges, [SectorRange::new(2048, 136)]);
/// ```
pub fn extents_to_ranges(extents: &[Extent]) -> std::result::Result<Vec<SectorRange>, String> {
    let mut ranges = Vec::with_capacity(extents.len());
    for e in extents {
        if e.flags & UNUSABLE_FLAGS != 0 {
            return Err(format!(
                "the extent at file offset {} has flags {:#x}: its sectors cannot be used directly",
                e.logical, e.flags
            ));
        }
        if let Some(r) = align_to_pages(e.physical, e.length) {
            ranges.push(r);
        }
    }
    Ok(merge_ranges(ranges))
}

// `struct fiemap_extent` and `struct fiemap` of `<linux/fiemap.h>`:
// linux-raw-sys has the request number and the flags but not the structs
// (nor has libc), so they are written out here and checked below against
// the kernel's sizes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtentRaw {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

const FIEMAP_BATCH: usize = 256;

#[repr(C)]
struct FiemapRaw {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtentRaw; FIEMAP_BATCH],
}

// The size of `struct fiemap` is in its request number (13 or 14 bits
// from bit 16, depending on the architecture); an extent is 56 bytes.
const _: () =
    assert!((FS_IOC_FIEMAP >> 16) & 0x1fff == std::mem::offset_of!(FiemapRaw, fm_extents) as u32);
const _: () = assert!(std::mem::size_of::<FiemapExtentRaw>() == 56);

/// `FS_IMMUTABLE_FL` of `FS_IOC_GETFLAGS`.
const FS_IMMUTABLE_FL: libc::c_int = linux_raw_sys::general::FS_IMMUTABLE_FL as libc::c_int;

/// The raw ioctls (private: the macros make public functions).
mod sys {
    use super::{libc, FiemapRaw, FS_IOC_FIEMAP};

    nix::ioctl_readwrite_bad!(ioc_fiemap, FS_IOC_FIEMAP, FiemapRaw);
    nix::ioctl_read_bad!(ioc_getflags, libc::FS_IOC_GETFLAGS, libc::c_int);
    nix::ioctl_write_ptr_bad!(ioc_setflags, libc::FS_IOC_SETFLAGS, libc::c_int);
}
use sys::{ioc_fiemap, ioc_getflags, ioc_setflags};

fn file_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(Errno) -> Error + 'a {
    move |errno| Error::File {
        op,
        path: path.to_path_buf(),
        errno,
    }
}

/// The extents of `file` (`FS_IOC_FIEMAP` with `FIEMAP_FLAG_SYNC`, in
/// batches until the last extent).
pub fn fiemap(file: &File, path: &Path) -> Result<Vec<Extent>> {
    let mut extents = Vec::new();
    let mut buf = Box::new(FiemapRaw {
        fm_start: 0,
        fm_length: u64::MAX,
        fm_flags: FIEMAP_FLAG_SYNC,
        fm_mapped_extents: 0,
        fm_extent_count: FIEMAP_BATCH as u32,
        fm_reserved: 0,
        fm_extents: [FiemapExtentRaw::default(); FIEMAP_BATCH],
    });
    let mut start = 0u64;
    loop {
        buf.fm_start = start;
        buf.fm_length = u64::MAX - start;
        buf.fm_flags = FIEMAP_FLAG_SYNC;
        buf.fm_mapped_extents = 0;
        buf.fm_extent_count = FIEMAP_BATCH as u32;
        // SAFETY: `buf` is a valid fiemap header followed by room for
        // `fm_extent_count` extents, exclusively borrowed for the call.
        unsafe { ioc_fiemap(file.as_raw_fd(), &mut *buf) }.map_err(file_err("fiemap", path))?;
        let n = (buf.fm_mapped_extents as usize).min(FIEMAP_BATCH);
        if n == 0 {
            return Ok(extents);
        }
        let mut last = false;
        for e in &buf.fm_extents[..n] {
            extents.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        let e = &buf.fm_extents[n - 1];
        if last || e.fe_length == 0 {
            return Ok(extents);
        }
        start = e.fe_logical + e.fe_length;
    }
}

/// Sets or clears the immutable attribute of `file` (`chattr +i`/`-i`).
///
/// Returns `Ok(false)` when the file system has no such attribute.
pub fn set_immutable(file: &File, path: &Path, on: bool) -> Result<bool> {
    let fd = file.as_raw_fd();
    let mut flags: libc::c_int = 0;
    // SAFETY: `flags` is a valid int the kernel writes the flags to.
    match unsafe { ioc_getflags(fd, &mut flags) } {
        Ok(_) => {}
        Err(Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL) => return Ok(false),
        Err(e) => return Err(file_err("get attributes of", path)(e)),
    }
    let new = if on {
        flags | FS_IMMUTABLE_FL
    } else {
        flags & !FS_IMMUTABLE_FL
    };
    if new != flags {
        // SAFETY: `new` is a valid int the kernel reads the flags from.
        match unsafe { ioc_setflags(fd, &new) } {
            Ok(_) => {}
            Err(Errno::ENOTTY | Errno::EOPNOTSUPP) => return Ok(false),
            Err(e) => return Err(file_err("set attributes of", path)(e)),
        }
    }
    Ok(true)
}

/// The block device whose sectors hold the data of files on the file
/// system of `file` (its `st_dev`), checked to be a real block device.
///
/// File systems that span several devices or none (btrfs, network and
/// virtual file systems) report a device number that is not a block device:
/// their files cannot be difference storage.
pub fn backing_device(file: &File, path: &Path) -> Result<DevId> {
    let meta = file.metadata().map_err(|e| io_err("stat", path, &e))?;
    let dev = DevId::from_dev_t(meta.dev());
    if !Path::new(&format!("/sys/dev/block/{dev}")).exists() {
        return Err(Error::Storage {
            path: path.to_path_buf(),
            reason: format!(
                "the file system is on {dev}, which is not a block device \
                 (btrfs, network and memory file systems cannot hold difference storage)"
            ),
        });
    }
    Ok(dev)
}

/// A preallocated file used as difference storage: held open (and
/// immutable, if asked) until [`StorageFile::remove`] or
/// [`StorageFile::release`].
///
/// Dropping it closes the file and leaves it on disk, still immutable.
#[derive(Debug)]
pub struct StorageFile {
    file: File,
    path: PathBuf,
    device: DevId,
    ranges: Vec<SectorRange>,
    size: u64,
    immutable: bool,
}

impl StorageFile {
    /// Creates `path` (which must not exist), preallocates `size` bytes
    /// (rounded up to [`STORAGE_ALIGNMENT`]), maps it, and with `immutable`
    /// sets the immutable attribute where the file system has it.
    ///
    /// On failure the file is removed again.
    pub fn create(path: impl AsRef<Path>, size: u64, immutable: bool) -> Result<Self> {
        let path = path.as_ref();
        let size = size.div_ceil(STORAGE_ALIGNMENT).max(1) * STORAGE_ALIGNMENT;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_err("create", path, &e))?;
        let result = (|| {
            nix::fcntl::fallocate(
                &file,
                nix::fcntl::FallocateFlags::empty(),
                0,
                size as libc::off_t,
            )
            .map_err(file_err("fallocate", path))?;
            file.sync_all().map_err(|e| io_err("fsync", path, &e))?;
            Self::map(file, path, immutable)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Maps an existing, already allocated file (holes are skipped).
    pub fn open(path: impl AsRef<Path>, immutable: bool) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_err("open", path, &e))?;
        if !file
            .metadata()
            .map_err(|e| io_err("stat", path, &e))?
            .is_file()
        {
            return Err(Error::Storage {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        Self::map(file, path, immutable)
    }

    fn map(file: File, path: &Path, immutable: bool) -> Result<Self> {
        let device = backing_device(&file, path)?;
        let size = file.metadata().map_err(|e| io_err("stat", path, &e))?.len();
        let extents = fiemap(&file, path)?;
        let ranges = extents_to_ranges(&extents).map_err(|reason| Error::Storage {
            path: path.to_path_buf(),
            reason,
        })?;
        if ranges.is_empty() {
            return Err(Error::Storage {
                path: path.to_path_buf(),
                reason: "the file has no allocated, page-aligned extents".into(),
            });
        }
        let immutable = immutable && set_immutable(&file, path, true)?;
        Ok(StorageFile {
            file,
            path: path.to_path_buf(),
            device,
            ranges,
            size,
            immutable,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The block device holding the file's sectors.
    pub fn device(&self) -> DevId {
        self.device
    }

    /// The file's page-aligned sector ranges on [`StorageFile::device`].
    pub fn ranges(&self) -> &[SectorRange] {
        &self.ranges
    }

    /// The number of sectors in [`StorageFile::ranges`].
    pub fn sectors(&self) -> u64 {
        total_sectors(&self.ranges)
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the immutable attribute was set.
    pub fn is_immutable(&self) -> bool {
        self.immutable
    }

    /// Clears the immutable attribute (if this set it), closes and deletes
    /// the file. Only call it once the module no longer uses the storage
    /// (after `SNAPSHOT_DESTROY`).
    pub fn remove(self) -> Result<()> {
        let path = self.release()?;
        std::fs::remove_file(&path).map_err(|e| io_err("remove", &path, &e))
    }

    /// Clears the immutable attribute (if this set it) and closes the file,
    /// leaving it on disk; returns its path.
    pub fn release(self) -> Result<PathBuf> {
        if self.immutable {
            set_immutable(&self.file, &self.path, false)?;
        }
        Ok(self.path)
    }

    /// Closes the file and leaves it on disk as it is (immutable if it was
    /// set); returns its path. For storage that outlives this process.
    pub fn keep(self) -> PathBuf {
        self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64, flags: u32) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags,
        }
    }

    #[test]
    fn page_alignment() {
        assert_eq!(align_to_pages(0, 4096), Some(SectorRange::new(0, 8)));
        assert_eq!(align_to_pages(0, 4095), None);
        assert_eq!(align_to_pages(512, 4096), None);
        assert_eq!(align_to_pages(512, 8192), Some(SectorRange::new(8, 8)));
        assert_eq!(
            align_to_pages(4096, 12288 + 100),
            Some(SectorRange::new(8, 24))
        );
        assert_eq!(align_to_pages(u64::MAX - 10, 100), None);
        assert_eq!(align_to_pages(1 << 40, 0), None);
    }

    #[test]
    fn merging() {
        let r = SectorRange::new;
        assert_eq!(merge_ranges(vec![]), vec![]);
        assert_eq!(
            merge_ranges(vec![r(16, 8), r(0, 8), r(8, 8), r(100, 0), r(40, 8)]),
            vec![r(0, 24), r(40, 8)]
        );
        // Overlaps and containment.
        assert_eq!(
            merge_ranges(vec![r(0, 32), r(8, 8), r(24, 16)]),
            vec![r(0, 40)]
        );
        assert_eq!(total_sectors(&[r(0, 8), r(64, 16)]), 24);
    }

    #[test]
    fn extents() {
        let u = FIEMAP_EXTENT_UNWRITTEN;
        // Contiguous extents merge; the last-extent flag does not matter.
        let got = extents_to_ranges(&[
            ext(0, 1 << 20, 1 << 20, u),
            ext(1 << 20, 2 << 20, 1 << 20, u | FIEMAP_EXTENT_LAST),
        ])
        .unwrap();
        assert_eq!(got, vec![SectorRange::new(2048, 4096)]);
        // Sorted by position on the device, not in the file.
        let got = extents_to_ranges(&[ext(0, 8 << 20, 4096, 0), ext(4096, 4096, 4096, 0)]).unwrap();
        assert_eq!(
            got,
            vec![SectorRange::new(8, 8), SectorRange::new(16384, 8)]
        );
        // Misaligned extents shrink to whole pages or vanish.
        let got =
            extents_to_ranges(&[ext(0, 1024, 3072, 0), ext(3072, 8192 + 1024, 8192, 0)]).unwrap();
        assert_eq!(got, vec![SectorRange::new(24, 8)]);
        for bad in [
            FIEMAP_EXTENT_UNKNOWN,
            FIEMAP_EXTENT_DELALLOC,
            FIEMAP_EXTENT_ENCODED,
            FIEMAP_EXTENT_DATA_INLINE,
            FIEMAP_EXTENT_DATA_TAIL,
            FIEMAP_EXTENT_NOT_ALIGNED,
            FIEMAP_EXTENT_SHARED,
            FIEMAP_EXTENT_DATA_ENCRYPTED,
        ] {
            let e = extents_to_ranges(&[ext(0, 0, 4096, 0), ext(4096, 4096, 4096, bad)]);
            assert!(e.unwrap_err().contains("file offset 4096"), "{bad:#x}");
        }
    }

    #[test]
    fn storage_file_on_the_host() {
        // The build directory is on a real file system on most machines;
        // skip quietly where it is not (tmpfs, overlay, btrfs...).
        let dir = crate::testutil::TempDir::new("storage");
        let path = dir.path().join("diff");
        match StorageFile::create(&path, 1 << 20, false) {
            Ok(f) => {
                assert_eq!(f.size(), 1 << 20);
                assert!(f.sectors() > 0 && f.sectors() <= 2048);
                assert!(f
                    .ranges()
                    .iter()
                    .all(|r| r.start % 8 == 0 && r.count % 8 == 0));
                assert!(!f.is_immutable());
                // A second create of the same path is refused.
                let e = StorageFile::create(&path, 4096, false).unwrap_err();
                assert_eq!(e.errno(), Some(Errno::EEXIST));
                f.remove().unwrap();
                assert!(!path.exists());
            }
            Err(e) => {
                eprintln!("no storage file on this file system: {e}");
                assert!(!path.exists(), "a failed create must remove the file");
            }
        }
    }
}
