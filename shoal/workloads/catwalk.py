"""catwalk: read every byte of every regular file under ROOT (data-heavy workload).

STANDARD LIBRARY ONLY: runs inside containers with a plain python3. Prints one JSON line:
{"workload": "catwalk", "root": ..., "files": ..., "dirs": ..., "bytes": ..., "errors": ...,
 "seconds": ...}.

By default the walk stays on ROOT's file system and skips /proc, /sys, /dev, /tmp and /run (under
ROOT): ch-run binds the host's /tmp into the container, which holds the staged image itself, and the
kernel file systems are not part of the image.
"""

import argparse
import json
import os
import stat
import sys
import time

DEFAULT_SKIP = ("/proc", "/sys", "/dev", "/tmp", "/run")
CHUNK = 1 << 20


def walk(root: "str", skip: "tuple[str, ...]", xdev: "bool") -> "tuple[list[str], int, int]":
    """Regular files under root (no symlinks followed), the number of directories, errors."""
    root = os.path.abspath(root)
    skipped = {os.path.normpath(os.path.join(root, s.lstrip("/"))) for s in skip}
    root_dev = os.lstat(root).st_dev
    files: "list[str]" = []
    dirs = 0
    errors = 0
    stack = [root]
    while stack:
        top = stack.pop()
        dirs += 1
        try:
            it = os.scandir(top)
        except OSError:
            errors += 1
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path in skipped:
                            continue
                        if xdev and entry.stat(follow_symlinks=False).st_dev != root_dev:
                            continue
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        files.append(entry.path)
                except OSError:
                    errors += 1
    return files, dirs, errors


def read_all(path: "str", buf: "bytearray") -> "int":
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        while True:
            n = os.readv(fd, [view])
            if n == 0:
                return total
            total += n
    finally:
        os.close(fd)


def main(argv: "list[str] | None" = None) -> "int":
    ap = argparse.ArgumentParser(description="read every byte of every file under ROOT")
    ap.add_argument("root", nargs="?", default="/")
    ap.add_argument("--skip", action="append", default=None,
                    help=f"path under ROOT to skip (repeatable; default: {' '.join(DEFAULT_SKIP)})")
    ap.add_argument("--all-devices", action="store_true", help="cross file-system boundaries")
    args = ap.parse_args(argv)
    skip = tuple(args.skip) if args.skip is not None else DEFAULT_SKIP
    start = time.monotonic()
    files, dirs, errors = walk(args.root, skip, not args.all_devices)
    buf = bytearray(CHUNK)
    nbytes = 0
    nfiles = 0
    for path in files:
        try:
            nbytes += read_all(path, buf)
            nfiles += 1
        except OSError:
            errors += 1
    seconds = time.monotonic() - start
    print(json.dumps({
        "workload": "catwalk", "root": os.path.abspath(args.root), "files": nfiles,
        "dirs": dirs, "bytes": nbytes, "errors": errors, "seconds": round(seconds, 6),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
