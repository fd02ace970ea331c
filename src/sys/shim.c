// SPDX-License-Identifier: GPL-2.0
/*
 * The few things Rust cannot say to this kernel: module_param macros.
 * Storage, defaults and validation of the parameters live in Rust
 * (src/params.rs, src/sys/params.rs); this only registers them.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "shim.h"

static const struct kernel_param_ops blksnap_param_ops = {
	.set = blksnap_param_set,
	.get = param_get_int,
};

#define BLKSNAP_PARAM(name, desc)                                              \
	extern int blksnap_param_##name;                                       \
	module_param_cb(name, &blksnap_param_ops, &blksnap_param_##name,       \
			0644);                                                 \
	__MODULE_PARM_TYPE(name, "int");                                       \
	MODULE_PARM_DESC(name, desc)

BLKSNAP_PARAM(tracking_block_minimum_shift,
	      "The power of 2 for minimum tracking block size");
BLKSNAP_PARAM(tracking_block_maximum_shift,
	      "The power of 2 for maximum tracking block size");
BLKSNAP_PARAM(tracking_block_maximum_count,
	      "The maximum number of tracking blocks");
BLKSNAP_PARAM(chunk_minimum_shift,
	      "The power of 2 for minimum snapshot chunk size");
BLKSNAP_PARAM(chunk_maximum_shift,
	      "The power of 2 for maximum snapshot chunk size");
BLKSNAP_PARAM(chunk_maximum_count,
	      "The maximum number of snapshot chunks for a device");
BLKSNAP_PARAM(chunk_maximum_in_cache,
	      "The maximum number of chunks kept in memory");
BLKSNAP_PARAM(free_diff_buffer_pool_size,
	      "The size of the pool of preallocated difference buffers");
BLKSNAP_PARAM(diff_storage_minimum,
	      "Difference storage requested at create and kept free (sectors)");
