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

# What was built against one kernel tree is wrong for another (struct layouts
# follow the config, and Kbuild's command lines look the same for every
# tree), so building against a different tree or config cleans first.
KDIR_ID := $(shell cd '$(KDIR)' && { pwd -P; cat .config; } | md5sum | cut -c1-32)
KDIR_STAMP := $(ROOT).blksnap-kdir
KBUILD = PATH="$(KMAKE_PATH)" $(MAKE) -C $(KDIR) M=$(ROOT:%/=%) $(KMAKE_ARGS)

all: modules

modules:
	@if [ "$$(cat $(KDIR_STAMP) 2>/dev/null)" != "$(KDIR_ID)" ]; then \
		$(KBUILD) clean && echo $(KDIR_ID) >$(KDIR_STAMP); fi
	$(KBUILD) $@

modules_install:
	$(KBUILD) $@

clean:
	$(KBUILD) $@
	rm -f $(KDIR_STAMP)

.PHONY: all modules modules_install clean
