// SPDX-License-Identifier: GPL-2.0

//! [`MinorMap`]: which minors of the image disks are in use, handing out the
//! lowest free one.
//!
//! The map has one slot per minor handed out so far; when every slot is in
//! use it grows by one, up to the highest minor it was made with, and it
//! never shrinks. `snapimage` keeps the module's map under a mutex and gives
//! a minor back when its image goes.
//!
//! Pure logic with no kernel types (host `cargo test` covers it through
//! crates/blksnap-logic).
//!
//! Locking: none here; the owner keeps the map under a lock.

use core::ops::DerefMut;

/// The slots a [`MinorMap`] keeps, which can grow by one (`KVec<bool>` in
/// the kernel, `Vec<bool>` on the host).
pub trait Slots: DerefMut<Target = [bool]> {
    /// What a failed growth returns (a failed allocation).
    type Error;

    /// Appends one slot holding `false`.
    fn push_free(&mut self) -> Result<(), Self::Error>;
}

/// Why [`MinorMap::take`] handed out no minor.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeError<E> {
    /// Every minor up to the map's highest is in use.
    Exhausted,
    /// A new slot was needed and could not be added.
    Grow(E),
}

/// The minors in use, in the slots `L`: slot `m` is `true` while minor `m`
/// is.
///
/// # Invariants
///
/// Every slot past minor `max` is `false`: only slots up to `max` are ever
/// set.
pub struct MinorMap<L> {
    slots: L,
    max: u32,
}

impl<L: Slots> MinorMap<L> {
    /// A map of minors `0..=max` over `slots`, with none in use (the slots'
    /// values are overwritten).
    pub fn new(mut slots: L, max: u32) -> Self {
        slots.fill(false);
        // INVARIANT: no slot is set.
        MinorMap { slots, max }
    }

    /// Marks the lowest free minor in use and returns it, adding a slot
    /// when every one is in use.
    ///
    /// Fails with [`TakeError::Exhausted`] when every minor up to the
    /// highest is in use, and with [`TakeError::Grow`] when the slot it
    /// needed could not be added; the map is unchanged then.
    pub fn take(&mut self) -> Result<u32, TakeError<L::Error>> {
        let index = self
            .slots
            .iter()
            .position(|used| !used)
            .unwrap_or(self.slots.len());
        let minor = u32::try_from(index)
            .ok()
            .filter(|&m| m <= self.max)
            .ok_or(TakeError::Exhausted)?;
        if index == self.slots.len() {
            self.slots.push_free().map_err(TakeError::Grow)?;
        }
        let slot = self.slots.get_mut(index).ok_or(TakeError::Exhausted)?;
        // INVARIANT: `minor <= max`.
        *slot = true;
        Ok(minor)
    }

    /// Marks `minor` free again; returns whether it was in use.
    pub fn release(&mut self, minor: u32) -> bool {
        let slot = usize::try_from(minor)
            .ok()
            .and_then(|m| self.slots.get_mut(m));
        match slot {
            // INVARIANT: clearing a slot keeps every one past `max` clear.
            Some(used) => core::mem::replace(used, false),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        collections::BTreeSet,
        ops::{Deref, DerefMut},
    };

    impl Slots for Vec<bool> {
        type Error = ();

        fn push_free(&mut self) -> Result<(), ()> {
            self.push(false);
            Ok(())
        }
    }

    /// Slots that refuse to grow past `cap`.
    struct Capped {
        slots: Vec<bool>,
        cap: usize,
    }

    impl Deref for Capped {
        type Target = [bool];

        fn deref(&self) -> &[bool] {
            &self.slots
        }
    }

    impl DerefMut for Capped {
        fn deref_mut(&mut self) -> &mut [bool] {
            &mut self.slots
        }
    }

    impl Slots for Capped {
        type Error = &'static str;

        fn push_free(&mut self) -> Result<(), &'static str> {
            if self.slots.len() >= self.cap {
                return Err("no memory");
            }
            self.slots.push(false);
            Ok(())
        }
    }

