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

    /// The units of 2^`shift` sectors (tracking blocks, chunks) that the
    /// part of the range below `capacity` touches, by index: empty when
    /// none of it is.
    pub fn units(self, shift: u32, capacity: u64) -> core::ops::Range<u64> {
        let end = self.end().min(capacity);
        if self.is_empty() || self.start >= end {
            return 0..0;
        }
        (self.start >> shift)..(((end - 1) >> shift) + 1)
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

    #[test]
    fn units_are_clipped_and_exact() {
        let units = |start, count| Sectors::new(start, count).units(3, 100);
        assert_eq!(units(0, 0), 0..0);
        assert_eq!(units(0, 1), 0..1);
        assert_eq!(units(7, 2), 0..2);
        assert_eq!(units(8, 8), 1..2);
        assert_eq!(units(95, 100), 11..13);
        assert_eq!(units(100, 8), 0..0);
        assert_eq!(units(u64::MAX, u64::MAX), 0..0);
    }
}
