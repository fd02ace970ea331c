#!/usr/bin/env python3
"""Writes the first (full) backup of an all-zero device (dm-zero) into a
backup directory without reading the device, for the incremental backups of
the benchmark's backup scenario (scripts/bench.sh, scenario 7b).

A real full backup of a 64 GiB device reads all of it through the page
cache, about 15 minutes under QEMU TCG. The files of that backup are known
in advance when the device holds only zeros: a sparse image, the hash of a
zero block for every block, and the CBT state of the snapshot it was read
from. This takes the format from SEED, a real full backup of a small dm-zero
device with the same CBT block size made by `blksnap backup`, and writes
the same files for DEVICE with the CBT state given (that of a snapshot of
DEVICE taken and destroyed just before, as `blksnap backup` records it).

  scripts/bench-backup-seed.py --seed SEED_DIR --dir DIR --device PATH
      --generation UUID --snap-number N --block-size BYTES --capacity BYTES

The next `blksnap backup` of DEVICE into DIR is then an incremental one.
"""
import argparse
import json
import os
import sys
import time


def fail(msg):
    print(f"bench-backup-seed: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--generation", required=True)
    ap.add_argument("--snap-number", type=int, required=True)
    ap.add_argument("--block-size", type=int, required=True)
    ap.add_argument("--capacity", type=int, required=True)
    a = ap.parse_args()

    with open(os.path.join(a.seed, "chain.json")) as f:
        chain = json.load(f)
    if len(chain.get("devices", [])) != 1 or len(chain["devices"][0].get("backups", [])) != 1:
        fail(f"{a.seed} should hold exactly one backup of one device")
    seed = chain["devices"][0]
    entry = seed["backups"][0]
    if entry.get("kind") != "full":
        fail(f"the backup in {a.seed} is not a full one")
    if seed["block_size"] != a.block_size:
        fail(f"the seed's block size {seed['block_size']} is not {a.block_size}")
    bs = a.block_size
    with open(os.path.join(a.seed, entry["sums"]), "rb") as f:
        sums = f.read()
    if len(sums) < 8 or len(sums) % 8 or sums != sums[:8] * (len(sums) // 8):
        fail("the seed's block hashes are not all the same (not an all-zero device?)")
    if seed["capacity"] % bs:
        fail("the seed's capacity is not a whole number of blocks")

    rdev = os.stat(a.device).st_rdev
    dev_id = f"{os.major(rdev)}:{os.minor(rdev)}"
    name = None
    with open(f"/sys/dev/block/{dev_id}/uevent") as f:
        for line in f:
            if line.startswith("DEVNAME="):
                name = line.strip().split("=", 1)[1].replace("/", "_")
    if not name:
        fail(f"no device name for {dev_id}")
    blocks = (a.capacity + bs - 1) // bs
    old = seed["name"]

    def rename(path):
        if not path.startswith(old + "."):
            fail(f"unexpected file name {path} in the seed")
        return name + path[len(old):]

    new_entry = dict(entry)
    new_entry.update(file=rename(entry["file"]), sums=rename(entry["sums"]), time=int(time.time()),
                     generation_id=a.generation, snap_number=a.snap_number, blocks=blocks,
                     bytes=a.capacity)
    dc = dict(seed)
    dc.update(name=name, dev_id=dev_id, block_size=bs, capacity=a.capacity,
              generation_id=a.generation, snap_number=a.snap_number, backups=[new_entry])
    out = dict(chain)
    out.update(next_seq=entry["seq"] + 1, devices=[dc])

    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, new_entry["file"]), "wb") as f:
        f.truncate(a.capacity)  # a sparse image: every block is zero
    with open(os.path.join(a.dir, new_entry["sums"]), "wb") as f:
        f.write(sums[:8] * blocks)
    with open(os.path.join(a.dir, "chain.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"seeded {a.dir}: {name} ({dev_id}), {blocks} blocks of {bs} bytes")


if __name__ == "__main__":
    main()
