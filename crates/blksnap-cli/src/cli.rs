// SPDX-License-Identifier: GPL-2.0
//! Command-line definition.
//!
//! A new subcommand is a variant of [`Command`] with its own `clap::Args`
//! struct, defined next to its implementation in `commands/`, plus one arm in
//! `commands::run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{backup, snapshot, tracker};

/// Manage block device snapshots and change tracking with the blksnap module.
#[derive(Debug, Parser)]
#[command(name = "blksnap", version, about, long_about = None)]
pub struct Cli {
    /// Print results as JSON instead of key=value lines.
    #[arg(short, long, global = true)]
    pub json: bool,

    /// The module's control device (give it before the subcommand).
    #[arg(long = "device", visible_alias = "ctl", value_name = "PATH", default_value = blksnap::DEFAULT_CONTROL_PATH)]
    pub control: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, named as in the reference `blksnap` tool.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the module version.
    #[command(name = "version")]
    Version,

    /// List the tracked block devices and their change tracking state.
    #[command(name = "tracker_collect")]
    TrackerCollect,

    /// Stop tracking changes of a block device.
    #[command(name = "tracker_remove")]
    TrackerRemove(tracker::RemoveArgs),

    /// Save the change tracking map of a device to a file (needs a taken
    /// snapshot of the device).
    #[command(name = "tracker_readcbtmap")]
    TrackerReadCbtMap(tracker::ReadCbtMapArgs),

    /// Mark sector ranges of a device as changed.
    #[command(name = "tracker_markdirtyblock")]
    TrackerMarkDirtyBlock(tracker::MarkDirtyBlockArgs),

    /// Create a snapshot of one or more block devices and print its id.
    #[command(name = "snapshot_create")]
    SnapshotCreate(snapshot::CreateArgs),

    /// Release a snapshot: remove its images and free its storage.
    #[command(name = "snapshot_destroy")]
    SnapshotDestroy(snapshot::IdArgs),

    /// Add sector ranges of a device to a snapshot's difference storage.
    #[command(name = "snapshot_appendstorage")]
    SnapshotAppendStorage(snapshot::AppendStorageArgs),

    /// Take a snapshot: its images appear.
    #[command(name = "snapshot_take")]
    SnapshotTake(snapshot::IdArgs),

    /// Wait for the next event of a snapshot.
    #[command(name = "snapshot_waitevent")]
    SnapshotWaitEvent(snapshot::WaitEventArgs),

    /// List the snapshots, or the images of one snapshot with --id.
    #[command(name = "snapshot_collect")]
    SnapshotCollect(snapshot::CollectArgs),

    /// Create a snapshot with storage in files of a directory, take it, and
    /// keep adding storage on request until stopped (a signal, --duration, or
    /// snapshot_destroy from elsewhere); then destroy it and delete the files.
    #[command(name = "stretch_snapshot")]
    StretchSnapshot(snapshot::StretchArgs),

    /// Back up devices from a snapshot into a directory: a full image the
    /// first time, then only the blocks the change tracking marks as changed.
    #[command(name = "backup")]
    Backup(backup::BackupArgs),

    /// Rebuild a device's image from a backup chain (full + incrementals)
    /// into a file or block device.
    #[command(name = "restore")]
    Restore(backup::RestoreArgs),

