// SPDX-License-Identifier: GPL-2.0
//! `tracker_*` subcommands.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use blksnap::SectorRange;
use clap::Args;

use super::{resolve_device, CmdResult, Ctx, Failure};
use crate::output::{Output, Record};

/// Arguments of `tracker_remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The tracked block device (path or MAJOR:MINOR).
    #[arg(short, long)]
    pub device: String,
}

/// Arguments of `tracker_readcbtmap`.
#[derive(Debug, Args)]
pub struct ReadCbtMapArgs {
    /// The tracked block device (path or MAJOR:MINOR).
    #[arg(short, long)]
    pub device: String,
    /// The file to write the map to (one byte per tracking block).
    #[arg(short, long)]
    pub file: PathBuf,
}

/// Arguments of `tracker_markdirtyblock`.
#[derive(Debug, Args)]
pub struct MarkDirtyBlockArgs {
    /// The tracked block device (path or MAJOR:MINOR).
    #[arg(short, long)]
    pub device: String,
    /// Sector ranges as START:COUNT.
    #[arg(short, long = "ranges", visible_alias = "range", value_name = "START:COUNT", num_args = 1.., required = true)]
    pub ranges: Vec<SectorRange>,
}

/// `tracker_collect`: one record per tracked device.
pub fn collect(ctx: &Ctx) -> CmdResult {
    let list = ctx.open()?.tracker_collect()?;
    Ok(Output::List(
        list.iter()
            .map(|c| {
                Record::new()
                    .with_display("device", c.dev_id)
                    .with("blk_size", c.block_size)
                    .with("device_capacity", c.device_capacity)
                    .with("blk_count", c.block_count)
                    .with_display("generation_id", c.generation_id)
                    .with("snap_number", c.snap_number)
            })
            .collect(),
    ))
}

/// `tracker_remove`.
pub fn remove(ctx: &Ctx, args: &RemoveArgs) -> CmdResult {
    let dev = resolve_device(&args.device)?;
    ctx.open()?.tracker_remove(dev)?;
    Ok(Output::Nothing)
}

/// `tracker_readcbtmap`: copies the whole map into a file.
pub fn read_cbt_map(ctx: &Ctx, args: &ReadCbtMapArgs) -> CmdResult {
    let dev = resolve_device(&args.device)?;
    let ctl = ctx.open()?;
    let map = ctl.tracker_read_cbt_map_all(dev)?;
    let path = args.file.display();
    let mut file =
        File::create(&args.file).map_err(|e| Failure::io(format!("create {path}"), &e))?;
    file.write_all(&map)
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::io(format!("write {path}"), &e))?;
    Ok(Output::Nothing)
}

/// `tracker_markdirtyblock`.
pub fn mark_dirty_block(ctx: &Ctx, args: &MarkDirtyBlockArgs) -> CmdResult {
    let dev = resolve_device(&args.device)?;
    ctx.open()?.tracker_mark_dirty_blocks(dev, &args.ranges)?;
    Ok(Output::Nothing)
}
