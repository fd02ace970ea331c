// SPDX-License-Identifier: GPL-2.0

//! [`ChunkBits`]: one bit per chunk of a taken snapshot's device, set once
//! writes to the chunk may pass without copy-on-write, forever.
//!
//! The bio filter reads the bits with no lock, so a write to a chunk that
//! is already settled costs a few loads instead of the chunk lock and a tree
//! lookup. A bit only ever goes from clear to set, and whoever sets it has
//! seen, under the chunk lock, a state that never changes back; so a set bit
//! is always true, and a clear one only sends the filter to the locked path.
//!
//! Locking: none; the bits are atomics. Setting one (release) follows the
//! chunk lock's critical section that saw the state, and the filter's load
//! (acquire) pairs with it.
//!
//! Needs no kernel types: `cargo test` covers it on the host through the
//! `blksnap-logic` crate.

use core::{
    ops::{Deref, Range},
    sync::atomic::{AtomicU64, Ordering},
};

/// The bits of `count` chunks, in the words `W` holds (`count.div_ceil(64)`
/// of them).
pub struct ChunkBits<W> {
    words: W,
    count: u64,
}

/// How many words `count` chunks need.
pub fn words_for(count: u64) -> u64 {
    count.div_ceil(64)
}

impl<W: Deref<Target = [AtomicU64]>> ChunkBits<W> {
    /// Bits for `count` chunks in `words` (all clear); `None` if `words`
    /// has fewer than [`words_for`] words.
    pub fn new(words: W, count: u64) -> Option<Self> {
        let len = u64::try_from(words.len()).ok()?;
        if len < words_for(count) {
            return None;
        }
        for w in words.iter() {
            w.store(0, Ordering::Relaxed);
        }
        Some(ChunkBits { words, count })
    }

    /// Marks chunk `c` settled. Past the end: nothing.
    pub fn set(&self, c: u64) {
        if c >= self.count {
            return;
        }
        if let Some(w) = usize::try_from(c / 64).ok().and_then(|i| self.words.get(i)) {
            w.fetch_or(1 << (c % 64), Ordering::Release);
        }
    }

    /// Whether every chunk of `range` is settled (`true` for an empty
    /// range; `false` if it goes past the end).
    pub fn all_set(&self, range: Range<u64>) -> bool {
        if range.end > self.count {
            return range.is_empty();
        }
        let mut c = range.start;
        while c < range.end {
            let Some(word) = usize::try_from(c / 64).ok().and_then(|i| self.words.get(i)) else {
                return false;
            };
            let first = c % 64;
            let last = (range.end - c + first).min(64);
            // Bits first..last of this word.
            let mask = (u64::MAX >> (64 - (last - first))) << first;
            if word.load(Ordering::Acquire) & mask != mask {
                return false;
            }
            c += last - first;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(count: u64) -> ChunkBits<Vec<AtomicU64>> {
        let words = (0..words_for(count))
            .map(|_| AtomicU64::new(u64::MAX))
            .collect();
        ChunkBits::new(words, count).expect("enough words")
    }

    #[test]
    fn starts_clear_even_on_dirty_words() {
        let b = bits(130);
        assert!(!b.all_set(0..1));
        assert!(!b.all_set(129..130));
        assert!(b.all_set(5..5));
    }

    #[test]
    fn too_few_words_is_refused() {
        let words: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        assert!(ChunkBits::new(words, 129).is_none());
    }

    #[test]
    fn ranges_across_words() {
        let b = bits(200);
        for c in 60..140 {
            b.set(c);
        }
        assert!(b.all_set(60..140));
        assert!(b.all_set(64..128));
        assert!(b.all_set(63..65));
        assert!(!b.all_set(59..61));
        assert!(!b.all_set(139..141));
        assert!(!b.all_set(0..200));
        b.set(140);
        assert!(b.all_set(139..141));
    }

    #[test]
    fn matches_a_plain_model() {
        // Every range of a small map against a bool array, after each set.
        let n = 150u64;
        let b = bits(n);
        let mut model = vec![false; n as usize];
        let mut seed = 7u64;
        for _ in 0..120 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = (seed >> 33) % n;
            b.set(c);
            model[c as usize] = true;
            for s in (0..n).step_by(7) {
                for e in (s..=n).step_by(5) {
                    let want = model[s as usize..e as usize].iter().all(|&x| x);
                    assert_eq!(b.all_set(s..e), want, "{s}..{e}");
                }
            }
        }
    }

    #[test]
    fn past_the_end() {
        let b = bits(64);
        for c in 0..64 {
            b.set(c);
        }
        b.set(64);
        b.set(u64::MAX);
        assert!(b.all_set(0..64));
        assert!(!b.all_set(0..65));
        assert!(b.all_set(70..70));
    }
}
