// SPDX-License-Identifier: GPL-2.0

//! What differs between the supported kernel lines, 6.12 LTS and 7.3, in
//! one place.
//!
//! One tree builds against both. `Kbuild` passes `--cfg kernel_7` when the
//! kernel built against is 7.0 or later (from the kernel's own `VERSION`);
//! this file is the only one that tests it, and each item here has one
//! definition per line, with the same meaning on both. Where 7.x offers an
//! abstraction 6.12 lacks (miscdevice, module parameters, xarray), the
//! module keeps its one code path under `sys/` for both lines.
//!
//! * [`FromBytes`], [`AsBytes`]: the marker traits of `UserSlice` reads and
//!   writes, in `kernel::types` on 6.12 and in `kernel::transmute` on 7.x
//!   (whose prelude's `FromBytes` is zerocopy's derive-only trait, which
//!   the UAPI types do not implement).
//! * [`kernel_module!`]: `module!`, whose `author` key became `authors`.
//! * [`lock_backend_extras!`]: the items 7.x's `lock::Backend` added
//!   (`try_lock`, `assert_is_held`).
//! * [`user_slice`]: a `UserSlice` from an ioctl's address; 7.x wraps the
//!   address in a `UserPtr`.
//! * [`VecExt`]: `pop` (7.x has its own) and `swap_remove` (neither has)
//!   for the `kernel` crate's `Vec`, brought into scope by [`prelude`].
//!
//! Locking: none; definitions and plain data.

use kernel::{
    alloc::{Allocator, Vec},
    uaccess::UserSlice,
};

#[cfg(not(kernel_7))]
pub(crate) use kernel::types::{AsBytes, FromBytes};

#[cfg(kernel_7)]
pub(crate) use kernel::transmute::{AsBytes, FromBytes};

/// `module!` with one author, in the key the kernel line's macro knows.
#[cfg(not(kernel_7))]
macro_rules! kernel_module {
    (type: $type:ident, name: $name:tt, author: $author:tt, description: $description:tt,
     license: $license:tt $(,)?) => {
        kernel::prelude::module! {
            type: $type,
            name: $name,
            author: $author,
            description: $description,
            license: $license,
        }
    };
}

/// `module!` with one author, in the key the kernel line's macro knows.
#[cfg(kernel_7)]
macro_rules! kernel_module {
    (type: $type:ident, name: $name:tt, author: $author:tt, description: $description:tt,
     license: $license:tt $(,)?) => {
        kernel::prelude::module! {
            type: $type,
            name: $name,
            authors: [$author],
            description: $description,
            license: $license,
        }
    };
}
pub(crate) use kernel_module;

/// The `lock::Backend` items of 7.x that 6.12's trait lacks, for a
/// spinlock backend whose guard state is the saved interrupt flags. Expands
/// inside the `unsafe impl Backend`.
#[cfg(not(kernel_7))]
macro_rules! lock_backend_extras {
    () => {};
}

/// The `lock::Backend` items of 7.x that 6.12's trait lacks, for a
/// spinlock backend whose guard state is the saved interrupt flags. Expands
/// inside the `unsafe impl Backend`.
#[cfg(kernel_7)]
macro_rules! lock_backend_extras {
    () => {
        unsafe fn try_lock(ptr: *mut Self::State) -> Option<Self::GuardState> {
            let mut flags = 0;
            // SAFETY: the caller guarantees `ptr` is an initialised spinlock;
            // if it is taken, the guard made from `flags` releases it.
            let locked = unsafe { bindings::blksnap_spin_trylock_irqsave(ptr.cast(), &mut flags) };
            locked.then_some(flags)
        }

        unsafe fn assert_is_held(ptr: *mut Self::State) {
            // SAFETY: the caller guarantees `ptr` is an initialised spinlock.
            unsafe { bindings::blksnap_spin_assert_held(ptr.cast()) }
        }
    };
}
pub(crate) use lock_backend_extras;

/// Makes the `UserSlice` of the user memory at `addr`, `len` bytes long
/// (not checked until read or written).
pub(crate) fn user_slice(addr: usize, len: usize) -> UserSlice {
    #[cfg(not(kernel_7))]
    let ptr = addr;
    #[cfg(kernel_7)]
    let ptr = kernel::uaccess::UserPtr::from_addr(addr);
    UserSlice::new(ptr, len)
}

/// Element removal for kernel vectors that 6.12's `Vec` lacks.
pub(crate) trait VecExt<T> {
    /// Removes and returns the last element.
    #[cfg(not(kernel_7))]
    fn pop(&mut self) -> Option<T>;
    /// Removes element `i`, moving the last element into its place.
    fn swap_remove(&mut self, i: usize) -> Option<T>;
}

impl<T, A: Allocator> VecExt<T> for Vec<T, A> {
    #[cfg(not(kernel_7))]
    fn pop(&mut self) -> Option<T> {
        let last = self.len().checked_sub(1)?;
        // SAFETY: `last` is in bounds; the element is read out and the
        // length shrinks past it, so it is owned exactly once.
        unsafe {
            let v = core::ptr::read(self.as_ptr().add(last));
            self.set_len(last);
            Some(v)
        }
    }

    fn swap_remove(&mut self, i: usize) -> Option<T> {
        let last = self.len().checked_sub(1)?;
        if i > last {
            return None;
        }
        self.as_mut_slice().swap(i, last);
        self.pop()
    }
}

/// The `kernel` prelude with [`VecExt`] in scope. A glob import of it is
/// used on every line, although on 7.x a file's `pop` calls resolve to
/// `Vec`'s own method.
pub(crate) mod prelude {
    pub(crate) use super::VecExt as _;
    pub(crate) use kernel::prelude::*;
}
