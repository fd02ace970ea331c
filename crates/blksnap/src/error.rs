// SPDX-License-Identifier: GPL-2.0
//! The error type of the crate, and the one mapping of an I/O error to its
//! errno.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// A specialised `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to the module.
///
/// Each variant that comes from a system call keeps its errno, so callers can
/// react to a specific condition (see [`Error::errno`]). `Display` gives a
/// message that explains what the errno means for this interface, in the
/// form `<op>: <message> (<ERRNO>)` ([`Error::op`], [`Error::message`],
/// [`Error::errno`]); a [`Error::Parse`] shows only the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the control device failed.
    #[error("open {path}: {} ({errno:?})", open_message(*.errno))]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The errno of `open(2)`.
        errno: Errno,
    },
    /// An ioctl on the control device failed.
    #[error("{op}: {} ({errno:?})", ioctl_message(op, *.errno))]
    Ioctl {
        /// The operation, named as the ioctl without its prefix
        /// (for example `"snapshot_create"`).
        op: &'static str,
        /// The errno the module returned.
        errno: Errno,
    },
    /// `stat(2)` of a path failed.
    #[error("stat {path}: {} ({errno:?})", .errno.desc().to_lowercase())]
    Stat {
        /// The path given.
        path: PathBuf,
        /// The errno of `stat(2)`.
        errno: Errno,
    },
    /// A path that should name a block device names something else.
    #[error("{path}: not a block device (ENOTBLK)")]
    NotBlockDevice {
        /// The path given.
        path: PathBuf,
    },
    /// An argument was refused before reaching the module.
    #[error("{op}: {reason} (EINVAL)")]
    InvalidArgument {
        /// The operation the argument was for.
        op: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The module answered in a way the protocol does not allow.
    #[error("{op}: {reason}")]
    Protocol {
        /// The operation that got the answer.
        op: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A file or block device operation failed (difference storage files,
    /// backup files, snapshot images).
    #[error("{op} {path}: {} ({errno:?})", file_message(op, *.errno))]
    File {
        /// The operation, for example `"fallocate"` or `"read"`.
        op: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The errno of the failed system call.
        errno: Errno,
    },
    /// A file cannot serve as difference storage.
    #[error("{path}: {reason}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A backup directory, its metadata or one of its files is unusable.
    #[error("{path}: {reason}")]
    Backup {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A string could not be parsed. Shown after the value's context (a
    /// command-line option, a line of a file...), so its message has no
    /// operation.
    #[error("expected {what}, got {input:?}")]
    Parse {
        /// What was expected (for example `"a device id MAJOR:MINOR"`).
        what: &'static str,
        /// The string given.
        input: String,
    },
}

impl Error {
    /// The errno behind the error, if there is one.
    ///
    /// [`Error::NotBlockDevice`] reports `ENOTBLK` and
    /// [`Error::InvalidArgument`] `EINVAL`; parse and protocol errors have
    /// none.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Open { errno, .. }
            | Error::Ioctl { errno, .. }
            | Error::Stat { errno, .. }
            | Error::File { errno, .. } => Some(*errno),
            Error::NotBlockDevice { .. } => Some(Errno::ENOTBLK),
            Error::InvalidArgument { .. } => Some(Errno::EINVAL),
            Error::Protocol { .. }
            | Error::Parse { .. }
            | Error::Storage { .. }
            | Error::Backup { .. } => None,
        }
    }

    /// The operation that failed, as it is shown in messages.
    ///
    /// For example `"snapshot_take"`, `"open /dev/blksnap"` or
    /// `"stat /dev/sdb"`.
    pub fn op(&self) -> String {
        match self {
            Error::Open { path, .. } => format!("open {}", path.display()),
            Error::Stat { path, .. } => format!("stat {}", path.display()),
            Error::NotBlockDevice { path } => path.display().to_string(),
            Error::Ioctl { op, .. }
            | Error::InvalidArgument { op, .. }
            | Error::Protocol { op, .. } => (*op).to_string(),
            Error::File { op, path, .. } => format!("{op} {}", path.display()),
            Error::Storage { path, .. } | Error::Backup { path, .. } => path.display().to_string(),
            Error::Parse { .. } => "parse".to_string(),
        }
    }

    /// The human message without the operation and errno name.
    pub fn message(&self) -> String {
        match self {
            Error::Open { errno, .. } => open_message(*errno).into(),
            Error::Ioctl { op, errno } => ioctl_message(op, *errno).into(),
            Error::Stat { errno, .. } => errno.desc().to_lowercase(),
            Error::NotBlockDevice { .. } => "not a block device".into(),
            Error::InvalidArgument { reason, .. } | Error::Protocol { reason, .. } => {
                (*reason).into()
            }
            Error::File { op, errno, .. } => file_message(op, *errno),
            Error::Storage { reason, .. } | Error::Backup { reason, .. } => reason.clone(),
            Error::Parse { what, input } => format!("expected {what}, got {input:?}"),
        }
    }

    /// True for the timeout of [`crate::Control::snapshot_wait_event`]
    /// (`ENOENT`), which is an expected outcome rather than a failure.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Ioctl {
                op: "snapshot_wait_event",
                errno: Errno::ENOENT
            }
        )
    }

    /// True when a wait was interrupted by a signal (`EINTR`).
    pub fn is_interrupted(&self) -> bool {
        self.errno() == Some(Errno::EINTR)
    }
}

