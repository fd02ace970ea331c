// SPDX-License-Identifier: GPL-2.0
//! The control device and its ioctls.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{os_errno, Error, Result};
use crate::types::{CbtInfo, DevId, Event, ImageInfo, SectorRange, SnapshotId, Version};
use crate::uapi;

/// The default path of the control device (the header's `BLK_SNAP_CTL`).
pub const DEFAULT_CONTROL_PATH: &str = "/dev/blksnap";

/// Raw ioctl calls. Every command takes a pointer to its argument struct; the
/// `_bad` forms use the numbers of abi.rs as they are, since the header's
/// `_IOR`/`_IOW` directions do not say which way data really moves.
mod sys {
    use crate::uapi::*;

    nix::ioctl_readwrite_bad!(version, IOCTL_BLK_SNAP_VERSION, blk_snap_version);
    nix::ioctl_readwrite_bad!(
        tracker_remove,
        IOCTL_BLK_SNAP_TRACKER_REMOVE,
        blk_snap_tracker_remove
    );
    nix::ioctl_readwrite_bad!(
        tracker_collect,
        IOCTL_BLK_SNAP_TRACKER_COLLECT,
        blk_snap_tracker_collect
    );
    nix::ioctl_readwrite_bad!(
        tracker_read_cbt_map,
        IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP,
        blk_snap_tracker_read_cbt_bitmap
    );
    nix::ioctl_readwrite_bad!(
        tracker_mark_dirty_blocks,
        IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS,
        blk_snap_tracker_mark_dirty_blocks
    );
    nix::ioctl_readwrite_bad!(
        snapshot_create,
        IOCTL_BLK_SNAP_SNAPSHOT_CREATE,
        blk_snap_snapshot_create
    );
    nix::ioctl_readwrite_bad!(
        snapshot_destroy,
        IOCTL_BLK_SNAP_SNAPSHOT_DESTROY,
        blk_snap_snapshot_destroy
    );
    nix::ioctl_readwrite_bad!(
        snapshot_append_storage,
        IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE,
        blk_snap_snapshot_append_storage
    );
    nix::ioctl_readwrite_bad!(
        snapshot_take,
        IOCTL_BLK_SNAP_SNAPSHOT_TAKE,
        blk_snap_snapshot_take
    );
    nix::ioctl_readwrite_bad!(
        snapshot_collect,
        IOCTL_BLK_SNAP_SNAPSHOT_COLLECT,
        blk_snap_snapshot_collect
    );
    nix::ioctl_readwrite_bad!(
        snapshot_collect_images,
        IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES,
        blk_snap_snapshot_collect_images
    );
    nix::ioctl_readwrite_bad!(
        snapshot_wait_event,
        IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT,
        blk_snap_snapshot_event
    );
}

/// How many times a two-call collection is retried when the number of items
/// keeps changing between the calls.
const COLLECT_ATTEMPTS: usize = 8;

/// Runs the header's two-call collection protocol.
///
/// `call` performs one ioctl with the given output buffer (its length is the
/// count passed in, a null pointer when it is empty) and returns the ioctl
/// result with the count the module wrote back. The first call passes an
/// empty buffer (a null pointer, count 0); the module answers with the count
/// it needs: successfully, as the header documents and this module does, or
/// with `ENODATA`, as SNAPSHOT_COLLECT and SNAPSHOT_COLLECT_IMAGES of older
/// versions of it did. Both work. Then a buffer of that size is passed; if
/// the count grew meanwhile, the call is repeated with a bigger buffer.
pub(crate) fn collect_two_call<T: Clone + Default>(
    op: &'static str,
    mut call: impl FnMut(&mut [T]) -> (nix::Result<i32>, u32),
) -> Result<Vec<T>> {
    let mut buf: Vec<T> = Vec::new();
    for _ in 0..COLLECT_ATTEMPTS {
        let (res, count) = call(&mut buf);
        let needed = count as usize;
        match res {
            Ok(_) if needed <= buf.len() => {
                buf.truncate(needed);
                return Ok(buf);
            }
            // Too small a buffer: the module reports the count it needs,
            // either as a success (the null query) or with ENODATA.
            Ok(_) => {}
            Err(Errno::ENODATA) if needed > buf.len() => {}
            Err(Errno::ENODATA) if needed == 0 => return Ok(Vec::new()),
            Err(errno) => return Err(Error::Ioctl { op, errno }),
        }
        buf = vec![T::default(); needed];
    }
    Err(Error::Protocol {
        op,
        reason: "the number of items kept changing",
    })
}