    /// Check backup files against their block hashes, a restored image
    /// against a backup, or two images against each other.
    #[command(name = "verify")]
    Verify(backup::VerifyArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options() {
        let cli = Cli::try_parse_from(["blksnap", "version", "--json"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.control, PathBuf::from("/dev/blksnap"));
        let cli =
            Cli::try_parse_from(["blksnap", "--device", "/tmp/ctl", "-j", "version"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.control, PathBuf::from("/tmp/ctl"));
    }

    #[test]
    fn subcommand_arguments() {
        let cli = Cli::try_parse_from([
            "blksnap",
            "snapshot_create",
            "--device",
            "/dev/sdb",
            "/dev/sdc",
            "-d",
            "8:48",
        ])
        .unwrap();
        let Command::SnapshotCreate(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.devices, ["/dev/sdb", "/dev/sdc", "8:48"]);

        let cli = Cli::try_parse_from([
            "blksnap",
            "snapshot_waitevent",
            "--id",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            "--timeout",
            "250",
        ])
        .unwrap();
        let Command::SnapshotWaitEvent(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.id.to_string(), "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(args.timeout, 250);

        let cli = Cli::try_parse_from([
            "blksnap",
            "snapshot_appendstorage",
            "-i",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            "-d",
            "/dev/sdd",
            "--range",
            "0:2048",
            "4096:2048",
        ])
        .unwrap();
        let Command::SnapshotAppendStorage(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.ranges.len(), 2);
        assert_eq!(args.ranges[1], blksnap::SectorRange::new(4096, 2048));
    }

    #[test]
    fn storage_and_backup_arguments() {
        let id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let cli = Cli::try_parse_from([
            "blksnap",
            "snapshot_appendstorage",
            "-i",
            id,
            "--file",
            "/var/tmp/diff",
            "--size",
            "64",
        ])
        .unwrap();
        let Command::SnapshotAppendStorage(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.file, Some(PathBuf::from("/var/tmp/diff")));
        assert_eq!(args.size, Some(64));
        assert!(args.device.is_none() && args.ranges.is_empty());
        // A device needs ranges, a file excludes a device, one is needed.
        for bad in [
            &["-i", id, "-d", "/dev/sdb"][..],
            &["-i", id, "-d", "/dev/sdb", "-r", "0:8", "-f", "/x"],
            &["-i", id],
            &["-i", id, "-d", "/dev/sdb", "-r", "0:8", "--size", "1"],
        ] {
            let mut argv = vec!["blksnap", "snapshot_appendstorage"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "{bad:?}");
        }

        let cli = Cli::try_parse_from([
            "blksnap",
            "stretch_snapshot",
            "-d",
            "/dev/sdb",
            "--path",
            "/var/tmp",
            "--limit",
            "1024",
        ])
        .unwrap();
        let Command::StretchSnapshot(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.limit, Some(1024));
        assert!(args.file_size.is_none() && args.duration.is_none());

        let cli = Cli::try_parse_from([
            "blksnap",
            "backup",
            "-d",
            "/dev/sdb",
            "--dir",
            "/b",
            "--storage-dir",
            "/s",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Backup(_)));
        let cli =
            Cli::try_parse_from(["blksnap", "backup", "--dir", "/b", "--snapshot", id]).unwrap();
        assert!(matches!(cli.command, Command::Backup(_)));
        // Storage is needed unless a snapshot is given, and not both.
        assert!(
            Cli::try_parse_from(["blksnap", "backup", "-d", "/dev/sdb", "--dir", "/b"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "blksnap",
            "backup",
            "--dir",
            "/b",
            "--snapshot",
            id,
            "--storage-dir",
            "/s"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "blksnap",
            "backup",
            "-d",
            "/dev/sdb",
            "--dir",
            "/b",
            "--storage-device",
            "/dev/sdc"
        ])
        .is_err());

        let cli = Cli::try_parse_from([
            "blksnap", "restore", "--dir", "/b", "-d", "ram0", "--seq", "3", "--output", "/r",
        ])
        .unwrap();
        let Command::Restore(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.seq, Some(3));
        assert!(Cli::try_parse_from(["blksnap", "restore", "--dir", "/b"]).is_err());

        assert!(Cli::try_parse_from(["blksnap", "verify", "--dir", "/b"]).is_ok());
        assert!(
            Cli::try_parse_from(["blksnap", "verify", "--image", "/a", "--against", "/b"]).is_ok()
        );
        assert!(Cli::try_parse_from(["blksnap", "verify", "--against", "/b"]).is_err());
        assert!(Cli::try_parse_from(["blksnap", "verify", "--image", "/a"]).is_err());
    }

    #[test]
    fn usage_errors() {
        use clap::error::ErrorKind;
        let e = Cli::try_parse_from(["blksnap", "snapshot_take", "--id", "nope"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["blksnap", "snapshot_create"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        let e = Cli::try_parse_from([
            "blksnap",
            "tracker_markdirtyblock",
            "-d",
            "/dev/sdb",
            "-r",
            "12",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let e = Cli::try_parse_from(["blksnap", "no_such_command"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSubcommand);
    }
}
