// SPDX-License-Identifier: GPL-2.0
//! A snapshot with managed difference storage: [`Session`].
//!
//! A session runs the whole ioctl sequence of a snapshot: it creates the
//! snapshot, answers the module's first `low_free_space` event with
//! difference storage, takes the snapshot when asked, keeps a background
//! thread waiting for events (growing the storage on every further
//! `low_free_space`, recording `corrupted`), and on [`Session::destroy`] or
//! drop destroys the snapshot and deletes the storage files it made.
//!
//! ```no_run
//! use blksnap::session::{DirectoryStorage, SessionBuilder};
//! use blksnap::DevId;
//!
//! # fn main() -> blksnap::Result<()> {
//! let dev = DevId::of_path("/dev/sdb1")?;
//! // Storage: files of 256 MiB in /var/tmp (on another device, or on the
//! // snapshotted one itself), 2 GiB at most.
//! let storage = DirectoryStorage::new("/var/tmp")
//!     .file_size(256 << 20)
//!     .limit(2 << 30);
//! let mut session = SessionBuilder::new(&[dev]).storage_dir(storage).create()?;
//! session.take()?;
//! let image = session.image_path(dev).expect("an image per device");
//! println!("read the snapshot at {}", image.display());
//! // ... copy the image ...
//! if session.is_corrupted() {
//!     eprintln!("the difference storage overflowed: the copy may be incomplete");
//! }
//! session.destroy()?;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::control::{Control, DEFAULT_CONTROL_PATH};
use crate::error::{io_err, Error, Result};
use crate::storage::{total_sectors, StorageFile, STORAGE_ALIGNMENT};
use crate::types::{DevId, Event, ImageInfo, SectorRange, SnapshotId, SECTOR_SIZE};

/// What the module asks for by default (`diff_storage_minimum`), used when
/// it sends no first event.
pub const DEFAULT_REQUEST_SECTORS: u64 = 2_097_152;

/// Difference storage made of files created in a directory as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryStorage {
    /// Where the files go. Its file system must sit on one block device
    /// (ext4, xfs... not btrfs or tmpfs).
    pub dir: PathBuf,
    /// Size of each file in bytes; `None` for what the module asks for.
    pub file_size: Option<u64>,
    /// Most bytes to allocate in all; `None` for no limit.
    pub limit: Option<u64>,
    /// Set the immutable attribute on the files while in use.
    pub immutable: bool,
}

impl DirectoryStorage {
    /// Files in `dir`, of the size the module asks for, with no limit, made
    /// immutable while in use.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectoryStorage {
            dir: dir.into(),
            file_size: None,
            limit: None,
            immutable: true,
        }
    }

    /// Each file has `bytes` bytes (rounded up to a page).
    ///
    /// The module asks for more storage whenever its free space drops below
    /// half of its `diff_storage_minimum` parameter, so files much smaller
    /// than that make it ask again at once: set a [`DirectoryStorage::limit`]
    /// too.
    pub fn file_size(mut self, bytes: u64) -> Self {
        self.file_size = Some(bytes);
        self
    }

    /// Allocates at most `bytes` in all.
    pub fn limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Whether to make the files immutable while in use (default: yes).
    pub fn immutable(mut self, on: bool) -> Self {
        self.immutable = on;
        self
    }

    /// The size of the next file for a request of `requested_sectors` when
    /// `allocated` bytes exist already, or why there is none.
    pub fn next_file_size(
        &self,
        requested_sectors: u64,
        allocated: u64,
    ) -> std::result::Result<u64, String> {
        let want = self
            .file_size
            .unwrap_or(requested_sectors.saturating_mul(SECTOR_SIZE));
        let want = want.div_ceil(STORAGE_ALIGNMENT).max(1) * STORAGE_ALIGNMENT;
        match self.limit {
            None => Ok(want),
            Some(limit) => {
                let left = limit.saturating_sub(allocated) / STORAGE_ALIGNMENT * STORAGE_ALIGNMENT;
                if left == 0 {
                    Err(format!("the storage limit of {limit} bytes is reached"))
                } else {
                    Ok(want.min(left))
                }
            }
        }
    }
}

