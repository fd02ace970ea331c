# SPDX-License-Identifier: GPL-2.0
#
# Out-of-tree build of blksnap.ko.
#
#   make                         build against the cached test kernel
#   make KDIR=/path/to/build     build against your own Rust-enabled kernel tree
#   make modules_install         install into /lib/modules/<release>/updates
#   make clean
#   make CLIPPY=0                build without clippy
#
# Kernel make runs with the kernel's own Rust toolchain settings; scripts/common.sh
# holds them (clang/LLVM, Debian's rustc with its core sources, bindgen).

ROOT := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
KDIR ?= $(shell $(ROOT)scripts/kernel.sh)
KMAKE_ARGS := $(shell bash -c 'source $(ROOT)scripts/common.sh && kmake_args')
KMAKE_PATH := $(shell bash -c 'source $(ROOT)scripts/common.sh && echo $$PATH')
# Lint the module with the kernel's clippy settings when Debian's clippy for
# the kernel's rustc is installed (scripts/deps.sh installs it); lints are
# errors like warnings. CLIPPY=0 turns it off.
CLIPPY_DRIVER ?= /usr/bin/clippy-driver
ifneq ($(CLIPPY),0)
ifneq ($(wildcard $(CLIPPY_DRIVER)),)
KMAKE_ARGS += CLIPPY=1 CLIPPY_DRIVER=$(CLIPPY_DRIVER)
endif
endif

all: modules

modules modules_install clean:
	PATH="$(KMAKE_PATH)" $(MAKE) -C $(KDIR) M=$(ROOT:%/=%) $(KMAKE_ARGS) $@

.PHONY: all modules modules_install clean
