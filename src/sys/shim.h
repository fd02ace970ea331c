/* SPDX-License-Identifier: GPL-2.0 */
/* What src/sys/shim.c and the Rust side export to each other. */
#ifndef BLKSNAP_SHIM_H
#define BLKSNAP_SHIM_H

struct kernel_param;

/* Rust: validates and stores a module parameter (kernel_param_ops.set). */
int blksnap_param_set(const char *val, const struct kernel_param *kp);

#endif