/// Where a session's difference storage comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSpec {
    /// Files created in a directory, more of them on every request.
    Directory(DirectoryStorage),
    /// Fixed ranges of a block device, all appended at once; later requests
    /// cannot be met.
    Ranges {
        /// The block device.
        device: DevId,
        /// Page-aligned sector ranges on it.
        ranges: Vec<SectorRange>,
    },
}

/// What happened to a session after its creation, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Storage was appended, answering a request of `requested_sectors`.
    StorageAdded {
        /// The file, for directory storage.
        path: Option<PathBuf>,
        /// The block device holding the storage.
        device: DevId,
        /// Sectors appended.
        sectors: u64,
        /// Sectors the module asked for.
        requested_sectors: u64,
    },
    /// The module asked for storage and got none.
    StorageNotAdded {
        /// Sectors the module asked for.
        requested_sectors: u64,
        /// Why not.
        reason: String,
    },
    /// The snapshot is corrupted; its images fail from now on.
    Corrupted {
        /// The original device whose image failed.
        device: DevId,
        /// The positive errno (usually `ENOSPC`).
        errno: i32,
    },
    /// An event with a code this crate does not know.
    Unknown {
        /// Its code.
        code: u32,
    },
    /// The snapshot was destroyed by someone else.
    Destroyed,
    /// Waiting for events failed; the session stops watching.
    WaitFailed {
        /// The error.
        reason: String,
    },
}

/// Options of a new [`Session`].
#[derive(Debug, Clone)]
pub struct SessionBuilder {
    control: PathBuf,
    devices: Vec<DevId>,
    storage: Option<StorageSpec>,
    first_event_timeout: Duration,
    poll_interval: Duration,
}

impl SessionBuilder {
    /// A session for a snapshot of `devices`.
    pub fn new(devices: &[DevId]) -> Self {
        SessionBuilder {
            control: PathBuf::from(DEFAULT_CONTROL_PATH),
            devices: devices.to_vec(),
            storage: None,
            first_event_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Uses the control device at `path` instead of `/dev/blksnap`.
    pub fn control_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = path.into();
        self
    }

    /// Difference storage in files of a directory.
    pub fn storage_dir(mut self, storage: DirectoryStorage) -> Self {
        self.storage = Some(StorageSpec::Directory(storage));
        self
    }

    /// Difference storage on fixed sector ranges of a block device.
    pub fn storage_ranges(mut self, device: DevId, ranges: &[SectorRange]) -> Self {
        self.storage = Some(StorageSpec::Ranges {
            device,
            ranges: ranges.to_vec(),
        });
        self
    }

    /// Any storage specification.
    pub fn storage(mut self, spec: StorageSpec) -> Self {
        self.storage = Some(spec);
        self
    }

    /// How long to wait for the module's first request (default 5 s);
    /// without one, the first storage is still appended.
    pub fn first_event_timeout(mut self, timeout: Duration) -> Self {
        self.first_event_timeout = timeout;
        self
    }

    /// How often the event thread checks whether it should stop (default
    /// 1 s; destroying the snapshot wakes it at once anyway).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Creates the snapshot, appends its first storage and starts the event
    /// thread. On failure everything made so far is undone.
    pub fn create(self) -> Result<Session> {
        const OP: &str = "session";
        let storage = self.storage.ok_or(Error::InvalidArgument {
            op: OP,
            reason: "no difference storage given",
        })?;
        if self.devices.is_empty() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "no devices given",
            });
        }
        if let StorageSpec::Ranges { ranges, .. } = &storage {
            if total_sectors(ranges) == 0 {
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: "the storage ranges are empty",
                });
            }
        }
        let ctl = Arc::new(Control::open_path(&self.control)?);
        let id = ctl.snapshot_create(&self.devices)?;
        let shared = Arc::new(Shared {
            ctl: Arc::clone(&ctl),
            id,
            spec: storage,
            state: Mutex::new(State::default()),
            news: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        // From here on, drop undoes everything.
        let mut session = Session {
            ctl,
            id,
            devices: self.devices,
            shared,
            thread: None,
            images: Vec::new(),
            seen: 0,
            done: false,
        };
        let timeout = u32::try_from(session_ms(self.first_event_timeout)).unwrap_or(u32::MAX);
        let requested = match session.ctl.snapshot_wait_event(id, timeout) {
            Ok(Event::LowFreeSpace {
                requested_sectors, ..
            }) => requested_sectors,
            Ok(other) => {
                session.shared.record_event(other);
                DEFAULT_REQUEST_SECTORS
            }
            Err(e) if e.is_timeout() => DEFAULT_REQUEST_SECTORS,
            Err(e) => return Err(e),
        };
        let added = session.shared.add_storage(requested)?;
        session.shared.log(added);
        let shared = Arc::clone(&session.shared);
        let poll = u32::try_from(session_ms(self.poll_interval))
            .unwrap_or(u32::MAX)
            .max(1);
        let thread = std::thread::Builder::new()
            .name("blksnap-events".into())
            .spawn(move || shared.watch(poll))
            .map_err(|e| io_err("spawn", Path::new("blksnap-events"), &e))?;
        session.thread = Some(thread);
        Ok(session)
    }
}

