// SPDX-License-Identifier: GPL-2.0
//! `snapshot_*` subcommands.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use blksnap::storage::StorageFile;
use blksnap::{
    errno_name, DirectoryStorage, Errno, Event, SectorRange, SessionBuilder, SessionEvent,
    SnapshotId,
};
use clap::Args;

use super::{resolve_device, CmdResult, Ctx, Failure};
use crate::output::{Output, Record};

/// Arguments of `snapshot_create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Block devices of the snapshot (paths or MAJOR:MINOR); repeat the
    /// option or list several after it.
    #[arg(short, long = "device", value_name = "DEVICE", num_args = 1.., required = true)]
    pub devices: Vec<String>,
}

/// Arguments of the commands that only name a snapshot.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The snapshot id (UUID).
    #[arg(short, long, value_name = "UUID")]
    pub id: SnapshotId,
}

/// Arguments of `snapshot_appendstorage`.
#[derive(Debug, Args)]
pub struct AppendStorageArgs {
    /// The snapshot id (UUID).
    #[arg(short, long, value_name = "UUID")]
    pub id: SnapshotId,
    /// The block device holding the storage (path or MAJOR:MINOR), with
    /// --range.
    #[arg(
        short,
        long,
        required_unless_present = "file",
        conflicts_with = "file",
        requires = "ranges"
    )]
    pub device: Option<String>,
    /// Sector ranges of the device as START:COUNT (page-aligned).
    #[arg(short, long = "range", visible_alias = "ranges", value_name = "START:COUNT", num_args = 1..)]
    pub ranges: Vec<SectorRange>,
    /// A file whose extents become the storage: an existing, allocated
    /// file, or a new one preallocated with --size. It is made immutable
    /// (chattr +i) so that it cannot be changed or deleted while in use;
    /// after snapshot_destroy, `chattr -i FILE; rm FILE`.
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Size of the file to create, in MiB.
    #[arg(
        short,
        long,
        value_name = "MIB",
        requires = "file",
        conflicts_with = "device"
    )]
    pub size: Option<u64>,
    /// Leave the file's attributes alone.
    #[arg(long, requires = "file", conflicts_with = "device")]
    pub no_immutable: bool,
}

/// Arguments of `stretch_snapshot`.
#[derive(Debug, Args)]
pub struct StretchArgs {
    /// Block devices of the snapshot (paths or MAJOR:MINOR).
    #[arg(short, long = "device", value_name = "DEVICE", num_args = 1.., required = true)]
    pub devices: Vec<String>,
    /// Directory for the difference storage files (on a file system on one
    /// block device: ext4, xfs...).
    #[arg(short, long, value_name = "DIR")]
    pub path: PathBuf,
    /// Most difference storage to allocate in all, in MiB.
    #[arg(short, long, value_name = "MIB")]
    pub limit: Option<u64>,
    /// Size of each storage file in MiB (default: what the module asks for).
    #[arg(short, long = "size", value_name = "MIB")]
    pub file_size: Option<u64>,
    /// Do not make the storage files immutable while in use.
    #[arg(long)]
    pub no_immutable: bool,
    /// Stop after this many seconds (default: on SIGINT, SIGTERM or SIGHUP,
    /// or when the snapshot is destroyed by snapshot_destroy).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
}

/// Arguments of `snapshot_waitevent`.
#[derive(Debug, Args)]
pub struct WaitEventArgs {
    /// The snapshot id (UUID).
    #[arg(short, long, value_name = "UUID")]
    pub id: SnapshotId,
    /// How long to wait, in milliseconds.
    #[arg(short, long, value_name = "MS", default_value_t = 1000)]
    pub timeout: u32,
}

/// Arguments of `snapshot_collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// List the images of this (taken) snapshot instead of the snapshots.
    #[arg(short, long, value_name = "UUID")]
    pub id: Option<SnapshotId>,
}

/// `snapshot_create`: prints `id=<uuid>`.
pub fn create(ctx: &Ctx, args: &CreateArgs) -> CmdResult {
    let devices = args
        .devices
        .iter()
        .map(|d| resolve_device(d))
        .collect::<Result<Vec<_>, Failure>>()?;
    let id = ctx.open()?.snapshot_create(&devices)?;
    Ok(Output::Record(Record::new().with_display("id", id)))
}

/// `snapshot_destroy`.
pub fn destroy(ctx: &Ctx, args: &IdArgs) -> CmdResult {
    ctx.open()?.snapshot_destroy(args.id)?;
    Ok(Output::Nothing)
}

