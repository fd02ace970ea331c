// SPDX-License-Identifier: GPL-2.0
//! `blksnap`: command-line client of the blksnap snapshot and change-tracking
//! module.
//!
//! Each subcommand maps to one ioctl of the module (or a small sequence of
//! them). Results are printed as `key=value` lines, one block per record and
//! records separated by an empty line, or as JSON with `--json`. Failures are
//! printed as `blksnap: <op>: <message> (<ERRNO>)` with exit status 1; usage
//! errors exit with status 2.
//!
//! The binary (`src/main.rs`) only calls [`main`]. The library exposes the
//! command-line definition as well, so that `crates/blksnap-docgen` generates
//! the man pages and shell completions from the same clap definition.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

/// The command-line definition, as clap sees it (name, options, subcommands).
pub fn command() -> clap::Command {
    cli::Cli::command()
}

/// Runs the command line of this process and returns its exit status.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(&cli) {
        Ok(out) => {
            out.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let Some(out) = &e.output {
                out.print(cli.json);
            }
            eprintln!("blksnap: {e}");
            ExitCode::FAILURE
        }
    }
}
