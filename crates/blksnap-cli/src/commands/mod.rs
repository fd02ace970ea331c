// SPDX-License-Identifier: GPL-2.0
//! Implementation of the subcommands.

pub mod backup;
pub mod snapshot;
pub mod tracker;

use std::fmt;
use std::path::Path;

use blksnap::{errno_name, io_errno, Control, DevId, Errno};

use crate::cli::{Cli, Command};
use crate::output::{Output, Record};

/// A failed command, printed as `<op>: <message> (<ERRNO>)`.
#[derive(Debug)]
pub struct Failure {
    op: String,
    message: String,
    errno: Option<Errno>,
    /// What to print on stdout before the error (verify's numbers).
    pub output: Option<Box<Output>>,
}

impl Failure {
    /// A failure with its parts.
    pub fn new(op: impl Into<String>, message: impl Into<String>, errno: Option<Errno>) -> Self {
        Failure {
            op: op.into(),
            message: message.into(),
            errno,
            output: None,
        }
    }

    /// `failure`, printing `output` first.
    pub fn with_output(output: Output, failure: Failure) -> Self {
        Failure {
            output: Some(Box::new(output)),
            ..failure
        }
    }

    /// A failure of a plain I/O operation on a file.
    pub fn io(op: impl Into<String>, err: &std::io::Error) -> Self {
        let errno = io_errno(err);
        let message = match errno {
            Some(errno) => errno.desc().to_lowercase(),
            None => err.to_string(),
        };
        Failure {
            op: op.into(),
            message,
            errno,
            output: None,
        }
    }
}

impl From<blksnap::Error> for Failure {
    fn from(e: blksnap::Error) -> Self {
        Failure {
            op: e.op(),
            message: e.message(),
            errno: e.errno(),
            output: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.message)?;
        if let Some(errno) = self.errno {
            write!(f, " ({})", errno_name(errno))?;
        }
        Ok(())
    }
}

/// The result of a command.
pub type CmdResult = Result<Output, Failure>;

/// What every command gets besides its own arguments.
pub struct Ctx<'a> {
    control: &'a Path,
    json: bool,
}

impl Ctx<'_> {
    /// Opens the control device.
    pub fn open(&self) -> Result<Control, Failure> {
        Ok(Control::open_path(self.control)?)
    }
}

/// Runs the command `cli` names.
pub fn run(cli: &Cli) -> CmdResult {
    let ctx = Ctx {
        control: &cli.control,
        json: cli.json,
    };
    match &cli.command {
        Command::Version => version(&ctx),
        Command::TrackerCollect => tracker::collect(&ctx),
        Command::TrackerRemove(args) => tracker::remove(&ctx, args),
        Command::TrackerReadCbtMap(args) => tracker::read_cbt_map(&ctx, args),
        Command::TrackerMarkDirtyBlock(args) => tracker::mark_dirty_block(&ctx, args),
        Command::SnapshotCreate(args) => snapshot::create(&ctx, args),
        Command::SnapshotDestroy(args) => snapshot::destroy(&ctx, args),
        Command::SnapshotAppendStorage(args) => snapshot::append_storage(&ctx, args),
        Command::SnapshotTake(args) => snapshot::take(&ctx, args),
        Command::SnapshotWaitEvent(args) => snapshot::wait_event(&ctx, args),
        Command::SnapshotCollect(args) => snapshot::collect(&ctx, args),
        Command::StretchSnapshot(args) => snapshot::stretch(&ctx, args),
        Command::Backup(args) => backup::backup(&ctx, args),
        Command::Restore(args) => backup::restore(&ctx, args),
        Command::Verify(args) => backup::verify(&ctx, args),
    }
}

/// `version`: `version=MAJOR.MINOR.REVISION.BUILD`.
fn version(ctx: &Ctx) -> CmdResult {
    let v = ctx.open()?.version()?;
    Ok(Output::Custom {
        text: format!("version={v}"),
        record: Record::new()
            .with("major", v.major)
            .with("minor", v.minor)
            .with("revision", v.revision)
            .with("build", v.build),
    })
}

/// A block device given on the command line: a path, or `MAJOR:MINOR` when
/// no such path exists.
pub fn resolve_device(arg: &str) -> Result<DevId, Failure> {
    if !Path::new(arg).exists() {
        if let Ok(dev) = arg.parse() {
            return Ok(dev);
        }
    }
    Ok(DevId::of_path(arg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_format() {
        let f = Failure::from(blksnap::Error::Ioctl {
            op: "snapshot_take",
            errno: Errno::ESRCH,
        });
        assert_eq!(f.to_string(), "snapshot_take: no such snapshot (ESRCH)");
        let io = std::io::Error::from_raw_os_error(Errno::EACCES as i32);
        assert_eq!(
            Failure::io("create /x", &io).to_string(),
            "create /x: permission denied (EACCES)"
        );
    }

    #[test]
    fn devices() {
        assert_eq!(resolve_device("8:16").unwrap(), DevId::new(8, 16));
        assert_eq!(
            resolve_device("/dev/null").unwrap_err().to_string(),
            "/dev/null: not a block device (ENOTBLK)"
        );
        assert_eq!(
            resolve_device("/nonexistent").unwrap_err().to_string(),
            "stat /nonexistent: no such file or directory (ENOENT)"
        );
    }

    #[test]
    fn missing_control_device() {
        let cli = Cli {
            json: false,
            control: "/nonexistent/blksnap".into(),
            command: Command::Version,
        };
        let e = run(&cli).unwrap_err();
        assert_eq!(
            e.to_string(),
            "open /nonexistent/blksnap: no such file: is the blksnap module loaded? (ENOENT)"
        );
    }

    #[test]
    fn foreign_control_device() {
        let cli = Cli {
            json: false,
            control: "/dev/null".into(),
            command: Command::Version,
        };
        let e = run(&cli).unwrap_err();
        assert_eq!(
            e.to_string(),
            "version: the module does not implement this command (ENOTTY)"
        );
    }
}
