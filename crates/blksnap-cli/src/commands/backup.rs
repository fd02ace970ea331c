// SPDX-License-Identifier: GPL-2.0
//! `backup`, `restore` and `verify`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blksnap::backup::{
    self, device_name, open_read, read_sums, BackupRun, Chain, DeviceChain, Kind,
};
use blksnap::{
    DevId, DirectoryStorage, Errno, SectorRange, Session, SessionBuilder, SessionEvent, SnapshotId,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{resolve_device, CmdResult, Ctx, Failure};
use crate::output::{Output, Record};

/// Arguments of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Devices to back up (paths or MAJOR:MINOR). With --snapshot, the
    /// default is every device of that snapshot.
    #[arg(short, long = "device", value_name = "DEVICE", num_args = 1..)]
    pub devices: Vec<String>,
    /// The backup directory (created if needed; holds chain.json).
    #[arg(short = 'o', long = "dir", value_name = "DIR")]
    pub dir: PathBuf,
    /// Read the images of this taken snapshot instead of making one.
    #[arg(long, value_name = "UUID", conflicts_with_all = ["storage_dir", "storage_device"])]
    pub snapshot: Option<SnapshotId>,
    /// Directory for the difference storage files of the snapshot made
    /// for the backup (deleted at the end).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["snapshot", "storage_device"], conflicts_with = "storage_device")]
    pub storage_dir: Option<PathBuf>,
    /// Size of each storage file in MiB (default: what the module asks for).
    #[arg(long, value_name = "MIB", requires = "storage_dir", conflicts_with_all = ["snapshot", "storage_device"])]
    pub storage_size: Option<u64>,
    /// Most difference storage in MiB.
    #[arg(long, value_name = "MIB", requires = "storage_dir", conflicts_with_all = ["snapshot", "storage_device"])]
    pub storage_limit: Option<u64>,
    /// A block device for the difference storage, with --storage-range.
    #[arg(long, value_name = "DEVICE", requires = "storage_ranges")]
    pub storage_device: Option<String>,
    /// Page-aligned sector ranges of --storage-device, START:COUNT.
    #[arg(long = "storage-range", value_name = "START:COUNT", num_args = 1.., requires = "storage_device")]
    pub storage_ranges: Vec<SectorRange>,
    /// Make a full backup even where an incremental one is possible.
    #[arg(long)]
    pub full: bool,
    /// No progress bars (they are shown only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory.
    #[arg(short = 'o', long = "dir", value_name = "DIR")]
    pub dir: PathBuf,
    /// The device: its name in the backup (e.g. ram0) or its path; may be
    /// left out when the backup has one device.
    #[arg(short, long, value_name = "NAME")]
    pub device: Option<String>,
    /// The backup number to restore (default: the last).
    #[arg(short, long, value_name = "N")]
    pub seq: Option<u64>,
    /// Where the image goes: a file (created or truncated) or a block
    /// device at least as large as the image.
    #[arg(long, value_name = "PATH")]
    pub output: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The backup directory. Alone: checks every backup file against its
    /// block hashes; with --image: checks the image against the hashes of
    /// the backup it should equal.
    #[arg(
        short = 'o',
        long = "dir",
        value_name = "DIR",
        required_unless_present = "against"
    )]
    pub dir: Option<PathBuf>,
    /// The device (name in the backup or path).
    #[arg(short, long, value_name = "NAME")]
    pub device: Option<String>,
    /// The backup number (default: the last).
    #[arg(short, long, value_name = "N")]
    pub seq: Option<u64>,
    /// A restored image (file or block device).
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Compare --image byte for byte with this file or device (for
    /// example the snapshot image or the original device).
    #[arg(long, value_name = "PATH", requires = "image", conflicts_with = "dir")]
    pub against: Option<PathBuf>,
    /// Block size for the comparison's count of differing blocks.
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    pub block_size: u64,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// A progress bar on stderr, hidden when stderr is not a terminal or bars
/// are turned off.
fn progress_bar(len: u64, name: &str, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(name.to_string());
    pb
}

/// MiB/s of `bytes` in `seconds`, rounded to 0.1.
fn throughput(bytes: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    (bytes as f64 / (1 << 20) as f64 / seconds * 10.0).round() / 10.0
}

fn seconds(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// `backup`: one record per device and a summary record.
pub fn backup(ctx: &Ctx, args: &BackupArgs) -> CmdResult {
    let t0 = Instant::now();
    let wanted = args
        .devices
        .iter()
        .map(|d| resolve_device(d))
        .collect::<Result<Vec<_>, Failure>>()?;
    // The snapshot: given, or made here (and destroyed at the end).
    let mut session: Option<Session> = None;
    let owned_ctl;
    let (ctl, images) = match args.snapshot {
        Some(id) => {
            owned_ctl = ctx.open()?;
            let mut images = owned_ctl.snapshot_collect_images(id)?;
            if !wanted.is_empty() {
                if let Some(d) = wanted
                    .iter()
                    .find(|d| !images.iter().any(|i| i.orig_dev_id == **d))
                {
                    return Err(Failure::new(
                        format!("backup {d}"),
                        format!("the device is not in snapshot {id}"),
                        Some(Errno::ENODEV),
                    ));
                }
                images.retain(|i| wanted.contains(&i.orig_dev_id));
            }
            (&owned_ctl, images)
        }
        None => {
            if wanted.is_empty() {
                return Err(Failure::new(
                    "backup",
                    "no devices given (--device, or --snapshot)",
                    Some(Errno::EINVAL),
                ));
            }
            let builder = SessionBuilder::new(&wanted).control_path(ctx.control);
            let builder = match (&args.storage_dir, &args.storage_device) {
                (Some(dir), _) => {
                    let mut s = DirectoryStorage::new(dir);
                    if let Some(mib) = args.storage_size {
                        s = s.file_size(mib << 20);
                    }
                    if let Some(mib) = args.storage_limit {
                        s = s.limit(mib << 20);
                    }
                    builder.storage_dir(s)
                }
                (None, Some(dev)) => {
                    builder.storage_ranges(resolve_device(dev)?, &args.storage_ranges)
                }
                (None, None) => unreachable!("clap requires a storage"),
            };
            let s = session.insert(builder.create()?);
            s.take()?;
            let images = s.images().to_vec();
            (s.control(), images)
        }
    };
    let cbt = ctl.tracker_collect()?;
    let mut run = BackupRun::begin(&args.dir)?;
    let seq = run.seq();
    for image in &images {
        let dev = image.orig_dev_id;
        let info = cbt.iter().find(|c| c.dev_id == dev).ok_or_else(|| {
            Failure::new(
                format!("backup {dev}"),
                "the device is not tracked",
                Some(Errno::ENODEV),
            )
        })?;
        let name = device_name(dev);
        let job = run.prepare(&name, info, args.full, || ctl.tracker_read_cbt_map_all(dev))?;
        let pb = progress_bar(job.bytes, &name, !args.no_progress);
        let r = run.copy(&job, dev, &image.image_path(), &|n| pb.inc(n));
        pb.finish_and_clear();
        r?;
    }
    let corrupted = session.as_ref().is_some_and(Session::is_corrupted);
    if let Some(s) = &session {
        for ev in s.events() {
            if matches!(
                ev,
                SessionEvent::StorageNotAdded { .. } | SessionEvent::Corrupted { .. }
            ) {
                let text = Output::Record(super::snapshot::session_event_record(&ev)).render(false);
                eprintln!("blksnap: warning: {}", text.trim_end().replace('\n', " "));
            }
        }
    }
    let results = run.commit()?;
    if let Some(s) = session {
        s.destroy()?;
    }
    let mut list: Vec<Record> = results
        .iter()
        .map(|r| {
            Record::new()
                .with("device", r.name.as_str())
                .with_display("dev_id", r.dev)
                .with("seq", r.seq)
                .with_display("kind", r.kind)
                .with(
                    "reason",
                    r.full_reason
                        .map_or("changed_blocks".to_string(), |f| f.to_string()),
                )
                .with("blocks_total", r.blocks_total)
                .with("blocks_copied", r.blocks)
                .with("bytes", r.bytes)
                .with("seconds", seconds(r.seconds))
                .with("mib_per_s", throughput(r.bytes, r.seconds))
                .with_display("generation_id", r.generation_id)
                .with("snap_number", r.snap_number)
                .with("file", r.file.as_str())
        })
        .collect();
    let total: u64 = results.iter().map(|r| r.bytes).sum();
    let elapsed = t0.elapsed().as_secs_f64();
    list.push(
        Record::new()
            .with("summary", "backup")
            .with_display("dir", args.dir.display())
            .with("seq", seq)
            .with("devices", results.len())
            .with("bytes", total)
            .with("seconds", seconds(elapsed))
            .with("mib_per_s", throughput(total, elapsed))
            .with("corrupted", u8::from(corrupted)),
    );
    Ok(Output::List(list))
}

/// The chain of the device `arg` names (or the only one).
fn pick_device<'a>(
    chain: &'a Chain,
    dir: &Path,
    arg: Option<&str>,
) -> Result<&'a DeviceChain, Failure> {
    let not_found =
        |what: String| Failure::new(dir.display().to_string(), what, Some(Errno::ENOENT));
    let Some(arg) = arg else {
        return match chain.devices.as_slice() {
            [one] => Ok(one),
            [] => Err(not_found("no backups in this directory".into())),
            many => Err(Failure::new(
                dir.display().to_string(),
                format!(
                    "the backup has several devices ({}): choose one with --device",
                    many.iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(Errno::EINVAL),
            )),
        };
    };
    if let Some(d) = chain.device(arg) {
        return Ok(d);
    }
    let by_path = if Path::new(arg).exists() {
        DevId::of_path(arg).ok().map(device_name)
    } else {
        None
    };
    let base = Path::new(arg)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned());
    by_path
        .and_then(|n| chain.device(&n))
        .or_else(|| base.and_then(|b| chain.device(&b)))
        .ok_or_else(|| not_found(format!("no backups of device {arg}")))
}