/// Length of a slice as the `__u32` count of the interface.
fn count_of<T>(op: &'static str, items: &[T]) -> Result<u32> {
    u32::try_from(items.len()).map_err(|_| Error::InvalidArgument {
        op,
        reason: "too many items",
    })
}

/// A pointer to the first element, or null for an empty slice.
fn ptr_or_null<T>(items: &mut [T]) -> *mut T {
    if items.is_empty() {
        std::ptr::null_mut()
    } else {
        items.as_mut_ptr()
    }
}

/// An open handle on the module's control device, `/dev/blksnap`.
///
/// Every method issues one ioctl (two or more for the collections) and maps
/// a failure to [`Error::Ioctl`] carrying the errno. All commands need
/// `CAP_SYS_ADMIN`. The handle can be shared between threads.
#[derive(Debug)]
pub struct Control {
    file: File,
    path: PathBuf,
}

impl Control {
    /// Opens [`DEFAULT_CONTROL_PATH`] read-write.
    pub fn open() -> Result<Self> {
        Self::open_path(DEFAULT_CONTROL_PATH)
    }

    /// Opens the control device at `path` read-write (with `O_CLOEXEC`).
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                errno: os_errno(&e),
            })?;
        Ok(Control {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Wraps an already open descriptor of the control device; its
    /// [`Control::path`] is then [`DEFAULT_CONTROL_PATH`].
    pub fn from_fd(fd: OwnedFd) -> Self {
        Control {
            file: File::from(fd),
            path: PathBuf::from(DEFAULT_CONTROL_PATH),
        }
    }

    /// The path the handle was opened with (used in messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `IOCTL_BLK_SNAP_VERSION`: the module's version.
    pub fn version(&self) -> Result<Version> {
        let mut arg = uapi::blk_snap_version::default();
        // SAFETY: `arg` is a valid, exclusively borrowed argument struct of
        // the size the ioctl number encodes.
        unsafe { sys::version(self.fd(), &mut arg) }.map_err(ioctl_err("version"))?;
        Ok(arg.into())
    }

    /// `IOCTL_BLK_SNAP_TRACKER_REMOVE`: stops tracking changes of `dev`.
    ///
    /// Fails with `EBUSY` while the device is in a snapshot.
    pub fn tracker_remove(&self, dev: DevId) -> Result<()> {
        let mut arg = uapi::blk_snap_tracker_remove { dev_id: dev.into() };
        // SAFETY: as in `version`.
        unsafe { sys::tracker_remove(self.fd(), &mut arg) }.map_err(ioctl_err("tracker_remove"))?;
        Ok(())
    }

    /// `IOCTL_BLK_SNAP_TRACKER_COLLECT`: the change tracking state of every
    /// tracked device.
    pub fn tracker_collect(&self) -> Result<Vec<CbtInfo>> {
        let fd = self.fd();
        let raw = collect_two_call(
            "tracker_collect",
            |buf: &mut [uapi::blk_snap_cbt_info]| {
                let mut arg = uapi::blk_snap_tracker_collect {
                    count: buf.len() as u32,
                    cbt_info_array: ptr_or_null(buf),
                };
                // SAFETY: `arg` points at `buf`, which holds `arg.count` elements
                // and outlives the call.
                let res = unsafe { sys::tracker_collect(fd, &mut arg) };
                (res, arg.count)
            },
        )?;
        Ok(raw.into_iter().map(CbtInfo::from).collect())
    }

    /// `IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP`: reads the change map of `dev`
    /// from byte `offset` into `buf`, returning the number of bytes read
    /// (0 past the end).
    ///
    /// Each byte of the map is the number of the snapshot in which its
    /// tracking block last changed (see [`CbtInfo`]). The map can be read
    /// only while a snapshot of the device is taken.
    pub fn tracker_read_cbt_map(&self, dev: DevId, offset: u32, buf: &mut [u8]) -> Result<usize> {
        const OP: &str = "tracker_read_cbt_map";
        // A longer buffer is simply not filled beyond what a u32 can count.
        let length = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let mut arg = uapi::blk_snap_tracker_read_cbt_bitmap {
            dev_id: dev.into(),
            offset,
            length,
            buff: ptr_or_null(buf),
        };
        // SAFETY: `arg.buff` points at `buf`, writable for `arg.length`
        // bytes, and outlives the call.
        let n = unsafe { sys::tracker_read_cbt_map(self.fd(), &mut arg) }.map_err(ioctl_err(OP))?;
        let n = usize::try_from(n).map_err(|_| Error::Protocol {
            op: OP,
            reason: "negative byte count",
        })?;
        if n > length as usize {
            return Err(Error::Protocol {
                op: OP,
                reason: "more bytes read than the buffer holds",
            });
        }
        Ok(n)
    }

    /// Reads the whole change map of `dev` (convenience loop over
    /// [`Control::tracker_read_cbt_map`]).
    pub fn tracker_read_cbt_map_all(&self, dev: DevId) -> Result<Vec<u8>> {
        const CHUNK: usize = 1 << 20;
        let mut map = Vec::new();
        loop {
            let offset = u32::try_from(map.len()).map_err(|_| Error::Protocol {
                op: "tracker_read_cbt_map",
                reason: "the map is larger than 4 GiB",
            })?;
            let start = map.len();
            map.resize(start + CHUNK, 0);
            let n = self.tracker_read_cbt_map(dev, offset, &mut map[start..])?;
            map.truncate(start + n);
            if n == 0 {
                return Ok(map);
            }
        }
    }

    /// `IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS`: marks `ranges` of `dev`
    /// as changed. If `dev` is a snapshot image, the original's tracker is
    /// marked.
    pub fn tracker_mark_dirty_blocks(&self, dev: DevId, ranges: &[SectorRange]) -> Result<()> {
        const OP: &str = "tracker_mark_dirty_blocks";
        let mut raw: Vec<uapi::blk_snap_block_range> =
            ranges.iter().copied().map(Into::into).collect();
        let mut arg = uapi::blk_snap_tracker_mark_dirty_blocks {
            dev_id: dev.into(),
            count: count_of(OP, &raw)?,
            dirty_blocks_array: ptr_or_null(&mut raw),
        };
        // SAFETY: the array pointer covers `arg.count` elements of `raw`,
        // alive for the call.
        unsafe { sys::tracker_mark_dirty_blocks(self.fd(), &mut arg) }.map_err(ioctl_err(OP))?;
        Ok(())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_CREATE`: creates a snapshot of `devices`
    /// (distinct, each in no other snapshot) and returns its id.
    ///
    /// The devices start being tracked if they were not. The new snapshot
    /// has no difference storage yet; wait for its first
    /// [`Event::LowFreeSpace`] and append storage before taking it.
    pub fn snapshot_create(&self, devices: &[DevId]) -> Result<SnapshotId> {
        const OP: &str = "snapshot_create";
        let mut raw: Vec<uapi::blk_snap_dev> = devices.iter().copied().map(Into::into).collect();
        let mut arg = uapi::blk_snap_snapshot_create {
            count: count_of(OP, &raw)?,
            dev_id_array: ptr_or_null(&mut raw),
            id: Default::default(),
        };
        // SAFETY: the array pointer covers `arg.count` elements of `raw`,
        // alive for the call.
        unsafe { sys::snapshot_create(self.fd(), &mut arg) }.map_err(ioctl_err(OP))?;
        Ok(arg.id.into())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_DESTROY`: releases the snapshot, its images
    /// and difference storage. Change tracking goes on.
    pub fn snapshot_destroy(&self, id: SnapshotId) -> Result<()> {
        let mut arg = uapi::blk_snap_snapshot_destroy { id: id.into() };
        // SAFETY: as in `version`.
        unsafe { sys::snapshot_destroy(self.fd(), &mut arg) }
            .map_err(ioctl_err("snapshot_destroy"))?;
        Ok(())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE`: adds `ranges` of `dev` to the
    /// difference storage of the snapshot. Ranges should be page-aligned.
    pub fn snapshot_append_storage(
        &self,
        id: SnapshotId,
        dev: DevId,
        ranges: &[SectorRange],
    ) -> Result<()> {
        const OP: &str = "snapshot_append_storage";
        let mut raw: Vec<uapi::blk_snap_block_range> =
            ranges.iter().copied().map(Into::into).collect();
        let mut arg = uapi::blk_snap_snapshot_append_storage {
            id: id.into(),
            dev_id: dev.into(),
            count: count_of(OP, &raw)?,
            ranges: ptr_or_null(&mut raw),
        };
        // SAFETY: the array pointer covers `arg.count` elements of `raw`,
        // alive for the call.
        unsafe { sys::snapshot_append_storage(self.fd(), &mut arg) }.map_err(ioctl_err(OP))?;
        Ok(())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_TAKE`: takes the snapshot; its images appear
    /// and the change trackers switch to a new snapshot number.
    pub fn snapshot_take(&self, id: SnapshotId) -> Result<()> {
        let mut arg = uapi::blk_snap_snapshot_take { id: id.into() };
        // SAFETY: as in `version`.
        unsafe { sys::snapshot_take(self.fd(), &mut arg) }.map_err(ioctl_err("snapshot_take"))?;
        Ok(())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_COLLECT`: the ids of all snapshots.
    pub fn snapshot_collect(&self) -> Result<Vec<SnapshotId>> {
        let fd = self.fd();
        let raw = collect_two_call("snapshot_collect", |buf: &mut [uapi::blk_snap_uuid]| {
            let mut arg = uapi::blk_snap_snapshot_collect {
                count: buf.len() as u32,
                ids: ptr_or_null(buf),
            };
            // SAFETY: `arg` points at `buf`, which holds `arg.count` elements
            // and outlives the call.
            let res = unsafe { sys::snapshot_collect(fd, &mut arg) };
            (res, arg.count)
        })?;
        Ok(raw.into_iter().map(SnapshotId::from).collect())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES`: the original devices of a
    /// taken snapshot and their images.
    pub fn snapshot_collect_images(&self, id: SnapshotId) -> Result<Vec<ImageInfo>> {
        let fd = self.fd();
        let raw = collect_two_call(
            "snapshot_collect_images",
            |buf: &mut [uapi::blk_snap_image_info]| {
                let mut arg = uapi::blk_snap_snapshot_collect_images {
                    id: id.into(),
                    count: buf.len() as u32,
                    image_info_array: ptr_or_null(buf),
                };
                // SAFETY: `arg` points at `buf`, which holds `arg.count` elements
                // and outlives the call.
                let res = unsafe { sys::snapshot_collect_images(fd, &mut arg) };
                (res, arg.count)
            },
        )?;
        Ok(raw.into_iter().map(ImageInfo::from).collect())
    }

    /// `IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT`: waits up to `timeout_ms`
    /// milliseconds for the next event of the snapshot.
    ///
    /// A timeout is an error with `ENOENT` ([`Error::is_timeout`]), a signal
    /// one with `EINTR` ([`Error::is_interrupted`]); an unknown snapshot
    /// gives `ESRCH`.
    pub fn snapshot_wait_event(&self, id: SnapshotId, timeout_ms: u32) -> Result<Event> {
        let mut arg = Box::new(uapi::blk_snap_snapshot_event {
            id: id.into(),
            timeout_ms,
            ..Default::default()
        });
        // SAFETY: `arg` is a valid, exclusively borrowed 4096-byte event
        // struct, the size the ioctl number encodes.
        unsafe { sys::snapshot_wait_event(self.fd(), &mut *arg) }
            .map_err(ioctl_err("snapshot_wait_event"))?;
        Ok(Event::from_raw(&arg))
    }
}

fn ioctl_err(op: &'static str) -> impl Fn(Errno) -> Error {
    move |errno| Error::Ioctl { op, errno }
}

impl AsFd for Control {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Control {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a module answers a collect call whose array is too small.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// The header's protocol (TRACKER_COLLECT always, and every
        /// collection since the fix): a null array succeeds with the count,
        /// a too-small non-null array fails with ENODATA.
        Header,
        /// Older modules' SNAPSHOT_COLLECT and SNAPSHOT_COLLECT_IMAGES:
        /// ENODATA with the count for the null query too.
        EnodataAlways,
        /// Success with the needed count, null or not.
        SuccessAlways,
    }

    const ANSWERS: [Answer; 3] = [Answer::Header, Answer::EnodataAlways, Answer::SuccessAlways];

    /// A fake module holding `items` that answers as `answer` says.
    struct Fake {
        items: Vec<u32>,
        answer: Answer,
        calls: usize,
        grow_on_call: Option<(usize, u32)>,
    }

    impl Fake {
        fn new(items: Vec<u32>, answer: Answer) -> Self {
            Fake {
                items,
                answer,
                calls: 0,
                grow_on_call: None,
            }
        }

        fn call(&mut self, buf: &mut [u32]) -> (nix::Result<i32>, u32) {
            self.calls += 1;
            if let Some((n, item)) = self.grow_on_call {
                if self.calls == n {
                    self.items.push(item);
                }
            }
            let needed = self.items.len() as u32;
            // The library passes a null pointer exactly for an empty buffer.
            let null = buf.is_empty();
            if buf.len() < self.items.len() {
                let res = match self.answer {
                    Answer::Header if null => Ok(0),
                    Answer::Header | Answer::EnodataAlways => Err(Errno::ENODATA),
                    Answer::SuccessAlways => Ok(0),
                };
                return (res, needed);
            }
            buf[..self.items.len()].copy_from_slice(&self.items);
            (Ok(0), needed)
        }
    }

    #[test]
    fn collect_empty() {
        for answer in ANSWERS {
            let mut fake = Fake::new(vec![], answer);
            let got = collect_two_call("test", |b| fake.call(b)).unwrap();
            assert!(got.is_empty(), "{answer:?}");
            assert_eq!(fake.calls, 1, "{answer:?}");
        }
    }

    #[test]
    fn collect_two_calls() {
        for answer in ANSWERS {
            let mut fake = Fake::new(vec![1, 2, 3], answer);
            let got = collect_two_call("test", |b| fake.call(b)).unwrap();
            assert_eq!(got, vec![1, 2, 3], "{answer:?}");
            assert_eq!(fake.calls, 2, "{answer:?}");
        }
    }

    #[test]
    fn collect_retries_when_the_count_grows() {
        for answer in ANSWERS {
            let mut fake = Fake::new(vec![1, 2], answer);
            fake.grow_on_call = Some((2, 9));
            let got = collect_two_call("test", |b| fake.call(b)).unwrap();
            assert_eq!(got, vec![1, 2, 9], "{answer:?}");
            assert_eq!(fake.calls, 3, "{answer:?}");
        }
    }

    #[test]
    fn collect_truncates_when_the_count_shrinks() {
        let mut calls = 0;
        let got = collect_two_call("test", |b: &mut [u32]| {
            calls += 1;
            if b.is_empty() {
                return (Ok(0), 3);
            }
            b[0] = 7;
            (Ok(0), 1)
        })
        .unwrap();
        assert_eq!(got, vec![7]);
        assert_eq!(calls, 2);
    }

    #[test]
    fn collect_gives_up_when_the_count_keeps_growing() {
        let mut n = 0u32;
        let e = collect_two_call("snapshot_collect", |_: &mut [u32]| {
            n += 1;
            (Err(Errno::ENODATA), n)
        })
        .unwrap_err();
        assert!(matches!(
            e,
            Error::Protocol {
                op: "snapshot_collect",
                ..
            }
        ));
        assert_eq!(n as usize, COLLECT_ATTEMPTS);
    }

    #[test]
    fn collect_passes_errors_through() {
        let e = collect_two_call("snapshot_collect_images", |_: &mut [u32]| {
            (Err(Errno::ESRCH), 0)
        })
        .unwrap_err();
        assert_eq!(
            e,
            Error::Ioctl {
                op: "snapshot_collect_images",
                errno: Errno::ESRCH
            }
        );
        // ENODATA with a count that already fits is not the protocol's answer.
        let e = collect_two_call("snapshot_collect", |b: &mut [u32]| {
            if b.is_empty() {
                (Ok(0), 2)
            } else {
                (Err(Errno::ENODATA), 2)
            }
        })
        .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENODATA));
    }

    #[test]
    fn open_missing_device() {
        let e = Control::open_path("/nonexistent/blksnap").unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT));
        assert!(e.to_string().starts_with("open /nonexistent/blksnap: "));
    }

    #[test]
    fn ioctl_on_a_foreign_device_reports_enotty() {
        // /dev/null implements no ioctl: every command fails with ENOTTY and
        // the pointer arguments are never dereferenced.
        let ctl = Control::open_path("/dev/null").unwrap();
        let e = ctl.version().unwrap_err();
        assert_eq!(
            e,
            Error::Ioctl {
                op: "version",
                errno: Errno::ENOTTY
            }
        );
        assert_eq!(
            ctl.tracker_collect().unwrap_err().errno(),
            Some(Errno::ENOTTY)
        );
        assert_eq!(
            ctl.snapshot_collect().unwrap_err().errno(),
            Some(Errno::ENOTTY)
        );
        let id = SnapshotId::default();
        assert_eq!(
            ctl.snapshot_wait_event(id, 1).unwrap_err().errno(),
            Some(Errno::ENOTTY)
        );
        let mut buf = [0u8; 16];
        let e = ctl
            .tracker_read_cbt_map(DevId::new(8, 0), 0, &mut buf)
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOTTY));
    }
}
