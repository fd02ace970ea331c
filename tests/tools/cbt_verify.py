#!/usr/bin/python3
"""Checks that a CBT map covers the data that really changed.

    cbt_verify.py hash DEV BLOCK_SIZE OUT
        writes one digest per BLOCK_SIZE block of DEV to OUT (read with
        O_DIRECT, so the page cache cannot hide what is on the device)
    cbt_verify.py covers BEFORE AFTER MAP SNAP
        BEFORE and AFTER are hash files of the same device, MAP the readable
        CBT table read after AFTER was taken (bsctl.py map --out). Every block
        whose digest differs must hold at least SNAP in MAP.

Prints "changed=N marked=N blocks=N"; exit 1 (with the first missed blocks)
if a changed block is not marked, 2 on usage errors.
"""

import hashlib
import mmap
import os
import sys


def cmd_hash(dev, bs, out):
    bs = int(bs)
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    size = os.lseek(fd, 0, os.SEEK_END)
    buf = mmap.mmap(-1, bs)
    digests = []
    off = 0
    try:
        while off < size:
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                break
            digests.append(hashlib.blake2b(buf[:n], digest_size=12).hexdigest())
            off += n
    finally:
        os.close(fd)
    with open(out, "w") as f:
        f.write("\n".join(digests) + "\n")
    print(f"blocks={len(digests)}")


def cmd_covers(before, after, mapfile, snap):
    snap = int(snap)
    a = open(before).read().split()
    b = open(after).read().split()
    m = open(mapfile, "rb").read()
    if len(a) != len(b) or len(a) != len(m):
        print(f"lengths differ: before {len(a)} after {len(b)} map {len(m)}")
        return 1
    changed = [i for i in range(len(a)) if a[i] != b[i]]
    marked = sum(1 for x in m if x >= snap)
    missed = [i for i in changed if m[i] < snap]
    print(f"changed={len(changed)} marked={marked} blocks={len(m)}")
    if missed:
        print(f"{len(missed)} changed blocks not marked with >= {snap}: " +
              ", ".join(f"{i} (map {m[i]})" for i in missed[:20]))
        return 1
    return 0


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "hash":
        cmd_hash(*sys.argv[2:])
        return 0
    if len(sys.argv) == 6 and sys.argv[1] == "covers":
        return cmd_covers(*sys.argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