/// `restore`.
pub fn restore(_ctx: &Ctx, args: &RestoreArgs) -> CmdResult {
    let t0 = Instant::now();
    let chain = Chain::load(&args.dir)?;
    let dc = pick_device(&chain, &args.dir, args.device.as_deref())?;
    let entries = dc
        .restore_chain(args.seq)
        .map_err(|m| Failure::new(args.dir.display().to_string(), m, Some(Errno::ENOENT)))?;
    let total = backup::restore_bytes(&args.dir, dc, &entries);
    let pb = progress_bar(total, &dc.name, !args.no_progress);
    let r = backup::restore(&args.dir, dc, args.seq, &args.output, &|n| pb.inc(n));
    pb.finish_and_clear();
    let st = r?;
    let elapsed = t0.elapsed().as_secs_f64();
    Ok(Output::Record(
        Record::new()
            .with("device", dc.name.as_str())
            .with("seq", st.seq)
            .with(
                "applied",
                st.applied
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .with_display("output", args.output.display())
            .with("capacity", dc.capacity)
            .with("bytes", st.bytes)
            .with("seconds", seconds(elapsed))
            .with("mib_per_s", throughput(st.bytes, elapsed)),
    ))
}

/// `verify`: exits 1 (with the numbers printed first) when anything
/// differs.
pub fn verify(_ctx: &Ctx, args: &VerifyArgs) -> CmdResult {
    let t0 = Instant::now();
    let enabled = !args.no_progress;
    if let (Some(image), Some(other)) = (&args.image, &args.against) {
        let size = open_read(image).and_then(|f| backup::size_of(&f, image))?;
        let pb = progress_bar(size, "compare", enabled);
        let c = backup::compare(image, other, args.block_size.max(1), &|n| pb.inc(n));
        pb.finish_and_clear();
        let c = c?;
        let record = Record::new()
            .with("result", if c.equal() { "equal" } else { "different" })
            .with("size", c.size_a)
            .with("size_against", c.size_b)
            .with("block_size", args.block_size)
            .with("differing_blocks", c.differing_blocks)
            .with(
                "first_difference",
                c.first_difference.map_or(-1, |o| o as i64),
            )
            .with("seconds", seconds(t0.elapsed().as_secs_f64()));
        return finish(record, c.equal(), || {
            format!(
                "{} and {} differ ({} blocks of {} bytes; sizes {} and {})",
                image.display(),
                other.display(),
                c.differing_blocks,
                args.block_size,
                c.size_a,
                c.size_b
            )
        });
    }
    let dir = args
        .dir
        .as_deref()
        .expect("clap requires --dir without --against");
    let chain = Chain::load(dir)?;
    if let Some(image) = &args.image {
        let dc = pick_device(&chain, dir, args.device.as_deref())?;
        let entry = dc.entry(args.seq).ok_or_else(|| {
            Failure::new(
                dir.display().to_string(),
                format!("device {} has no such backup", dc.name),
                Some(Errno::ENOENT),
            )
        })?;
        let geo = dc.geometry();
        let sums = read_sums(&dir.join(&entry.sums), geo.blocks())?;
        let f = backup::open_stream(image)?;
        let pb = progress_bar(geo.capacity, &dc.name, enabled);
        let bad = backup::verify_image(&f, image, geo, &sums, &|n| pb.inc(n));
        pb.finish_and_clear();
        let bad = bad?;
        let record = Record::new()
            .with("result", if bad.is_empty() { "ok" } else { "mismatch" })
            .with("device", dc.name.as_str())
            .with("seq", entry.seq)
            .with("blocks", geo.blocks())
            .with("bad_blocks", bad.len())
            .with("first_bad_block", bad.first().map_or(-1, |&b| b as i64))
            .with("seconds", seconds(t0.elapsed().as_secs_f64()));
        return finish(record, bad.is_empty(), || {
            format!(
                "{} differs from backup {} of {} in {} of {} blocks",
                image.display(),
                entry.seq,
                dc.name,
                bad.len(),
                geo.blocks()
            )
        });
    }
    let devices: Vec<&DeviceChain> = match &args.device {
        Some(_) => vec![pick_device(&chain, dir, args.device.as_deref())?],
        None => chain.devices.iter().collect(),
    };
    let mut problems = Vec::new();
    let mut files = 0;
    for dc in devices {
        let total: u64 = dc
            .backups
            .iter()
            .map(|e| match e.kind {
                Kind::Full => dc.capacity,
                Kind::Incremental => e.bytes,
            })
            .sum();
        files += dc.backups.len();
        let pb = progress_bar(total, &dc.name, enabled);
        for p in backup::verify_files(dir, dc, &|n| pb.inc(n)) {
            problems.push(format!(
                "{} backup {} ({}): {}",
                dc.name, p.seq, p.file, p.problem
            ));
        }
        pb.finish_and_clear();
    }
    for p in &problems {
        eprintln!("blksnap: verify: {p}");
    }
    let record = Record::new()
        .with("result", if problems.is_empty() { "ok" } else { "bad" })
        .with("files", files)
        .with("problems", problems.len())
        .with("seconds", seconds(t0.elapsed().as_secs_f64()));
    finish(record, problems.is_empty(), || {
        format!("{} of {files} backup files are damaged", problems.len())
    })
}

/// Prints `record`; fails with `message` unless `ok`.
fn finish(record: Record, ok: bool, message: impl FnOnce() -> String) -> CmdResult {
    if ok {
        return Ok(Output::Record(record));
    }
    Err(Failure::with_output(
        Output::Record(record),
        Failure::new("verify", message(), None),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(throughput(10 << 20, 2.0), 5.0);
        assert_eq!(throughput(1, 0.0), 0.0);
        assert_eq!(seconds(1.23456), 1.235);
    }

    #[test]
    fn device_choice() {
        let mut chain = Chain::default();
        let dir = Path::new("/b");
        assert!(pick_device(&chain, dir, None).is_err());
        for name in ["ram0", "ram1"] {
            chain.devices.push(DeviceChain {
                name: name.into(),
                dev_id: "1:0".into(),
                block_size: 4096,
                capacity: 4096,
                generation_id: Default::default(),
                snap_number: 1,
                backups: vec![],
            });
        }
        let e = pick_device(&chain, dir, None).unwrap_err();
        assert!(e.to_string().contains("ram0, ram1"), "{e}");
        assert_eq!(pick_device(&chain, dir, Some("ram1")).unwrap().name, "ram1");
        assert_eq!(
            pick_device(&chain, dir, Some("/nonexistent/ram0"))
                .unwrap()
                .name,
            "ram0"
        );
        assert!(pick_device(&chain, dir, Some("sda")).is_err());
    }
}
