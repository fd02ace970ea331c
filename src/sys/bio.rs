// SPDX-License-Identifier: GPL-2.0

//! What the bio filter sees of a bio, read once by the C shim.
//!
//! Locking: none; a snapshot of the bio's fields at submission.

use super::bindings;

/// The operation of a bio, as far as change tracking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Changes data: write, discard, secure erase, write-zeroes.
    Change,
    /// Everything else: reads, flushes, zone and driver commands.
    Other,
}

/// A submitted bio's device, range and operation.
pub(crate) struct BioInfo(bindings::blksnap_bio_info);

impl BioInfo {
    /// Reads the fields of `bio`.
    ///
    /// # Safety
    ///
    /// `bio` is a bio being submitted, owned by the caller until passed on.
    pub(crate) unsafe fn read(bio: *mut bindings::bio) -> Self {
        let mut info = bindings::blksnap_bio_info::default();
        // SAFETY: `bio` is valid (the caller's guarantee); `info` is ours.
        unsafe { bindings::blksnap_bio_get_info(bio, &mut info) };
        BioInfo(info)
    }

    /// The device the bio was submitted to.
    pub(crate) fn dev(&self) -> u32 {
        self.0.dev
    }

    /// The whole disk of that device and the bio's first sector on it.
    pub(crate) fn whole(&self) -> (u32, u64) {
        (
            self.0.whole_dev,
            self.0.sector.saturating_add(self.0.start_sect),
        )
    }

    /// First sector, relative to [`BioInfo::dev`].
    pub(crate) fn sector(&self) -> u64 {
        self.0.sector
    }

    /// Length in sectors.
    pub(crate) fn sectors(&self) -> u64 {
        self.0.sectors.into()
    }

    /// What the bio does.
    pub(crate) fn op(&self) -> Op {
        match self.0.op {
            bindings::REQ_OP_WRITE
            | bindings::REQ_OP_DISCARD
            | bindings::REQ_OP_SECURE_ERASE
            | bindings::REQ_OP_WRITE_ZEROES => Op::Change,
            _ => Op::Other,
        }
    }
}
