"""The digest of a file tree: one hex string that changes iff the tree's content does.

Covers, for every entry below the root (the root itself is left out, its mode depends on where
the tree was unpacked): the relative path, the type, the permission bits (incl. setuid/setgid/
sticky), and for regular files the size and SHA-256 of the content, for symlinks the target.
Not covered: owners, timestamps, directory sizes, xattrs — they differ between a tarball and a
SquashFS of the same image without the image being different. Hard links count as regular files.

STANDARD LIBRARY ONLY: the distribution code copies this file onto the nodes and runs it there with
the node's python3 (``python3 treedigest.py DIR`` prints a JSON object).
"""

import hashlib
import json
import os
import stat
import sys
from typing import NamedTuple

DIGEST_FORMAT = "shoal-tree-v1"
_CHUNK = 1 << 20


class TreeDigest(NamedTuple):  # not a dataclass: the node agent runs this on Python 3.6
    digest: "str"  # sha256 over the records, hex
    file_count: "int"  # regular files
    bytes: "int"  # sum of regular file sizes
    entries: "int"  # all entries (files, dirs, links, others)
    format: "str" = DIGEST_FORMAT


def file_sha256(path: "str | bytes | os.PathLike[str]") -> "str":
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def entry_record(rel: "bytes", st: "os.stat_result", full: "bytes") -> "bytes":
    """The line one entry contributes; rel is the '/'-separated path below the root, as bytes."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return b"f %o %d %s %s\n" % (mode, st.st_size, file_sha256(full).encode(), rel)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        return b"l %o %s -> %s\n" % (mode, rel, target)
    if stat.S_ISDIR(st.st_mode):
        return b"d %o %s\n" % (mode, rel)
    kind = b"c" if stat.S_ISCHR(st.st_mode) else b"b" if stat.S_ISBLK(st.st_mode) else b"o"
    return b"%s %o %s\n" % (kind, mode, rel)


def iter_records(root: "str | os.PathLike[str]") -> "list[tuple[bytes, os.stat_result, bytes]]":
    """(relative path, lstat, full path) of every entry, in a fixed order (sorted by bytes)."""
    out: "list[tuple[bytes, os.stat_result, bytes]]" = []
    stack: "list[tuple[bytes, bytes]]" = [(os.fsencode(os.fspath(root)), b"")]
    while stack:
        dir_full, dir_rel = stack.pop()
        with os.scandir(dir_full) as it:
            names = sorted(e.name for e in it)
        subdirs: "list[tuple[bytes, bytes]]" = []
        for name in names:
            full = os.path.join(dir_full, name)
            rel = dir_rel + b"/" + name if dir_rel else name
            st = os.lstat(full)
            out.append((rel, st, full))
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((full, rel))
        stack.extend(reversed(subdirs))
    out.sort(key=lambda r: r[0])
    return out


def tree_digest(root: "str | os.PathLike[str]") -> "TreeDigest":
    if not os.path.isdir(root):
        raise NotADirectoryError(os.fspath(root))
    h = hashlib.sha256(DIGEST_FORMAT.encode() + b"\n")
    files = size = entries = 0
    for rel, st, full in iter_records(root):
        try:
            h.update(entry_record(rel, st, full))
        except OSError as exc:
            if exc.filename is None:  # a read error (EIO of a damaged image) names no file
                exc.filename = os.fsdecode(full)
            raise
        entries += 1
        if stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
    return TreeDigest(h.hexdigest(), files, size, entries)


def main(argv: "list[str]") -> "int":
    if len(argv) != 2:
        print("usage: treedigest.py DIR", file=sys.stderr)
        return 2
    try:
        result = tree_digest(argv[1])
    except OSError as exc:
        print(f"treedigest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result._asdict(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
