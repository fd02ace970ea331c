// SPDX-License-Identifier: GPL-2.0

//! [`MiscDevice`]: a registered misc character device whose ioctls reach a
//! Rust handler, the [`FileOps`] it owns.
//!
//! [`MiscDevice`] owns the `struct miscdevice`, its `file_operations` and the
//! handler in one heap allocation that does not move from registration until
//! `Drop` deregisters it.
//!
//! Locking: none of its own. The misc core serializes registration and
//! deregistration. `file_operations.owner` holds a module reference for every
//! open file, so the module (and with it the `MiscDevice` it owns) outlives
//! every call into the handler; handlers get `&T` and must be `Sync`.

use super::bindings;
use kernel::{
    error::to_result,
    ffi::{c_long, c_uint, c_ulong},
    prelude::*,
    str::CStr,
    types::Opaque,
    ThisModule,
};

/// What a [`MiscDevice`] does with the calls made on its open files.
pub(crate) trait FileOps: Sync + Sized {
    /// Handles `ioctl(2)` with command `cmd` and the untyped argument `arg`.
    ///
    /// `arg` is a user address for every command of this interface. The
    /// value is the syscall's non-negative result.
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize>;
}

/// The registration's memory: `misc.fops` points at `fops`, and the misc
/// core's `file->private_data` points at `misc`.
#[repr(C)]
struct Inner<T> {
    misc: Opaque<bindings::miscdevice>,
    fops: bindings::file_operations,
    handler: T,
}

/// A misc device registered with the kernel, named `/dev/<name>`, and its
/// handler; deregistered when dropped.
///
/// # Invariants
///
/// `inner.misc` is registered with the misc core for the whole life of the
/// value, and `inner` is never moved while registered.
pub(crate) struct MiscDevice<T: FileOps> {
    inner: Pin<KBox<Inner<T>>>,
}

// SAFETY: the registration may be dropped (deregistered) from any thread; the
// raw pointers inside only point into the registration itself or at statics.
unsafe impl<T: FileOps + Send> Send for MiscDevice<T> {}
// SAFETY: shared access only reaches the handler, which is `Sync`.
unsafe impl<T: FileOps> Sync for MiscDevice<T> {}

impl<T: FileOps> MiscDevice<T> {
    /// Registers `/dev/<name>` with the permission bits `mode`, owned by
    /// `module`, whose ioctls go to `handler`.
    pub(crate) fn register(
        name: &'static CStr,
        mode: u16,
        module: &'static ThisModule,
        handler: T,
    ) -> Result<Self> {
        let fops = bindings::file_operations {
            owner: module.as_ptr().cast(),
            unlocked_ioctl: Some(ioctl_callback::<T>),
            ..Default::default()
        };
        let inner = KBox::pin(
            Inner {
                misc: Opaque::new(bindings::miscdevice::default()),
                fops,
                handler,
            },
            GFP_KERNEL,
        )?;
        let misc = inner.misc.get();
        // SAFETY: `misc` points into `inner`, which is pinned on the heap and
        // not yet shared with anyone: writing its fields is exclusive. `name`
        // is static and `inner.fops` lives as long as the registration.
        unsafe {
            (*misc).minor = bindings::MISC_DYNAMIC_MINOR as i32;
            (*misc).name = name.as_char_ptr();
            (*misc).mode = mode;
            (*misc).fops = &inner.fops;
        }
        // SAFETY: `misc` is fully initialised and stays at this address until
        // `Drop` deregisters it (the type invariant).
        to_result(unsafe { bindings::misc_register(misc) })?;
        // INVARIANT: registered just above; `Pin` keeps `inner` in place.
        Ok(Self { inner })
    }
}

impl<T: FileOps> Drop for MiscDevice<T> {
    fn drop(&mut self) {
        // SAFETY: registered by `register` (the type invariant). No file is
        // open: each would hold a reference on the module being unloaded.
        unsafe { bindings::misc_deregister(self.inner.misc.get()) };
    }
}

/// `file_operations.unlocked_ioctl` of every [`MiscDevice<T>`].
///
/// # Safety
///
/// Called by the VFS on a file opened through a registered [`MiscDevice<T>`].
unsafe extern "C" fn ioctl_callback<T: FileOps>(
    file: *mut bindings::file,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    // SAFETY: `misc_open` set `private_data` to our `miscdevice` before any
    // other call on the file, and the open file keeps the module, and so the
    // `Inner<T>` that contains it, alive.
    let inner = unsafe {
        let misc = (*file).private_data.cast::<bindings::miscdevice>();
        &*kernel::container_of!(misc.cast::<Opaque<bindings::miscdevice>>(), Inner<T>, misc)
    };
    match inner.handler.ioctl(cmd, arg) {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}
