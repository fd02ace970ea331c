// SPDX-License-Identifier: GPL-2.0

//! The bio filter: what every bio submitted on the system goes through
//! before it reaches its device (see `sys::hook`).
//!
//! Untracked devices pay one RCU lookup in the tracker index. For a tracked
//! device, writes, discards and write-zeroes mark change tracking; reads and
//! flushes pass untouched. A bio sent to a partition of a tracked whole disk
//! is tracked on the disk. Nothing here sleeps or allocates, so bios from
//! stacked drivers and `REQ_NOWAIT` submitters are handled inline.
//!
//! Locking: the tracker index lookup runs under RCU; marking holds the take
//! barrier for reading and then the tracker's map lock.

use crate::{
    sys::{
        bio::{BioInfo, Op},
        sync::TakeBarrier,
    },
    tracker::{Tracker, INDEX},
};

/// Called for every bio before it is passed on.
pub(crate) fn submit(bio: &BioInfo) {
    if bio.op() != Op::Change || bio.sectors() == 0 {
        return;
    }
    let sectors = bio.sectors();
    let mark = |t: &Tracker, sector: u64| {
        let _barrier = TakeBarrier::read();
        t.mark(sector, sectors);
    };
    if INDEX.with(bio.dev(), |t| mark(&t, bio.sector())).is_none() {
        let (whole, sector) = bio.whole();
        if whole != bio.dev() {
            INDEX.with(whole, |t| mark(&t, sector));
        }
    }
}
