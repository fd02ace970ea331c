// SPDX-License-Identifier: GPL-2.0

//! Module parameters of type `int` whose every write is checked first:
//! [`int_params!`] defines their storage and the `set` callback, [`set`]
//! does the parsing and the storing.
//!
//! The C shim registers each parameter with `module_param_cb`, pointing at
//! one of the statics the macro defines and at `blksnap_param_set`. A value
//! is checked (by the check the macro is given) before it is stored, so an
//! out-of-range value makes `insmod` fail with `EINVAL`, and a sysfs write
//! of one is refused.
//!
//! Locking: the kernel serializes writes (the module's parameter lock); each
//! value is an atomic `int` read with relaxed loads, and the generated
//! `current` copies them all for a caller that needs a consistent set.

use super::bindings;
use core::{
    fmt::Display,
    sync::atomic::{AtomicI32, Ordering},
};
use kernel::{
    ffi::{c_char, c_int},
    prelude::*,
    str::CStr,
};

/// Defines the storage of a set of `int` module parameters and the `set`
/// callback the C shim registers for each of them (`blksnap_param_set`).
///
/// `$params` is a struct of `i32` fields with a `DEFAULT` constant; each
/// field gets a static `$symbol` (the name the C shim registers) holding
/// its value, and `$params` gets `current()`, a copy of every value. Every
/// write is checked by `$check(name, value)` first and refused with
/// `EINVAL` (and its error logged) if that fails.
macro_rules! int_params {
    ($params:ty, check: $check:path, { $($field:ident => $symbol:ident,)* }) => {
        $(
            /// The value of the module parameter of the same name; the C shim
            /// registers its address.
            #[no_mangle]
            static $symbol: core::sync::atomic::AtomicI32 =
                core::sync::atomic::AtomicI32::new(<$params>::DEFAULT.$field);
        )*

        impl $params {
            /// A copy of every parameter's current value.
            pub(crate) fn current() -> Self {
                Self { $($field: $symbol.load(core::sync::atomic::Ordering::Relaxed),)* }
            }
        }

        /// `kernel_param_ops.set` of every parameter: parses, checks, stores.
        ///
        /// # Safety
        ///
        /// As for [`set`](crate::sys::params::set), with `kp.arg` one of the
        /// statics above.
        #[no_mangle]
        unsafe extern "C" fn blksnap_param_set(
            val: *const kernel::ffi::c_char,
            kp: *const $crate::sys::params::RawParam,
        ) -> kernel::ffi::c_int {
            // SAFETY: the kernel's parameter code calls this as `set` of a
            // parameter the C shim registered with one of the statics above.
            unsafe { $crate::sys::params::set(val, kp, $check) }
        }
    };
}
pub(crate) use int_params;

/// The kernel's `struct kernel_param`, as the `set` callback gets it.
pub(crate) type RawParam = bindings::kernel_param;

/// Parses `val` as an `int`, checks it with `check` (given the parameter's
/// name) and stores it; returns 0, or `-EINVAL` (logged) for a value that is
/// no integer or fails the check.
///
/// # Safety
///
/// `val` is NUL-terminated and `kp` a valid parameter whose `name` is a
/// static C string and whose `arg` points at an `AtomicI32` that lives for
/// as long as the parameter is registered.
pub(crate) unsafe fn set<R, E: Display>(
    val: *const c_char,
    kp: *const bindings::kernel_param,
    check: impl FnOnce(&str, i32) -> core::result::Result<R, E>,
) -> c_int {
    // SAFETY: `kp` is valid for the call and its `name` is a static C string
    // (the function's safety requirements).
    let name = unsafe { CStr::from_char_ptr((*kp).name) };
    let name = name.to_str().unwrap_or("?");
    let mut value: c_int = 0;
    // SAFETY: `val` is NUL-terminated and `value` is a valid `int` to write.
    if unsafe { bindings::kstrtoint(val, 0, &mut value) } != 0 {
        pr_err!("parameter {name}: not an integer\n");
        return EINVAL.to_errno();
    }
    if let Err(e) = check(name, value) {
        pr_err!("parameter {}\n", format_args!("{e}"));
        return EINVAL.to_errno();
    }
    // SAFETY: `arg` points at a live `AtomicI32` (the function's safety
    // requirements).
    let slot = unsafe { &*(*kp).__bindgen_anon_1.arg.cast::<AtomicI32>() };
    slot.store(value, Ordering::Relaxed);
    0
}