fn session_ms(d: Duration) -> u128 {
    d.as_millis()
}

#[derive(Debug, Default)]
struct State {
    files: Vec<StorageFile>,
    allocated: u64,
    appended_sectors: u64,
    ranges_used: bool,
    file_seq: u32,
    log: Vec<SessionEvent>,
    corrupted: Vec<(DevId, i32)>,
    gone: bool,
}

#[derive(Debug)]
struct Shared {
    ctl: Arc<Control>,
    id: SnapshotId,
    spec: StorageSpec,
    state: Mutex<State>,
    news: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, event: SessionEvent) {
        let mut st = self.lock();
        if let SessionEvent::Corrupted { device, errno } = event {
            st.corrupted.push((device, errno));
        }
        if event == SessionEvent::Destroyed {
            st.gone = true;
        }
        st.log.push(event);
        drop(st);
        self.news.notify_all();
    }

    fn record_event(&self, event: Event) {
        let ev = match event {
            Event::LowFreeSpace {
                requested_sectors, ..
            } => match self.add_storage(requested_sectors) {
                Ok(ev) => ev,
                Err(e) => SessionEvent::StorageNotAdded {
                    requested_sectors,
                    reason: e.to_string(),
                },
            },
            Event::Corrupted {
                orig_dev, errno, ..
            } => SessionEvent::Corrupted {
                device: orig_dev,
                errno,
            },
            Event::Unknown { code, .. } => SessionEvent::Unknown { code },
        };
        self.log(ev);
    }

    /// Appends storage for a request: the next file, or the fixed ranges
    /// the first time.
    fn add_storage(&self, requested_sectors: u64) -> Result<SessionEvent> {
        match &self.spec {
            StorageSpec::Ranges { device, ranges } => {
                if self.lock().ranges_used {
                    return Ok(SessionEvent::StorageNotAdded {
                        requested_sectors,
                        reason: "all the given storage ranges are in use already".into(),
                    });
                }
                self.ctl.snapshot_append_storage(self.id, *device, ranges)?;
                let sectors = total_sectors(ranges);
                let mut st = self.lock();
                st.ranges_used = true;
                st.appended_sectors += sectors;
                Ok(SessionEvent::StorageAdded {
                    path: None,
                    device: *device,
                    sectors,
                    requested_sectors,
                })
            }
            StorageSpec::Directory(dir) => {
                let (size, path) = {
                    let mut st = self.lock();
                    let size = match dir.next_file_size(requested_sectors, st.allocated) {
                        Ok(size) => size,
                        Err(reason) => {
                            return Ok(SessionEvent::StorageNotAdded {
                                requested_sectors,
                                reason,
                            })
                        }
                    };
                    st.file_seq += 1;
                    (size, storage_file_path(&dir.dir, self.id, st.file_seq))
                };
                let file = StorageFile::create(&path, size, dir.immutable)?;
                if let Err(e) =
                    self.ctl
                        .snapshot_append_storage(self.id, file.device(), file.ranges())
                {
                    let _ = file.remove();
                    return Err(e);
                }
                let ev = SessionEvent::StorageAdded {
                    path: Some(path),
                    device: file.device(),
                    sectors: file.sectors(),
                    requested_sectors,
                };
                let mut st = self.lock();
                st.allocated += file.size();
                st.appended_sectors += file.sectors();
                st.files.push(file);
                Ok(ev)
            }
        }
    }

    /// The event thread: waits for events until stopped or the snapshot is
    /// gone.
    fn watch(&self, poll_ms: u32) {
        while !self.stop.load(Ordering::Acquire) {
            match self.ctl.snapshot_wait_event(self.id, poll_ms) {
                Ok(event) => self.record_event(event),
                Err(e) if e.is_timeout() || e.is_interrupted() => {}
                Err(e) if e.errno() == Some(Errno::ESRCH) => {
                    if !self.stop.load(Ordering::Acquire) {
                        self.log(SessionEvent::Destroyed);
                    }
                    return;
                }
                Err(e) => {
                    self.log(SessionEvent::WaitFailed {
                        reason: e.to_string(),
                    });
                    return;
                }
            }
        }
    }
}

