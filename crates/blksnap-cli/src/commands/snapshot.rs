// SPDX-License-Identifier: GPL-2.0
//! `snapshot_*` subcommands.

use blksnap::{errno_name, Errno, Event, SectorRange, SnapshotId};
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
    /// The block device holding the storage (path or MAJOR:MINOR).
    #[arg(short, long)]
    pub device: String,
    /// Sector ranges of the device as START:COUNT (page-aligned).
    #[arg(short, long = "range", visible_alias = "ranges", value_name = "START:COUNT", num_args = 1.., required = true)]
    pub ranges: Vec<SectorRange>,
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

/// `snapshot_appendstorage`.
pub fn append_storage(ctx: &Ctx, args: &AppendStorageArgs) -> CmdResult {
    let dev = resolve_device(&args.device)?;
    ctx.open()?
        .snapshot_append_storage(args.id, dev, &args.ranges)?;
    Ok(Output::Nothing)
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