    #[test]
    fn lowest_free_first() {
        let mut m = MinorMap::new(Vec::new(), u32::MAX);
        assert_eq!(m.take(), Ok(0));
        assert_eq!(m.take(), Ok(1));
        assert_eq!(m.take(), Ok(2));
        assert!(m.release(1));
        assert!(!m.release(1));
        assert_eq!(m.take(), Ok(1));
        assert!(m.release(0));
        assert!(m.release(2));
        assert_eq!(m.take(), Ok(0));
        assert_eq!(m.take(), Ok(2));
        assert_eq!(m.take(), Ok(3));
    }

    #[test]
    fn starts_empty_on_used_slots() {
        let mut m = MinorMap::new(vec![true; 3], u32::MAX);
        assert_eq!(m.take(), Ok(0));
        assert_eq!(m.slots, [true, false, false]);
    }

    #[test]
    fn release_of_unknown_minors() {
        let mut m = MinorMap::new(Vec::new(), u32::MAX);
        assert!(!m.release(0));
        assert!(!m.release(u32::MAX));
        assert_eq!(m.take(), Ok(0));
        assert!(!m.release(5));
        assert_eq!(m.take(), Ok(1));
    }

    #[test]
    fn bounded_by_the_highest_minor() {
        let mut m = MinorMap::new(Vec::new(), 1);
        assert_eq!(m.take(), Ok(0));
        assert_eq!(m.take(), Ok(1));
        assert_eq!(m.take(), Err(TakeError::Exhausted));
        assert_eq!(m.slots.len(), 2);
        assert!(m.release(0));
        assert_eq!(m.take(), Ok(0));

        let mut none = MinorMap::new(Vec::new(), 0);
        assert_eq!(none.take(), Ok(0));
        assert_eq!(none.take(), Err(TakeError::Exhausted));
    }

    #[test]
    fn a_failed_growth_changes_nothing() {
        let mut m = MinorMap::new(
            Capped {
                slots: Vec::new(),
                cap: 2,
            },
            u32::MAX,
        );
        assert_eq!(m.take(), Ok(0));
        assert_eq!(m.take(), Ok(1));
        assert_eq!(m.take(), Err(TakeError::Grow("no memory")));
        assert_eq!(m.slots.slots, [true, true]);
        assert!(m.release(1));
        assert_eq!(m.take(), Ok(1));
    }

    /// Random takes and releases against a set of the minors in use, with
    /// a bound on the minors and one on the slots (failed growth).
    #[test]
    fn matches_a_model() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for max in 0..6u32 {
            for cap in 0..8usize {
                let mut map = MinorMap::new(
                    Capped {
                        slots: Vec::new(),
                        cap,
                    },
                    max,
                );
                let mut used = BTreeSet::new();
                for i in 0..2000 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed % 5 < 2 {
                        let m = u32::try_from(seed >> 40).unwrap_or(0) % (max + 3);
                        assert_eq!(map.release(m), used.remove(&m), "release {m} ({i})");
                    } else {
                        let lowest = (0..=max).find(|m| !used.contains(m));
                        let want = match lowest {
                            None => Err(TakeError::Exhausted),
                            Some(m) if m as usize >= cap => Err(TakeError::Grow("no memory")),
                            Some(m) => Ok(m),
                        };
                        let got = map.take();
                        if let Ok(m) = got {
                            used.insert(m);
                        }
                        assert_eq!(got, want, "take ({i}), max {max}, cap {cap}");
                    }
                    let in_use: BTreeSet<u32> = (0..)
                        .zip(map.slots.iter())
                        .filter_map(|(m, &u)| u.then_some(m))
                        .collect();
                    assert_eq!(in_use, used);
                    assert!(map.slots.len() <= cap.min(max as usize + 1));
                }
            }
        }
    }
}
