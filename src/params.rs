// SPDX-License-Identifier: GPL-2.0

//! Module parameters: their names, the reference defaults, and the ranges
//! blksnap accepts.
//!
//! Pure logic with no kernel types, also compiled on the host for `cargo test`
//! (crates/blksnap-logic). The storage and the kernel's `kernel_param_ops`
//! callback are in `sys::params`, which checks every value written (at
//! `insmod` and through sysfs) with [`check_value`]; module init checks the
//! relations between values with [`Params::check`].
//!
//! Locking: none here; values are plain copies.

use core::fmt;

/// One module parameter: an `int`, mode 0644, as in the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The name `insmod` and `/sys/module/blksnap/parameters/` use.
    pub name: &'static str,
    /// The reference's default.
    pub default: i32,
    /// Smallest accepted value.
    pub min: i32,
    /// Largest accepted value.
    pub max: i32,
}

/// The largest shift for tracking blocks and chunks: 1 GiB.
const MAX_SHIFT: i32 = 30;
/// The largest block or chunk count per device: keeps a change-tracking
/// table at most 256 MiB.
const MAX_COUNT: i32 = 1 << 28;

macro_rules! params {
    ($($(#[$doc:meta])* $field:ident: default $default:expr, range $min:expr, $max:expr;)*) => {
        /// A consistent copy of every parameter's value.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Params {
            $($(#[$doc])* pub $field: i32,)*
        }

        /// Every parameter, in the order [`Params`] lists them.
        pub const SPECS: [Spec; 9] = [
            $(Spec { name: stringify!($field), default: $default, min: $min, max: $max },)*
        ];

        impl Params {
            /// The reference defaults.
            pub const DEFAULT: Params = Params { $($field: $default,)* };

            /// The values as an array in the order of [`SPECS`].
            pub const fn to_array(self) -> [i32; 9] {
                [$(self.$field,)*]
            }

            /// Builds the values from an array in the order of [`SPECS`].
            pub const fn from_array(v: [i32; 9]) -> Params {
                let [$($field,)*] = v;
                Params { $($field,)* }
            }
        }
    };
}

params! {
    /// log2 of the smallest change-tracking block, in bytes.
    tracking_block_minimum_shift: default 16, range 9, MAX_SHIFT;
    /// log2 of the largest change-tracking block, in bytes.
    tracking_block_maximum_shift: default 26, range 9, MAX_SHIFT;
    /// Block count above which the tracking block size doubles.
    tracking_block_maximum_count: default 2_097_152, range 1, MAX_COUNT;
    /// log2 of the smallest copy-on-write chunk, in bytes (at least a page).
    chunk_minimum_shift: default 18, range 12, MAX_SHIFT;
    /// log2 of the largest copy-on-write chunk, in bytes.
    chunk_maximum_shift: default 26, range 12, MAX_SHIFT;
    /// Chunk count above which the chunk size doubles.
    chunk_maximum_count: default 2_097_152, range 1, MAX_COUNT;
    /// Accepted as the reference does (its limit on chunks held in memory
    /// at once); this module does not use it.
    chunk_maximum_in_cache: default 32, range 1, 65_536;
    /// Accepted as the reference does (its pool of preallocated difference
    /// buffers); this module does not use it.
    free_diff_buffer_pool_size: default 128, range 0, 65_536;
    /// Difference storage, in sectors, requested at create and kept free.
    diff_storage_minimum: default 2_097_152, range 8, i32::MAX;
}

/// Why a parameter value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    /// No parameter has this name.
    Unknown,
    /// The value lies outside the parameter's range.
    OutOfRange {
        /// The parameter.
        spec: Spec,
        /// The refused value.
        value: i32,
    },
    /// A minimum is above its maximum.
    Inverted {
        /// The minimum's name.
        min: &'static str,
        /// Its value.
        min_value: i32,
        /// The maximum's name.
        max: &'static str,
        /// Its value.
        max_value: i32,
    },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Unknown => f.write_str("unknown parameter"),
            ParamError::OutOfRange { spec, value } => write!(
                f,
                "{}={} is out of range [{}, {}]",
                spec.name, value, spec.min, spec.max
            ),
            ParamError::Inverted {
                min,
                min_value,
                max,
                max_value,
            } => write!(f, "{min}={min_value} is greater than {max}={max_value}"),
        }
    }
}

