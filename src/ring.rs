// SPDX-License-Identifier: GPL-2.0

//! [`Ring`]: a queue in slots allocated once, that drops its oldest item
//! when a new one finds it full (the event queue keeps a snapshot's events
//! in one, so queuing never allocates).
//!
//! Pure logic with no kernel types (host `cargo test` covers it through
//! crates/blksnap-logic).
//!
//! Locking: none here; the owner keeps the ring under a lock.

use core::ops::DerefMut;

/// A first-in first-out queue over the slots of `L` (`KVec` in the kernel,
/// `Vec` on the host), keeping the newest items.
///
/// # Invariants
///
/// `head < slots.len()` unless `slots` is empty, and `len <= slots.len()`;
/// the items are the `len` slots from `head` on, wrapping around.
pub struct Ring<L> {
    slots: L,
    head: usize,
    len: usize,
}

impl<T: Copy, L: DerefMut<Target = [T]>> Ring<L> {
    /// An empty ring over `slots`, which hold no items yet (their values
    /// are overwritten).
    pub fn new(slots: L) -> Self {
        // INVARIANT: empty.
        Ring {
            slots,
            head: 0,
            len: 0,
        }
    }

    /// How many items the ring holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the ring holds no items.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `item` as the newest; when full, the oldest item is dropped to
    /// make room (returns `true` then). A ring with no slots drops `item`.
    pub fn push(&mut self, item: T) -> bool {
        let capacity = self.slots.len();
        if capacity == 0 {
            return true;
        }
        if self.len < capacity {
            let tail = (self.head + self.len) % capacity;
            if let Some(slot) = self.slots.get_mut(tail) {
                *slot = item;
                // INVARIANT: one more item, still at most `capacity`.
                self.len += 1;
            }
            return false;
        }
        if let Some(slot) = self.slots.get_mut(self.head) {
            *slot = item;
        }
        // INVARIANT: the oldest slot now holds the newest item.
        self.head = (self.head + 1) % capacity;
        true
    }

    /// Takes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let item = *self.slots.get(self.head)?;
        // INVARIANT: `len > 0` implies a slot, so `capacity > 0`.
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn keeps_order_and_drops_the_oldest() {
        let mut r = Ring::new(vec![0u32; 3]);
        assert!(r.is_empty());
        assert!(!r.push(1));
        assert!(!r.push(2));
        assert!(!r.push(3));
        assert!(r.push(4));
        assert_eq!(r.len(), 3);
        assert_eq!(r.pop(), Some(2));
        assert_eq!(r.pop(), Some(3));
        assert!(!r.push(5));
        assert_eq!(r.pop(), Some(4));
        assert_eq!(r.pop(), Some(5));
        assert_eq!(r.pop(), None);
    }

    #[test]
    fn no_slots_holds_nothing() {
        let mut r = Ring::new(Vec::<u8>::new());
        assert!(r.push(1));
        assert_eq!(r.pop(), None);
        assert_eq!(r.len(), 0);
    }

    /// Random pushes and pops against a bounded `VecDeque`.
    #[test]
    fn matches_a_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for capacity in 0..6 {
            let mut ring = Ring::new(vec![0u64; capacity]);
            let mut model = VecDeque::new();
            for i in 0..2000u64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed.is_multiple_of(3) {
                    assert_eq!(ring.pop(), model.pop_front(), "pop {i}");
                } else {
                    let dropped = model.len() == capacity;
                    if dropped {
                        model.pop_front();
                    }
                    if capacity > 0 {
                        model.push_back(i);
                    }
                    assert_eq!(ring.push(i), dropped || capacity == 0, "push {i}");
                }
                assert_eq!(ring.len(), model.len());
            }
        }
    }
}
