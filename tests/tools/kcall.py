#!/usr/bin/python3
"""Raw system calls for the tests, independent of the project's own code.

    kcall.py version [--dev PATH]
        VERSION ioctl (0x40085600); prints "version=MAJOR.MINOR.REVISION.BUILD"
    kcall.py ioctl CMD [--dev PATH] [--size N | --addr ADDR]
        any ioctl number; the argument is a zeroed buffer of N bytes (default:
        the size encoded in CMD) or the raw address ADDR; prints "ret=R data=HEX"
    kcall.py open PATH [--flags rdonly|wronly|rdwr]
    kcall.py write PATH DATA
        one write(2) of DATA (sysfs parameters)
    kcall.py finit_module PATH [PARAMS]
        loads a module with parameters, as insmod does

Exit status 0 on success. When the system call under test fails, prints
"errno=NAME" on stdout and exits 1. When opening the device before an ioctl
fails, prints "open-errno=NAME" and exits 3 (so it is never mistaken for the
ioctl's own error). Usage errors exit 2.
"""

import argparse
import ctypes
import errno
import os
import struct
import sys

IOCTL_BLK_SNAP_VERSION = 0x40085600
SYS_FINIT_MODULE = 313  # x86_64

libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int
libc.syscall.restype = ctypes.c_long


def fail(err, code=1, what="errno"):
    print(f"{what}={errno.errorcode.get(err, str(err))}")
    print(f"kcall: {os.strerror(err)}", file=sys.stderr)
    sys.exit(code)


def open_dev(path, flags=os.O_RDWR):
    try:
        return os.open(path, flags)
    except OSError as e:
        fail(e.errno, 3, "open-errno")


def ioctl(fd, cmd, arg):
    ret = libc.ioctl(fd, cmd, arg)
    if ret < 0:
        fail(ctypes.get_errno())
    return ret


def cmd_version(args):
    fd = open_dev(args.dev)
    buf = ctypes.create_string_buffer(8)
    ioctl(fd, IOCTL_BLK_SNAP_VERSION, ctypes.addressof(buf))
    major, minor, revision, build = struct.unpack("<4H", buf.raw)
    print(f"version={major}.{minor}.{revision}.{build}")


def cmd_ioctl(args):
    cmd = int(args.cmd, 0)
    fd = open_dev(args.dev)
    if args.addr is not None:
        ret = ioctl(fd, cmd, int(args.addr, 0))
        print(f"ret={ret}")
        return
    size = args.size if args.size is not None else (cmd >> 16) & 0x3FFF
    buf = ctypes.create_string_buffer(max(size, 1))
    ret = ioctl(fd, cmd, ctypes.addressof(buf))
    print(f"ret={ret} data={buf.raw[:size].hex()}")


def cmd_open(args):
    flags = {"rdonly": os.O_RDONLY, "wronly": os.O_WRONLY, "rdwr": os.O_RDWR}[args.flags]
    try:
        fd = os.open(args.path, flags)
    except OSError as e:
        fail(e.errno)
    os.close(fd)
    print("opened")


def cmd_write(args):
    try:
        fd = os.open(args.path, os.O_WRONLY)
    except OSError as e:
        fail(e.errno, 3, "open-errno")
    try:
        n = os.write(fd, args.data.encode())
    except OSError as e:
        fail(e.errno)
    print(f"wrote={n}")


def cmd_finit_module(args):
    try:
        fd = os.open(args.path, os.O_RDONLY)
    except OSError as e:
        fail(e.errno, 3, "open-errno")
    ret = libc.syscall(
        ctypes.c_long(SYS_FINIT_MODULE),
        ctypes.c_int(fd),
        ctypes.c_char_p(args.params.encode()),
        ctypes.c_int(0),
    )
    if ret < 0:
        fail(ctypes.get_errno())
    print("loaded")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="op", required=True)
    s = sub.add_parser("version")
    s.add_argument("--dev", default="/dev/blksnap")
    s.set_defaults(func=cmd_version)
    s = sub.add_parser("ioctl")
    s.add_argument("cmd")
    s.add_argument("--dev", default="/dev/blksnap")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--size", type=int)
    g.add_argument("--addr")
    s.set_defaults(func=cmd_ioctl)
    s = sub.add_parser("open")
    s.add_argument("path")
    s.add_argument("--flags", default="rdwr", choices=["rdonly", "wronly", "rdwr"])
    s.set_defaults(func=cmd_open)
    s = sub.add_parser("write")
    s.add_argument("path")
    s.add_argument("data")
    s.set_defaults(func=cmd_write)
    s = sub.add_parser("finit_module")
    s.add_argument("path")
    s.add_argument("params", nargs="?", default="")
    s.set_defaults(func=cmd_finit_module)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
