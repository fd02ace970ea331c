// SPDX-License-Identifier: GPL-2.0

//! [`VecExt`]: removal from `kernel::alloc` vectors, which the oldest
//! supported kernel line's `Vec` lacks.
//!
//! Locking: none; plain data.

use core::ptr;
use kernel::alloc::{Allocator, Vec};

/// Element removal for kernel vectors.
pub(crate) trait VecExt<T> {
    /// Removes and returns the last element.
    fn pop(&mut self) -> Option<T>;
    /// Removes element `i`, moving the last element into its place.
    fn swap_remove(&mut self, i: usize) -> Option<T>;
}

impl<T, A: Allocator> VecExt<T> for Vec<T, A> {
    fn pop(&mut self) -> Option<T> {
        let len = self.len();
        self.swap_remove(len.checked_sub(1)?)
    }

    fn swap_remove(&mut self, i: usize) -> Option<T> {
        let len = self.len();
        if i >= len {
            return None;
        }
        let base = self.as_mut_ptr();
        // SAFETY: `i` and `len - 1` are in bounds. The element at `i` is read
        // out, the last one is moved into its slot, and the length shrinks so
        // that the moved-from last slot is forgotten: every element is owned
        // exactly once.
        unsafe {
            let v = ptr::read(base.add(i));
            ptr::copy(base.add(len - 1), base.add(i), 1);
            self.set_len(len - 1);
            Some(v)
        }
    }
}