/// The name of the `seq`th storage file of snapshot `id` in `dir`.
pub fn storage_file_path(dir: &Path, id: SnapshotId, seq: u32) -> PathBuf {
    let short = id.as_uuid().simple().to_string();
    dir.join(format!("blksnap-{}-{seq:03}.diff", &short[..8]))
}

/// A snapshot whose difference storage is managed by this process (see the
/// [module documentation](self)).
///
/// Dropping it destroys the snapshot and removes the storage files, as
/// [`Session::destroy`] does but ignoring errors.
#[derive(Debug)]
pub struct Session {
    ctl: Arc<Control>,
    id: SnapshotId,
    devices: Vec<DevId>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    images: Vec<ImageInfo>,
    seen: usize,
    done: bool,
}

impl Session {
    /// The snapshot id.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// The control device handle the session uses.
    pub fn control(&self) -> &Control {
        &self.ctl
    }

    /// The original devices of the snapshot.
    pub fn devices(&self) -> &[DevId] {
        &self.devices
    }

    /// Takes the snapshot and returns its images (waiting up to 10 s for
    /// their device nodes to appear).
    pub fn take(&mut self) -> Result<&[ImageInfo]> {
        self.ctl.snapshot_take(self.id)?;
        self.images = self.ctl.snapshot_collect_images(self.id)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for image in &self.images {
            let path = image.image_path();
            while !path.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(&self.images)
    }

    /// The images of the taken snapshot (empty before [`Session::take`]).
    pub fn images(&self) -> &[ImageInfo] {
        &self.images
    }

    /// The image path of the original device `dev`, once taken.
    pub fn image_path(&self, dev: DevId) -> Option<PathBuf> {
        self.images
            .iter()
            .find(|i| i.orig_dev_id == dev)
            .map(ImageInfo::image_path)
    }

    /// Whether a `corrupted` event came: images fail from then on.
    pub fn is_corrupted(&self) -> bool {
        !self.shared.lock().corrupted.is_empty()
    }

    /// The devices whose images were reported corrupted, with the errno.
    pub fn corrupted(&self) -> Vec<(DevId, i32)> {
        self.shared.lock().corrupted.clone()
    }

    /// Whether the snapshot was destroyed by someone else.
    pub fn is_destroyed(&self) -> bool {
        self.shared.lock().gone
    }

    /// Whether the event thread is still watching.
    pub fn is_watching(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Everything that happened so far.
    pub fn events(&self) -> Vec<SessionEvent> {
        self.shared.lock().log.clone()
    }

    /// The events since the last call, waiting up to `timeout` for one.
    pub fn poll_events(&mut self, timeout: Duration) -> Vec<SessionEvent> {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .news
            .wait_timeout_while(st, timeout, |st| st.log.len() <= self.seen)
            .unwrap_or_else(|e| e.into_inner());
        let new = st.log[self.seen.min(st.log.len())..].to_vec();
        self.seen = st.log.len();
        new
    }

    /// Sectors of difference storage appended so far.
    pub fn storage_sectors(&self) -> u64 {
        self.shared.lock().appended_sectors
    }

    /// The storage files made so far.
    pub fn storage_files(&self) -> Vec<PathBuf> {
        self.shared
            .lock()
            .files
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect()
    }

    /// Destroys the snapshot (unless someone else did), stops the event
    /// thread and removes the storage files. Returns the first error.
    pub fn destroy(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        self.shared.stop.store(true, Ordering::Release);
        let mut result = match self.ctl.snapshot_destroy(self.id) {
            Err(e) if e.errno() == Some(Errno::ESRCH) => Ok(()),
            other => other,
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let files = std::mem::take(&mut self.shared.lock().files);
        for file in files {
            let r = file.remove();
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sizes() {
        let d = DirectoryStorage::new("/x");
        assert!(d.immutable);
        assert_eq!(d.next_file_size(2048, 0), Ok(1 << 20));
        assert_eq!(d.next_file_size(1, 0), Ok(4096));
        assert_eq!(d.next_file_size(0, 0), Ok(4096));
        let d = d.file_size(10_000);
        assert_eq!(d.next_file_size(2048, 0), Ok(12288));
        let d = DirectoryStorage::new("/x")
            .file_size(8 << 20)
            .limit(20 << 20);
        assert_eq!(d.next_file_size(1 << 30, 0), Ok(8 << 20));
        assert_eq!(d.next_file_size(1 << 30, 16 << 20), Ok(4 << 20));
        assert_eq!(
            d.next_file_size(1 << 30, (20 << 20) - 4095),
            Err("the storage limit of 20971520 bytes is reached".into())
        );
        assert!(d.next_file_size(1, 20 << 20).is_err());
        assert!(d.next_file_size(1, 30 << 20).is_err());
        // A limit not a multiple of pages: whole pages only.
        let d = DirectoryStorage::new("/x").limit(10_000);
        assert_eq!(d.next_file_size(1 << 20, 0), Ok(8192));
    }

    #[test]
    fn file_names() {
        let id: SnapshotId = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".parse().unwrap();
        assert_eq!(
            storage_file_path(Path::new("/var/tmp"), id, 7),
            Path::new("/var/tmp/blksnap-0f1e2d3c-007.diff")
        );
    }

    #[test]
    fn create_checks_arguments() {
        let e = SessionBuilder::new(&[DevId::new(1, 0)])
            .create()
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL));
        let e = SessionBuilder::new(&[])
            .storage_dir(DirectoryStorage::new("/tmp"))
            .create()
            .unwrap_err();
        assert_eq!(e.to_string(), "session: no devices given (EINVAL)");
        let e = SessionBuilder::new(&[DevId::new(1, 0)])
            .storage_ranges(DevId::new(1, 1), &[])
            .create()
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL));
        let e = SessionBuilder::new(&[DevId::new(1, 0)])
            .storage_ranges(DevId::new(1, 1), &[SectorRange::new(0, 8)])
            .control_path("/nonexistent/blksnap")
            .create()
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT));
    }
}
