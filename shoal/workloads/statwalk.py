"""statwalk: lstat every entry under ROOT (metadata-heavy workload).

STANDARD LIBRARY ONLY: runs inside containers with a plain python3. Prints one JSON line:
{"workload": "statwalk", "root": ..., "files": ..., "dirs": ..., "entries": ..., "bytes": ...,
 "errors": ..., "seconds": ...}; "files" counts regular files and "bytes" sums their st_size.

Skips /proc, /sys, /dev, /tmp and /run under ROOT and stays on ROOT's file system by default, for
the same reasons as catwalk (ch-run binds the host's /tmp, which holds the staged image).
"""

import argparse
import json
import os
import stat
import sys
import time

DEFAULT_SKIP = ("/proc", "/sys", "/dev", "/tmp", "/run")


def main(argv: "list[str] | None" = None) -> "int":
    ap = argparse.ArgumentParser(description="stat every file under ROOT")
    ap.add_argument("root", nargs="?", default="/")
    ap.add_argument("--skip", action="append", default=None,
                    help=f"path under ROOT to skip (repeatable; default: {' '.join(DEFAULT_SKIP)})")
    ap.add_argument("--all-devices", action="store_true", help="cross file-system boundaries")
    args = ap.parse_args(argv)
    skip = tuple(args.skip) if args.skip is not None else DEFAULT_SKIP
    root = os.path.abspath(args.root)
    skipped = {os.path.normpath(os.path.join(root, s.lstrip("/"))) for s in skip}
    start = time.monotonic()
    root_dev = os.lstat(root).st_dev
    files = dirs = entries = nbytes = errors = 0
    stack = [root]
    while stack:
        top = stack.pop()
        dirs += 1
        try:
            names = os.listdir(top)
        except OSError:
            errors += 1
            continue
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                errors += 1
                continue
            entries += 1
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if path in skipped or (not args.all_devices and st.st_dev != root_dev):
                    continue
                stack.append(path)
            elif stat.S_ISREG(mode):
                files += 1
                nbytes += st.st_size
    seconds = time.monotonic() - start
    print(json.dumps({
        "workload": "statwalk", "root": root, "files": files, "dirs": dirs, "entries": entries,
        "bytes": nbytes, "errors": errors, "seconds": round(seconds, 6),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
