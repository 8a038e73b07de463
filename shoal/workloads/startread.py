"""startread: an application start-up's I/O: list the image, open and read only a few % of its files.

STANDARD LIBRARY ONLY, Python 3.6: runs inside containers with a plain python3. Published traces of
container start-up show programs touching ~6 % of their image's data; catwalk (every byte) and
statwalk (every inode) are the two extremes, this is the partial read between them. It walks the
directories (readdir only: what a dynamic linker's or an interpreter's path search costs) and reads
in full the regular files whose path hashes into the chosen fraction (default 3 %), so the same
files are read on every node, every run, every method. Prints one JSON line:
{"workload": "startread", "root": ..., "files_total": ..., "files": ..., "bytes": ...,
 "fraction": ..., "dirs": ..., "errors": ..., "seconds": ...}.
"""

import argparse
import json
import os
import stat
import sys
import time
import zlib
from typing import List, Optional, Tuple

DEFAULT_SKIP = ("/proc", "/sys", "/dev", "/tmp", "/run")
DEFAULT_FRACTION = 0.03
CHUNK = 1 << 20


def chosen(rel: str, fraction: float) -> bool:
    """Whether the file at REL (path relative to the root) is one of the FRACTION read."""
    return zlib.crc32(rel.encode("utf-8", "surrogateescape")) % 10000 < fraction * 10000


def walk(root: str, skip: Tuple[str, ...]) -> Tuple[List[str], int, int]:
    """(regular files under root, directories, errors); readdir only, symlinks not followed,
    the walk stays on root's file system."""
    root = os.path.abspath(root)
    skipped = {os.path.normpath(os.path.join(root, s.lstrip("/"))) for s in skip}
    root_dev = os.lstat(root).st_dev
    files = []  # type: List[str]
    dirs = errors = 0
    stack = [root]
    while stack:
        top = stack.pop()
        dirs += 1
        try:
            entries = list(os.scandir(top))
        except OSError:
            errors += 1
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path in skipped:
                        continue
                    if entry.stat(follow_symlinks=False).st_dev != root_dev:
                        continue
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.path)
            except OSError:
                errors += 1
    return files, dirs, errors


def read_all(path: str, buf: bytearray) -> int:
    total = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                return total
            total += n
    finally:
        os.close(fd)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="read a few % of the files under ROOT")
    ap.add_argument("root", nargs="?", default="/")
    ap.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                    help="fraction of the files to read (default %(default)s)")
    ap.add_argument("--skip", action="append", default=None,
                    help="path under ROOT to skip (repeatable; default: " + " ".join(DEFAULT_SKIP) + ")")
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        ap.error("--fraction must be in (0, 1]")
    start = time.monotonic()
    root = os.path.abspath(args.root)
    files, dirs, errors = walk(root, tuple(args.skip) if args.skip is not None else DEFAULT_SKIP)
    buf = bytearray(CHUNK)
    nbytes = nfiles = 0
    for path in files:
        if not chosen(os.path.relpath(path, root), args.fraction):
            continue
        try:
            nbytes += read_all(path, buf)
            nfiles += 1
        except OSError:
            errors += 1
    print(json.dumps({
        "workload": "startread", "root": root, "files_total": len(files), "files": nfiles,
        "bytes": nbytes, "fraction": args.fraction, "dirs": dirs, "errors": errors,
        "seconds": round(time.monotonic() - start, 6),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
