// SPDX-License-Identifier: GPL-2.0

//! [`Sectors`]: a range of 512-byte sectors on one device, as bios, change
//! tracking and copy-on-write speak of them.
//!
//! Plain data with no kernel types (the host tests of crates/blksnap-logic
//! include it too).
//!
//! Locking: none; plain data.

/// `count` 512-byte sectors from `start`, on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sectors {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub count: u64,
}

impl Sectors {
    /// `count` sectors from `start`.
    pub const fn new(start: u64, count: u64) -> Self {
        Sectors { start, count }
    }

    /// The first sector past the range (saturating: a range that would
    /// wrap ends at `u64::MAX`).
    pub const fn end(self) -> u64 {
        self.start.saturating_add(self.count)
    }

    /// Whether the range holds no sector.
    pub const fn is_empty(self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_saturates() {
        assert_eq!(Sectors::new(8, 8).end(), 16);
        assert_eq!(Sectors::new(u64::MAX - 1, 8).end(), u64::MAX);
        assert!(Sectors::new(5, 0).is_empty());
        assert!(!Sectors::new(5, 1).is_empty());
    }
}