/// Finds a parameter by name.
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Checks one value against its parameter's range.
pub fn check_value(name: &str, value: i32) -> Result<&'static Spec, ParamError> {
    let spec = spec(name).ok_or(ParamError::Unknown)?;
    if (spec.min..=spec.max).contains(&value) {
        Ok(spec)
    } else {
        Err(ParamError::OutOfRange { spec: *spec, value })
    }
}

impl Params {
    /// Checks every value's range and that no minimum exceeds its maximum.
    pub fn check(&self) -> Result<(), ParamError> {
        for (spec, value) in SPECS.iter().zip(self.to_array()) {
            check_value(spec.name, value)?;
        }
        let pairs = [
            (
                "tracking_block_minimum_shift",
                self.tracking_block_minimum_shift,
                "tracking_block_maximum_shift",
                self.tracking_block_maximum_shift,
            ),
            (
                "chunk_minimum_shift",
                self.chunk_minimum_shift,
                "chunk_maximum_shift",
                self.chunk_maximum_shift,
            ),
        ];
        for (min, min_value, max, max_value) in pairs {
            if min_value > max_value {
                return Err(ParamError::Inverted {
                    min,
                    min_value,
                    max,
                    max_value,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_ones_and_valid() {
        let d = Params::DEFAULT;
        assert_eq!(d.tracking_block_minimum_shift, 16);
        assert_eq!(d.tracking_block_maximum_shift, 26);
        assert_eq!(d.tracking_block_maximum_count, 2_097_152);
        assert_eq!(d.chunk_minimum_shift, 18);
        assert_eq!(d.chunk_maximum_shift, 26);
        assert_eq!(d.chunk_maximum_count, 2_097_152);
        assert_eq!(d.chunk_maximum_in_cache, 32);
        assert_eq!(d.free_diff_buffer_pool_size, 128);
        assert_eq!(d.diff_storage_minimum, 2_097_152);
        assert_eq!(d.check(), Ok(()));
        for (spec, value) in SPECS.iter().zip(d.to_array()) {
            assert_eq!(spec.default, value, "{}", spec.name);
        }
    }

    #[test]
    fn array_round_trip_keeps_order() {
        let a = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(Params::from_array(a).to_array(), a);
        assert_eq!(Params::from_array(a).chunk_minimum_shift, 4);
    }

    #[test]
    fn ranges_are_inclusive() {
        for spec in &SPECS {
            assert!(check_value(spec.name, spec.min).is_ok());
            assert!(check_value(spec.name, spec.max).is_ok());
            if spec.min > i32::MIN {
                assert!(matches!(
                    check_value(spec.name, spec.min - 1),
                    Err(ParamError::OutOfRange { .. })
                ));
            }
            if spec.max < i32::MAX {
                assert!(check_value(spec.name, spec.max + 1).is_err());
            }
            assert!(check_value(spec.name, -1).is_err());
        }
    }

    #[test]
    fn unknown_name_is_refused() {
        assert_eq!(check_value("chunk_size", 1), Err(ParamError::Unknown));
    }

    #[test]
    fn inverted_minimum_and_maximum_are_refused() {
        let p = Params {
            chunk_minimum_shift: 20,
            chunk_maximum_shift: 19,
            ..Params::DEFAULT
        };
        let e = p.check().unwrap_err();
        assert!(matches!(e, ParamError::Inverted { .. }));
        assert_eq!(
            format!("{e}"),
            "chunk_minimum_shift=20 is greater than chunk_maximum_shift=19"
        );
        let p = Params {
            tracking_block_minimum_shift: 27,
            ..Params::DEFAULT
        };
        assert!(p.check().is_err());
    }

    #[test]
    fn out_of_range_message_names_the_range() {
        let e = check_value("chunk_minimum_shift", 3).unwrap_err();
        assert_eq!(
            format!("{e}"),
            "chunk_minimum_shift=3 is out of range [12, 30]"
        );
    }
}
