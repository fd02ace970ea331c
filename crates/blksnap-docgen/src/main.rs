// SPDX-License-Identifier: GPL-2.0
//! `blksnap-docgen`: writes the `blksnap` man pages and shell completions,
//! generated from the CLI's own clap definition (`blksnap_cli::command`), so
//! they cannot drift from what the binary accepts.
//!
//! ```text
//! blksnap-docgen OUTDIR [DATE]
//! ```
//!
//! writes `OUTDIR/man/blksnap.1` (the tool, its global options and the list
//! of subcommands), one `OUTDIR/man/blksnap-<subcommand>.1` per subcommand,
//! and `OUTDIR/completions/{blksnap.bash,_blksnap,blksnap.fish}` for bash, zsh
//! and fish. DATE (e.g. `2026-12-03`) goes into the pages' title lines; the
//! packaging script passes the date of the last commit, so that the pages are
//! the same from build to build.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;
use clap_mangen::Man;

/// What the top page says beyond what clap knows: the output formats, the
/// exit status, and where the module comes from. Plain roff.
const TOP_PAGE_EXTRA: &str = r#".SH OUTPUT
Results are printed as \fIkey\fR=\fIvalue\fR lines, one block per record,
records separated by an empty line; with \fB\-\-json\fR as JSON (one object per
line for the commands that report events as they come).
Failures are printed on standard error as
.RS
.B blksnap: \fIop\fB: \fImessage\fB (\fIERRNO\fB)
.RE
naming the operation, the reason and the error number's symbolic name.
.SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
The operation failed (see the message), or \fBverify\fR found a difference.
.TP
.B 2
Usage error: an unknown subcommand, a missing or malformed argument.
.SH FILES
.TP
.I /dev/blksnap
The control device of the blksnap kernel module (\fB\-\-device\fR names
another). It exists while the module is loaded (\fBmodprobe blksnap\fR); every
subcommand needs \fBCAP_SYS_ADMIN\fR.
.TP
.I /usr/include/linux/blk_snap.h
The module's ioctl interface (package blksnap\-rs\-dkms).
.SH "SEE ALSO"
.BR dkms (8),
.BR modprobe (8)
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, date) = match args.as_slice() {
        [out] => (PathBuf::from(out), String::new()),
        [out, date] => (PathBuf::from(out), date.clone()),
        _ => {
            eprintln!("usage: blksnap-docgen OUTDIR [DATE]");
            return ExitCode::from(2);
        }
    };
    match generate(&out, &date) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blksnap-docgen: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// Writes the man pages and the completions under `out`.
fn generate(out: &Path, date: &str) -> io::Result<()> {
    let mut cmd = blksnap_cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("blksnap-rs {}", cmd.get_version().unwrap_or_default());

    let man_dir = out.join("man");
    fs::create_dir_all(&man_dir)?;
    let page = |cmd: clap::Command| {
        Man::new(cmd)
            .date(date)
            .source(source.as_str())
            .manual("User Commands")
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Built, a subcommand's display name is `blksnap-<sub>`: the page's
        // name, as the top page's list calls it.
        page(sub.clone()).generate_to(&man_dir)?;
    }
    let top = page(cmd.clone());
    let mut file = File::create(man_dir.join(top.get_filename()))?;
    top.render(&mut file)?;
    file.write_all(TOP_PAGE_EXTRA.as_bytes())?;
    file.flush()?;

    let comp_dir = out.join("completions");
    fs::create_dir_all(&comp_dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "blksnap", &comp_dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions() {
        let dir = std::env::temp_dir().join(format!("blksnap-docgen-{}", std::process::id()));
        generate(&dir, "2026-01-01").unwrap();
        let top = fs::read_to_string(dir.join("man/blksnap.1")).unwrap();
        assert!(top.contains(".TH blksnap 1 2026-01-01 \"blksnap-rs "));
        assert!(top.contains("blksnap\\-snapshot_create(1)"));
        assert!(top.contains(".SH \"EXIT STATUS\""));
        let sub = fs::read_to_string(dir.join("man/blksnap-snapshot_create.1")).unwrap();
        assert!(sub.contains(".TH blksnap-snapshot_create 1"));
        for f in ["blksnap.bash", "_blksnap", "blksnap.fish"] {
            let text = fs::read_to_string(dir.join("completions").join(f)).unwrap();
            assert!(text.contains("snapshot_create"), "{f}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
