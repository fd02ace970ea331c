// SPDX-License-Identifier: GPL-2.0

//! Storage of the module parameters and the callback that validates every
//! value written to them.
//!
//! The C shim registers each parameter with `module_param_cb`, pointing at a
//! static below and at `blksnap_param_set`. A value is checked against its
//! range (`crate::params`) before it is stored, so an out-of-range value makes
//! `insmod` fail with `EINVAL`, and a sysfs write of one is refused.
//!
//! Locking: the kernel serializes writes (the module's parameter lock); each
//! value is an atomic `int` read with relaxed loads, and [`current`] copies
//! them all for a caller that needs a consistent set.

use super::bindings;
use crate::params::{self, Params};
use core::sync::atomic::{AtomicI32, Ordering};
use kernel::{
    ffi::{c_char, c_int},
    prelude::*,
    str::CStr,
};

macro_rules! storage {
    ($($field:ident => $symbol:ident,)*) => {
        $(
            /// The value of the module parameter of the same name; the C shim
            /// registers its address.
            #[no_mangle]
            #[allow(non_upper_case_globals)]
            static $symbol: AtomicI32 = AtomicI32::new(Params::DEFAULT.$field);
        )*

        /// A copy of every parameter's current value.
        pub(crate) fn current() -> Params {
            Params { $($field: $symbol.load(Ordering::Relaxed),)* }
        }
    };
}

storage! {
    tracking_block_minimum_shift => blksnap_param_tracking_block_minimum_shift,
    tracking_block_maximum_shift => blksnap_param_tracking_block_maximum_shift,
    tracking_block_maximum_count => blksnap_param_tracking_block_maximum_count,
    chunk_minimum_shift => blksnap_param_chunk_minimum_shift,
    chunk_maximum_shift => blksnap_param_chunk_maximum_shift,
    chunk_maximum_count => blksnap_param_chunk_maximum_count,
    chunk_maximum_in_cache => blksnap_param_chunk_maximum_in_cache,
    free_diff_buffer_pool_size => blksnap_param_free_diff_buffer_pool_size,
    diff_storage_minimum => blksnap_param_diff_storage_minimum,
}

/// `kernel_param_ops.set` of every parameter: parses, range-checks, stores.
///
/// # Safety
///
/// Called by the kernel's parameter code with a NUL-terminated `val` and a
/// `kp` registered by the C shim, whose `arg` points at one of the statics
/// above.
#[no_mangle]
unsafe extern "C" fn blksnap_param_set(
    val: *const c_char,
    kp: *const bindings::kernel_param,
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
    if let Err(e) = params::check_value(name, value) {
        pr_err!("parameter {}\n", format_args!("{e}"));
        return EINVAL.to_errno();
    }
    // SAFETY: `arg` points at one of the `AtomicI32` statics above.
    let slot = unsafe { &*(*kp).__bindgen_anon_1.arg.cast::<AtomicI32>() };
    slot.store(value, Ordering::Relaxed);
    0
}
