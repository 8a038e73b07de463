"""File-system helpers every subsystem uses: cross-process locks, free-space checks, tree sizes,
mount-aware tree removal, and writing a file with its owner and mode in one call.

A leaf module (it imports only the runner and the error tree), so images, cluster and staging can
all use it without importing each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from shoal.errors import ImageError, ShoalError
from shoal.runner import run


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Exclusive lock so two shoal processes never build the same thing at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def require_space(where: Path, need: int, what: str = "an image build") -> None:
    """Fail early, naming the place and the amount, instead of dying half-way with ENOSPC."""
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ImageError(
            f"no space left under {probe}: {what} needs about {need >> 20} MB, {free >> 20} MB free",
            "free space there or set SHOAL_CACHE to a larger file system",
        )


def dir_size(root: Path) -> int:
    """Bytes of regular files under root (hard links counted once), symlinks not followed."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total


def remove_tree(tree: Path) -> None:
    """rmtree that first unmounts what a killed process (debootstrap: proc, sys) left mounted inside."""
    umount_under(tree)
    shutil.rmtree(tree, ignore_errors=True)


def umount_under(tree: Path) -> None:
    prefix = str(tree.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [ln.split()[1] for ln in lines if len(ln.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        run(["umount", "-l", point], check=False, timeout=60)


def write_file(path: Path, text: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    """Write path (parents created) and set its mode and owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def makedirs_nofollow(base: Path, rel: str, mode: int = 0o755) -> Path:
    """BASE/REL made by root without following anything a user could have planted.

    For root writing below a world-writable directory (a cluster's /pfs): each component is
    created or opened relative to its parent's descriptor with O_NOFOLLOW, and an existing one
    must be a directory root owns that no one else can write, else ShoalError names it (a user's
    symlink ``/pfs/shoal-study -> /etc`` would otherwise have root create directories in /etc).
    """
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    path = base
    try:
        for comp in [c for c in rel.split("/") if c]:
            if comp in (".", ".."):
                raise ShoalError(f"{base}/{rel}: no . or .. components", None)
            path = path / comp
            with contextlib.suppress(FileExistsError):
                os.mkdir(comp, mode, dir_fd=fd)
            try:
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise ShoalError(f"{path} is not a directory root made ({exc.strerror})",
                                 f"someone replaced it (a symlink?): remove {path} and retry") from None
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise ShoalError(f"{path} belongs to uid {st.st_uid} (mode {st.st_mode & 0o7777:o}), "
                                 "not to root alone", f"remove {path} and retry")
    finally:
        os.close(fd)
    return path