/// `snapshot_appendstorage`: device ranges as given, or the extents of a
/// file (printed as `file=`, `device=`, `sectors=`, `ranges=`,
/// `immutable=`).
pub fn append_storage(ctx: &Ctx, args: &AppendStorageArgs) -> CmdResult {
    let Some(path) = &args.file else {
        let dev = resolve_device(args.device.as_deref().unwrap_or_default())?;
        ctx.open()?
            .snapshot_append_storage(args.id, dev, &args.ranges)?;
        return Ok(Output::Nothing);
    };
    let ctl = ctx.open()?;
    let immutable = !args.no_immutable;
    let exists = path.exists();
    let file = match (exists, args.size) {
        (false, Some(mib)) => StorageFile::create(path, mib << 20, immutable)?,
        (false, None) => {
            return Err(Failure::new(
                path.display().to_string(),
                "no such file: give --size to create it",
                Some(Errno::ENOENT),
            ))
        }
        (true, Some(_)) => {
            return Err(Failure::new(
                path.display().to_string(),
                "the file exists already: --size is for a new file",
                Some(Errno::EEXIST),
            ))
        }
        (true, None) => StorageFile::open(path, immutable)?,
    };
    if let Err(e) = ctl.snapshot_append_storage(args.id, file.device(), file.ranges()) {
        if exists {
            let _ = file.release();
        } else {
            let _ = file.remove();
        }
        return Err(e.into());
    }
    let record = Record::new()
        .with_display("file", path.display())
        .with_display("device", file.device())
        .with("sectors", file.sectors())
        .with("ranges", file.ranges().len())
        .with("immutable", u8::from(file.is_immutable()));
    // The module uses the sectors from now on: leave the file as it is.
    file.keep();
    Ok(Output::Record(record))
}

/// `stretch_snapshot`: creates a snapshot with storage in files of a
/// directory, takes it, and keeps adding storage on every low_free_space
/// event until stopped; prints a record per image and per event as they
/// happen, and a summary at the end.
pub fn stretch(ctx: &Ctx, args: &StretchArgs) -> CmdResult {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};

    let devices = args
        .devices
        .iter()
        .map(|d| resolve_device(d))
        .collect::<Result<Vec<_>, Failure>>()?;
    let mut storage = DirectoryStorage::new(&args.path).immutable(!args.no_immutable);
    if let Some(mib) = args.file_size {
        storage = storage.file_size(mib << 20);
    }
    if let Some(mib) = args.limit {
        storage = storage.limit(mib << 20);
    }
    // Signals go to a signalfd; blocked before the event thread starts, so
    // it inherits the mask.
    let mut mask = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        mask.add(sig);
    }
    mask.thread_block()
        .map_err(|e| Failure::new("sigprocmask", e.desc(), Some(e)))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Failure::new("signalfd", e.desc(), Some(e)))?;

    let mut session = SessionBuilder::new(&devices)
        .control_path(ctx.control)
        .storage_dir(storage)
        .create()?;
    let id = session.id();
    let emit = |r: Record| Output::Record(r).print(ctx.json);
    let mut first = Record::new()
        .with_display("id", id)
        .with_display("storage_dir", args.path.display());
    let events = session.poll_events(Duration::ZERO);
    session.take()?;
    first = first.with("images", session.images().len());
    emit(first);
    for image in session.images() {
        emit(
            Record::new()
                .with_display("orig_dev_id", image.orig_dev_id)
                .with_display("image_dev_id", image.image_dev_id)
                .with_display("image", image.image_path().display()),
        );
    }
    for ev in &events {
        emit(session_event_record(ev));
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let reason = loop {
        for ev in session.poll_events(Duration::from_millis(100)) {
            emit(session_event_record(&ev));
        }
        if let Ok(Some(sig)) = sfd.read_signal() {
            let name = Signal::try_from(sig.ssi_signo as i32)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.ssi_signo.to_string());
            break format!("signal {name}");
        }
        if session.is_destroyed() {
            break "destroyed".to_string();
        }
        if !session.is_watching() {
            break "event wait failed".to_string();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "duration".to_string();
        }
    };
    let summary = Record::new()
        .with("result", "stopped")
        .with("reason", reason)
        .with("storage_sectors", session.storage_sectors())
        .with("storage_files", session.storage_files().len())
        .with("corrupted", u8::from(session.is_corrupted()));
    session.destroy()?;
    Ok(Output::Record(summary))
}