/// The errno's symbolic name, such as `ENOTTY`.
pub fn errno_name(errno: Errno) -> String {
    format!("{errno:?}")
}

/// The errno of an I/O error: the code of the system call that failed,
/// `None` for an error that did not come from one.
pub fn io_errno(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// [`io_errno`] for the errno fields of [`Error`].
pub(crate) fn os_errno(e: &std::io::Error) -> Errno {
    io_errno(e).unwrap_or(Errno::UnknownErrno)
}

/// The [`Error::File`] of the I/O error `e` of operation `op` on `path`.
pub(crate) fn io_err(op: &'static str, path: &Path, e: &std::io::Error) -> Error {
    Error::File {
        op,
        path: path.to_path_buf(),
        errno: os_errno(e),
    }
}

fn open_message(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOENT => "no such file: is the blksnap module loaded?",
        Errno::ENODEV | Errno::ENXIO => "no such device: is the blksnap module loaded?",
        Errno::EACCES | Errno::EPERM => "permission denied: needs root",
        _ => errno.desc(),
    }
}

/// What an errno means for a file operation `op`.
fn file_message(op: &str, errno: Errno) -> String {
    match (op, errno) {
        ("fallocate", Errno::EOPNOTSUPP) => {
            "the file system cannot preallocate files (fallocate)".into()
        }
        ("fallocate", Errno::ENOSPC) | ("write", Errno::ENOSPC) => {
            "no space left on the file system".into()
        }
        ("fiemap", Errno::EOPNOTSUPP) | ("fiemap", Errno::ENOTTY) => {
            "the file system cannot report file extents (FIEMAP)".into()
        }
        ("create", Errno::EEXIST) => "the file exists already".into(),
        (_, Errno::EROFS) => "read-only file system".into(),
        (_, Errno::EIO) => {
            "input/output error (for a snapshot image: is the snapshot corrupted?)".into()
        }
        (_, Errno::EPERM) | (_, Errno::EACCES) => "permission denied".into(),
        _ => errno.desc().to_lowercase(),
    }
}

