// SPDX-License-Identifier: GPL-2.0
//! The memory the fuzzer points the module at: per worker, read-write pages
//! for argument structs and arrays, then a read-only page, then a page that
//! was unmapped with munmap(2), then an inaccessible (PROT_NONE) page that
//! keeps the hole from being reused; shared between workers, a "racy" region
//! other threads rewrite while the module reads it; and a list of addresses
//! no user buffer can be at.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::libc;

/// The page size the layout assumes (x86_64).
pub const PAGE: usize = 4096;

/// Addresses that are never valid user buffers: NULL and low addresses
/// below `mmap_min_addr`, the kernel's direct map and text, non-canonical
/// addresses and addresses at or above `TASK_SIZE`, the top of the address
/// space.
pub const BAD_ADDRS: &[u64] = &[
    0,
    1,
    8,
    0xfff,
    0x1000,
    0x7fff_ffff_f000,
    0x8000_0000_0000,
    0x8000_0000_0000_0000,
    0xffff_8880_0000_0000,
    0xffff_ffff_8100_0000,
    0xffff_ffff_ffff_f000,
    u64::MAX - 15,
    u64::MAX,
];

/// Maps `pages` anonymous pages with `prot`.
fn map(pages: usize, prot: libc::c_int) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            pages * PAGE,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// Changes the protection of `pages` pages at `addr` (inside our mapping).
fn protect(addr: *mut u8, pages: usize, prot: libc::c_int) -> io::Result<()> {
    // SAFETY: `addr` is page-aligned and inside a mapping this module made;
    // no Rust reference points into the pages whose protection changes.
    if unsafe { libc::mprotect(addr.cast(), pages * PAGE, prot) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One worker's pages: `rw_pages` read-write, one read-only, one unmapped
/// hole, one `PROT_NONE`.
#[derive(Debug)]
pub struct Arena {
    base: *mut u8,
    rw_pages: usize,
}

// SAFETY: the arena owns its mapping; whoever holds it (one worker at a
// time) is the only one writing it.
unsafe impl Send for Arena {}

impl Arena {
    /// Maps a new arena with `rw_pages` read-write pages.
    pub fn new(rw_pages: usize) -> io::Result<Self> {
        let total = rw_pages + 3;
        let base = map(total, libc::PROT_READ | libc::PROT_WRITE)?;
        let arena = Arena { base, rw_pages };
        protect(arena.ro(), 1, libc::PROT_READ)?;
        protect(arena.hole().wrapping_add(PAGE), 1, libc::PROT_NONE)?;
        // SAFETY: the hole page is part of the mapping made above.
        if unsafe { libc::munmap(arena.hole().cast(), PAGE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(arena)
    }

    /// The first read-write byte.
    pub fn rw(&self) -> *mut u8 {
        self.base
    }

    /// Bytes of read-write memory.
    pub fn rw_len(&self) -> usize {
        self.rw_pages * PAGE
    }

    /// The read-only page.
    pub fn ro(&self) -> *mut u8 {
        self.base.wrapping_add(self.rw_pages * PAGE)
    }

    /// The unmapped page after the read-only one.
    pub fn hole(&self) -> *mut u8 {
        self.base.wrapping_add((self.rw_pages + 1) * PAGE)
    }

    /// The `PROT_NONE` page after the hole.
    pub fn none(&self) -> *mut u8 {
        self.base.wrapping_add((self.rw_pages + 2) * PAGE)
    }

    /// Copies `bytes` to `offset` of the read-write pages, clipped to them.
    pub fn write_rw(&mut self, offset: usize, bytes: &[u8]) {
        let n = bytes.len().min(self.rw_len().saturating_sub(offset));
        // SAFETY: `offset..offset + n` is inside the read-write pages, which
        // only this (exclusively borrowed) arena writes.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), n) };
    }

    /// Copies `bytes` to `addr`, which may be in the read-write or the
    /// read-only page; whatever would land in the hole is dropped.
    pub fn write_at(&mut self, addr: *mut u8, bytes: &[u8]) -> io::Result<()> {
        let start = addr as usize;
        let base = self.base as usize;
        let end = (self.hole() as usize).min(start.saturating_add(bytes.len()));
        if start < base || start >= end {
            return Ok(());
        }
        let n = end - start;
        let touches_ro = end > self.ro() as usize;
        if touches_ro {
            protect(self.ro(), 1, libc::PROT_READ | libc::PROT_WRITE)?;
        }
        // SAFETY: `start..start + n` lies in the read-write or the (now
        // writable) read-only page of this exclusively borrowed arena.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), addr, n) };
        if touches_ro {
            protect(self.ro(), 1, libc::PROT_READ)?;
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from `addr` (in the read-write or read-only
    /// page) into `out`; false if they are not all there.
    pub fn read_at(&self, addr: usize, out: &mut [u8]) -> bool {
        let base = self.base as usize;
        let Some(end) = addr.checked_add(out.len()) else {
            return false;
        };
        if addr < base || end > self.hole() as usize {
            return false;
        }
        // SAFETY: the range is inside the readable pages of this arena.
        unsafe { ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
        true
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmaps what `new` mapped (the hole is unmapped already,
        // which munmap accepts).
        unsafe { libc::munmap(self.base.cast(), (self.rw_pages + 3) * PAGE) };
    }
}

/// Memory every worker may point the module at and rewrite at any time.
#[derive(Debug)]
pub struct Racy {
    base: *mut u8,
    len: usize,
}

// SAFETY: only accessed through atomic stores (and by the kernel).
unsafe impl Send for Racy {}
// SAFETY: as above.
unsafe impl Sync for Racy {}

impl Racy {
    /// Maps `pages` pages of racy memory.
    pub fn new(pages: usize) -> io::Result<Self> {
        Ok(Racy {
            base: map(pages, libc::PROT_READ | libc::PROT_WRITE)?,
            len: pages * PAGE,
        })
    }

    /// The first byte.
    pub fn addr(&self) -> usize {
        self.base as usize
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` into the 8-byte word `word` (modulo the length).
    pub fn store(&self, word: usize, value: u64) {
        let word = word % (self.len / 8);
        // SAFETY: the word is inside the mapping and 8-byte aligned; it is
        // only ever accessed atomically from user space.
        let cell = unsafe { &*self.base.cast::<AtomicU64>().add(word) };
        cell.store(value, Ordering::Relaxed);
    }
}

impl Drop for Racy {
    fn drop(&mut self) {
        // SAFETY: unmaps what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_writes() {
        let mut a = Arena::new(2).unwrap();
        assert_eq!(a.ro() as usize - a.rw() as usize, 2 * PAGE);
        a.write_rw(10, b"abc");
        // Straddling the read-only page: written; into the hole: dropped.
        a.write_at(a.ro().wrapping_sub(2), b"wxyz").unwrap();
        a.write_at(a.hole().wrapping_sub(1), b"12").unwrap();
        let mut out = [0u8; 4];
        assert!(a.read_at(a.ro() as usize - 2, &mut out));
        assert_eq!(&out, b"wxyz");
        assert!(!a.read_at(a.hole() as usize - 1, &mut out));
        let mut one = [0u8; 1];
        assert!(a.read_at(a.hole() as usize - 1, &mut one));
        assert_eq!(one[0], b'1');
    }
}