/// A record for what happened to a session.
pub fn session_event_record(ev: &SessionEvent) -> Record {
    match ev {
        SessionEvent::StorageAdded {
            path,
            device,
            sectors,
            requested_sectors,
        } => {
            let r = Record::new().with("event", "storage_added");
            let r = match path {
                Some(p) => r.with_display("file", p.display()),
                None => r,
            };
            r.with_display("device", device)
                .with("sectors", *sectors)
                .with("requested_nr_sect", *requested_sectors)
        }
        SessionEvent::StorageNotAdded {
            requested_sectors,
            reason,
        } => Record::new()
            .with("event", "storage_not_added")
            .with("requested_nr_sect", *requested_sectors)
            .with("reason", reason.as_str()),
        SessionEvent::Corrupted { device, errno } => Record::new()
            .with("event", "corrupted")
            .with_display("orig_dev_id", device)
            .with("err_code", *errno)
            .with("error", errno_name(Errno::from_raw(*errno))),
        SessionEvent::Unknown { code } => Record::new().with("event", *code),
        SessionEvent::Destroyed => Record::new().with("event", "destroyed"),
        SessionEvent::WaitFailed { reason } => Record::new()
            .with("event", "wait_failed")
            .with("reason", reason.as_str()),
    }
}

/// `snapshot_take`.
pub fn take(ctx: &Ctx, args: &IdArgs) -> CmdResult {
    ctx.open()?.snapshot_take(args.id)?;
    Ok(Output::Nothing)
}

/// `snapshot_waitevent`: `result=ok` and the event, or `result=timeout` /
/// `result=interrupted` (both exit 0, as in the reference tool).
pub fn wait_event(ctx: &Ctx, args: &WaitEventArgs) -> CmdResult {
    let ctl = ctx.open()?;
    let record = match ctl.snapshot_wait_event(args.id, args.timeout) {
        Ok(event) => event_record(&event),
        Err(e) if e.is_timeout() => Record::new().with("result", "timeout"),
        Err(e) if e.is_interrupted() => Record::new().with("result", "interrupted"),
        Err(e) => return Err(e.into()),
    };
    Ok(Output::Record(record))
}

fn event_record(event: &Event) -> Record {
    let r = Record::new()
        .with("result", "ok")
        .with("time", event.time_ns());
    match *event {
        Event::LowFreeSpace {
            requested_sectors, ..
        } => r
            .with("event", "low_free_space")
            .with("requested_nr_sect", requested_sectors),
        Event::Corrupted {
            orig_dev, errno, ..
        } => r
            .with("event", "corrupted")
            .with_display("orig_dev_id", orig_dev)
            .with("err_code", errno)
            .with("error", errno_name(Errno::from_raw(errno))),
        Event::Unknown { code, .. } => r.with("event", code),
    }
}

/// `snapshot_collect`: one `id=` record per snapshot, or with `--id` one
/// record per image of that snapshot.
pub fn collect(ctx: &Ctx, args: &CollectArgs) -> CmdResult {
    let ctl = ctx.open()?;
    let list = match args.id {
        None => ctl
            .snapshot_collect()?
            .into_iter()
            .map(|id| Record::new().with_display("id", id))
            .collect(),
        Some(id) => ctl
            .snapshot_collect_images(id)?
            .into_iter()
            .map(|i| {
                Record::new()
                    .with_display("orig_dev_id", i.orig_dev_id)
                    .with_display("image_dev_id", i.image_dev_id)
                    .with_display("image", i.image_path().display())
            })
            .collect(),
    };
    Ok(Output::List(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blksnap::DevId;

    #[test]
    fn event_records() {
        let ev = Event::LowFreeSpace {
            requested_sectors: 2048,
            time_ns: 5,
        };
        assert_eq!(
            Output::Record(event_record(&ev)).render(false),
            "result=ok\ntime=5\nevent=low_free_space\nrequested_nr_sect=2048\n"
        );
        let ev = Event::Corrupted {
            orig_dev: DevId::new(8, 16),
            errno: 28,
            time_ns: 6,
        };
        assert_eq!(
            Output::Record(event_record(&ev)).render(true),
            "{\"result\":\"ok\",\"time\":6,\"event\":\"corrupted\",\"orig_dev_id\":\"8:16\",\"err_code\":28,\"error\":\"ENOSPC\"}\n"
        );
        let ev = Event::Unknown {
            code: 9,
            time_ns: 7,
        };
        assert_eq!(
            Output::Record(event_record(&ev)).render(false),
            "result=ok\ntime=7\nevent=9\n"
        );
    }
}