/// What an errno means for the ioctl `op` of this interface.
fn ioctl_message(op: &str, errno: Errno) -> &'static str {
    match (op, errno) {
        (_, Errno::ENOTTY) => "the module does not implement this command",
        ("tracker_read_cbt_map", Errno::EPERM) => {
            "not permitted: needs CAP_SYS_ADMIN and a taken snapshot of the device"
        }
        (_, Errno::EPERM) | (_, Errno::EACCES) => "permission denied: needs CAP_SYS_ADMIN",
        ("tracker_remove", Errno::ENODEV)
        | ("tracker_read_cbt_map", Errno::ENODEV)
        | ("tracker_mark_dirty_blocks", Errno::ENODEV) => "the device is not tracked",
        ("snapshot_collect_images", Errno::ENODEV) => "the snapshot is not taken yet",
        ("snapshot_create", Errno::EINVAL) => {
            "invalid devices: a bad device number, a device given twice, or too many"
        }
        ("snapshot_append_storage", Errno::EINVAL) => {
            "invalid ranges: they must be page-aligned (multiples of 8 sectors), \
             inside the device and not overlapping storage given before"
        }
        ("tracker_mark_dirty_blocks", Errno::EINVAL) => "invalid ranges: outside the device",
        ("snapshot_wait_event", Errno::ENOENT) => "no event before the timeout",
        ("tracker_remove", Errno::ENOENT)
        | ("tracker_read_cbt_map", Errno::ENOENT)
        | ("tracker_mark_dirty_blocks", Errno::ENOENT) => "the device is not tracked",
        (_, Errno::ENOENT) => "not found",
        (_, Errno::ESRCH) => "no such snapshot",
        ("snapshot_take", Errno::EALREADY) => "the snapshot is already taken",
        ("snapshot_create", Errno::EALREADY) => "a device is already in a snapshot",
        (_, Errno::EALREADY) => "already done",
        ("tracker_remove", Errno::EBUSY) => "the device is in a snapshot",
        (_, Errno::EBUSY) => "busy: the device or snapshot is in use",
        ("tracker_read_cbt_map", Errno::ENODATA) => "no change tracking map: is a snapshot taken?",
        ("snapshot_collect_images", Errno::ENODATA) => "no images: is the snapshot taken?",
        (_, Errno::ENODATA) => "no data available",
        (_, Errno::EINVAL) => "invalid argument",
        (_, Errno::ENOSPC) => "out of space in the difference storage",
        (_, Errno::EINTR) => "interrupted by a signal",
        (_, Errno::ENODEV) => "no such block device",
        (_, Errno::ENOMEM) => "the module is out of memory",
        (_, Errno::EFAULT) => "bad address passed to the module",
        (_, Errno::EFBIG) | (_, Errno::E2BIG) => "argument too large",
        (_, Errno::EOVERFLOW) => "value too large",
        _ => errno.desc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_messages() {
        let e = Error::Ioctl {
            op: "version",
            errno: Errno::ENOTTY,
        };
        assert_eq!(
            e.to_string(),
            "version: the module does not implement this command (ENOTTY)"
        );
        let e = Error::Ioctl {
            op: "snapshot_take",
            errno: Errno::EPERM,
        };
        assert_eq!(
            e.to_string(),
            "snapshot_take: permission denied: needs CAP_SYS_ADMIN (EPERM)"
        );
        let e = Error::Ioctl {
            op: "snapshot_destroy",
            errno: Errno::ESRCH,
        };
        assert_eq!(e.to_string(), "snapshot_destroy: no such snapshot (ESRCH)");
        let e = Error::Ioctl {
            op: "snapshot_take",
            errno: Errno::EALREADY,
        };
        assert_eq!(
            e.to_string(),
            "snapshot_take: the snapshot is already taken (EALREADY)"
        );
        let e = Error::Ioctl {
            op: "tracker_remove",
            errno: Errno::EBUSY,
        };
        assert_eq!(
            e.to_string(),
            "tracker_remove: the device is in a snapshot (EBUSY)"
        );
        let e = Error::Ioctl {
            op: "snapshot_append_storage",
            errno: Errno::ENOSPC,
        };
        assert_eq!(e.message(), "out of space in the difference storage");
        let e = Error::Ioctl {
            op: "snapshot_create",
            errno: Errno::ENODEV,
        };
        assert_eq!(e.message(), "no such block device");
        assert_eq!(e.errno(), Some(Errno::ENODEV));
    }

    #[test]
    fn unknown_errno_falls_back_to_strerror() {
        let e = Error::Ioctl {
            op: "version",
            errno: Errno::EIO,
        };
        assert_eq!(e.message(), Errno::EIO.desc());
        assert!(e.to_string().ends_with("(EIO)"));
    }

    #[test]
    fn timeout_and_interrupt() {
        let e = Error::Ioctl {
            op: "snapshot_wait_event",
            errno: Errno::ENOENT,
        };
        assert!(e.is_timeout());
        assert_eq!(
            e.to_string(),
            "snapshot_wait_event: no event before the timeout (ENOENT)"
        );
        assert!(!Error::Ioctl {
            op: "tracker_remove",
            errno: Errno::ENOENT
        }
        .is_timeout());
        assert!(Error::Ioctl {
            op: "snapshot_wait_event",
            errno: Errno::EINTR
        }
        .is_interrupted());
    }

    #[test]
    fn other_variants() {
        let e = Error::Open {
            path: "/dev/blksnap".into(),
            errno: Errno::ENOENT,
        };
        assert_eq!(
            e.to_string(),
            "open /dev/blksnap: no such file: is the blksnap module loaded? (ENOENT)"
        );
        let e = Error::NotBlockDevice {
            path: "/etc/passwd".into(),
        };
        assert_eq!(e.to_string(), "/etc/passwd: not a block device (ENOTBLK)");
        assert_eq!(e.errno(), Some(Errno::ENOTBLK));
        let e = Error::Parse {
            what: "a device id MAJOR:MINOR",
            input: "8-1".into(),
        };
        assert_eq!(
            e.to_string(),
            "expected a device id MAJOR:MINOR, got \"8-1\""
        );
        assert_eq!(e.errno(), None);
        let e = Error::Protocol {
            op: "snapshot_collect",
            reason: "the count kept growing",
        };
        assert_eq!(e.to_string(), "snapshot_collect: the count kept growing");
    }

    /// `Display` is `<op>: <message> (<ERRNO>)` for every variant but
    /// `Parse`, from the same parts the methods give.
    #[test]
    fn display_is_op_message_errno() {
        let all = [
            Error::Open {
                path: "/dev/blksnap".into(),
                errno: Errno::EACCES,
            },
            Error::Ioctl {
                op: "tracker_remove",
                errno: Errno::ENODEV,
            },
            Error::Stat {
                path: "/x".into(),
                errno: Errno::ENOENT,
            },
            Error::NotBlockDevice { path: "/x".into() },
            Error::InvalidArgument {
                op: "snapshot_create",
                reason: "no devices",
            },
            Error::Protocol {
                op: "snapshot_collect",
                reason: "bad count",
            },
            Error::File {
                op: "fallocate",
                path: "/x".into(),
                errno: Errno::ENOSPC,
            },
            Error::Storage {
                path: "/x".into(),
                reason: "shared extents".into(),
            },
            Error::Backup {
                path: "/b".into(),
                reason: "bad metadata".into(),
            },
        ];
        for e in all {
            let mut want = format!("{}: {}", e.op(), e.message());
            if let Some(errno) = e.errno() {
                want += &format!(" ({})", errno_name(errno));
            }
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn io_errors() {
        let e = std::io::Error::from_raw_os_error(Errno::EROFS as i32);
        assert_eq!(io_errno(&e), Some(Errno::EROFS));
        assert_eq!(
            io_err("write", Path::new("/x"), &e).to_string(),
            "write /x: read-only file system (EROFS)"
        );
        let e = std::io::Error::other("not from a system call");
        assert_eq!(io_errno(&e), None);
        assert_eq!(os_errno(&e), Errno::UnknownErrno);
    }
}
