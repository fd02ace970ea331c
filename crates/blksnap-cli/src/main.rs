// SPDX-License-Identifier: GPL-2.0
//! `blksnap`: command-line client of the blksnap snapshot and change-tracking
//! module (see the library crate, `blksnap_cli`, for what it prints).

fn main() -> std::process::ExitCode {
    blksnap_cli::main()
}
