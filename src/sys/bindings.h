/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel APIs blksnap uses that the `kernel` crate of the oldest
 * supported kernel line does not wrap. bindgen turns this header into
 * src/sys/bindings_generated.rs; bindgen_parameters says which items.
 */
#include <linux/bio.h>
#include <linux/blk_types.h>
#include <linux/blkdev.h>
#include <linux/capability.h>
#include <linux/delay.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kstrtox.h>
#include <linux/miscdevice.h>
#include <linux/moduleparam.h>
#include <linux/rcupdate.h>
#include <linux/timekeeping.h>
#include <linux/uuid.h>
#include <linux/xarray.h>
#include <linux/errno.h>

#include "shim.h"
