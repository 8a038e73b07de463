"""The image store: exported images plus a versioned manifest, one directory per image.

    store_root()/NAME/manifest.json     (format_version, name, files {filename: sha256}, sizes,
                                         exports {format: filename}, tree_digest, bytes,
                                         file_count, inputs_hash, created)
    store_root()/NAME/NAME.tar.gz       gzip'd tar of the tree (numeric owners)
    store_root()/NAME/NAME.sqfs         SquashFS (gzip, what both the kernel and squashfuse read)
    store_root()/NAME/dir/              the unpacked tree

An entry is assembled in ``store_root()/.tmp-NAME-PID`` and renamed into place, so a reader never
sees a half-written entry; a crashed export leaves only a .tmp directory, removed by the next one.
Every virtual cluster sees the store at /pfs/store (shoal.paths.CLUSTER_STORE_PATH).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from shoal import names, paths
from shoal.errors import CommandError, ImageError
from shoal.fsutil import dir_size, locked
from shoal.images.progress import step
from shoal.images.treedigest import file_sha256, tree_digest
from shoal.runner import run

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXPORT_TIMEOUT = 3600.0


class ExportFormat(StrEnum):
    TAR_GZ = "tar.gz"
    SQUASHFS = "squashfs"
    DIR = "dir"

    def filename(self, name: str) -> str:
        if self is ExportFormat.TAR_GZ:
            return f"{name}.tar.gz"
        if self is ExportFormat.SQUASHFS:
            return f"{name}.sqfs"
        return "dir"


ALL_FORMATS = (ExportFormat.TAR_GZ, ExportFormat.SQUASHFS, ExportFormat.DIR)


@dataclass
class Manifest:
    name: str
    files: dict[str, str]  # exported file name -> sha256 (dir exports are covered by tree_digest)
    sizes: dict[str, int]
    exports: dict[str, str]  # format -> file or directory name inside the entry
    tree_digest: str
    bytes: int
    file_count: int
    inputs_hash: str
    created: str
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "files": dict(sorted(self.files.items())),
            "sizes": dict(sorted(self.sizes.items())),
            "exports": dict(sorted(self.exports.items())),
            "tree_digest": self.tree_digest,
            "bytes": self.bytes,
            "file_count": self.file_count,
            "inputs_hash": self.inputs_hash,
            "created": self.created,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        if not isinstance(data, dict):
            raise ImageError(f"{where}: manifest is not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ImageError(
                f"{where}: manifest format_version {version!r}, this shoal reads {FORMAT_VERSION}",
                "re-export the image with this shoal version",
            )
        try:
            return cls(
                name=_typed(data, "name", str),
                files={str(k): str(v) for k, v in _typed(data, "files", dict).items()},
                sizes={str(k): int(v) for k, v in _typed(data, "sizes", dict).items()},
                exports={str(k): str(v) for k, v in _typed(data, "exports", dict).items()},
                tree_digest=_typed(data, "tree_digest", str),
                bytes=_typed(data, "bytes", int),
                file_count=_typed(data, "file_count", int),
                inputs_hash=_typed(data, "inputs_hash", str),
                created=_typed(data, "created", str),
                extra=dict(data.get("extra") or {}),
            )
        except (TypeError, ValueError) as exc:
            raise ImageError(f"{where}: bad manifest: {exc}") from exc

    def export_path(self, entry: Path, fmt: ExportFormat) -> Path | None:
        name = self.exports.get(fmt.value)
        return entry / name if name else None


def _typed(data: dict[str, Any], key: str, typ: type) -> Any:
    if key not in data:
        raise ValueError(f"missing key '{key}'")
    value = data[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"'{key}' should be {typ.__name__}, is {value!r}")
    return value


def entry_dir(name: str) -> Path:
    # every store path of an entry (its directory, .lock-, .tmp-, .rm- siblings) derives from a
    # name checked here first
    return paths.store_root() / names.image_name(name)


def manifest_path(name: str) -> Path:
    return entry_dir(name) / MANIFEST


def load_manifest(name: str) -> Manifest:
    p = manifest_path(name)
    try:
        text = p.read_text()
    except FileNotFoundError:
        known = ", ".join(list_names()) or "(none)"
        raise ImageError(
            f"image '{name}' is not in the store {paths.store_root()}; stored: {known}",
            f"export it first: shoal image export {name}",
        ) from None
    except OSError as exc:
        raise ImageError(f"cannot read {p}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ImageError(f"{p} is not valid JSON ({exc})", f"re-export: shoal image export {name}") from exc
    return Manifest.from_json(data, str(p))


def list_names() -> list[str]:
    root = paths.store_root()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if not d.name.startswith(".") and (d / MANIFEST).is_file())


def list_manifests() -> list[Manifest]:
    out = []
    for n in list_names():
        with contextlib.suppress(ImageError):
            out.append(load_manifest(n))
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


# --- exporting ---------------------------------------------------------------------------------


def export_file(tree: Path, fmt: ExportFormat, out: Path) -> None:
    """Write one export of tree to out (a file, or for DIR a directory that must not exist)."""
    what = f"export {fmt.value}"
    hint = f"check free space and permissions under {out.parent}"
    try:
        if fmt is ExportFormat.TAR_GZ:
            compressor = "pigz" if shutil.which("pigz") else "gzip"
            run(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--sparse",
                    "-I",
                    compressor,
                    "-C",
                    str(tree),
                    "-cf",
                    str(out),
                    ".",
                ],
                timeout=EXPORT_TIMEOUT,
                what=what,
                hint=hint,
            )
        elif fmt is ExportFormat.SQUASHFS:
            run(
                ["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress"],
                timeout=EXPORT_TIMEOUT,
                what=what,
                hint=hint,
            )
        else:
            run(["cp", "-a", str(tree), str(out)], timeout=EXPORT_TIMEOUT, what=what, hint=hint)
    except CommandError as exc:
        if "No space left" in exc.stderr + exc.stdout:
            raise _no_space(out.parent, _tree_bytes_estimate(tree)) from exc
        raise ImageError(exc.message, exc.hint) from exc


def _tree_bytes_estimate(tree: Path) -> int:
    return dir_size(tree)


def _no_space(where: Path, need: int) -> ImageError:
    free = shutil.disk_usage(where).free if where.exists() else 0
    return ImageError(
        f"no space left under {where}: needed about {need / 1e6:.0f} MB, {free / 1e6:.0f} MB free",
        "free space there or point SHOAL_STORE somewhere larger",
    )


def check_space(where: Path, tree_bytes: int, formats: Sequence[ExportFormat]) -> None:
    # Compressed exports are smaller than the tree; budgeting the full tree for each is
    # conservative but cheap insurance against a store filled to the last byte.
    need = int(tree_bytes * len(formats) * 1.05) + (64 << 20)
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise _no_space(probe, need)


def export_to(tree: Path, name: str, formats: Sequence[ExportFormat], dest: Path) -> list[Path]:
    """Plain export of tree into dest (no manifest); returns the written paths."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = dest / (name if fmt is ExportFormat.DIR else fmt.filename(name))
        if out.exists():
            raise ImageError(f"{out} exists", "remove it or export somewhere else")
        tmp = dest / f".tmp-{out.name}-{os.getpid()}"
        try:
            with step(f"export {name} as {fmt.value}"):
                export_file(tree, fmt, tmp)
            tmp.rename(out)
        except BaseException:
            _remove(tmp)
            raise
        written.append(out)
    return written


def add_to_store(
    name: str,
    tree: Path,
    inputs_hash: str,
    formats: Sequence[ExportFormat] = ALL_FORMATS,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Export tree into the store as NAME (replacing an older entry) and return the manifest."""
    names.image_name(name)
    root = paths.store_root()
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f".lock-{name}"):
        _remove_stale(root, name)
        digest = tree_digest(tree)
        check_space(root, digest.bytes, formats)
        tmp = root / f".tmp-{name}-{os.getpid()}"
        tmp.mkdir()
        try:
            files: dict[str, str] = {}
            sizes: dict[str, int] = {}
            exports: dict[str, str] = {}
            for fmt in formats:
                fname = fmt.filename(name)
                with step(f"export {name} as {fmt.value}"):
                    export_file(tree, fmt, tmp / fname)
                exports[fmt.value] = fname
                if fmt is not ExportFormat.DIR:
                    files[fname] = file_sha256(tmp / fname)
                    sizes[fname] = (tmp / fname).stat().st_size
            if ExportFormat.DIR in formats:
                # The copy is what nodes will use: its digest must be the tree's.
                copied = tree_digest(tmp / ExportFormat.DIR.filename(name))
                if copied.digest != digest.digest:
                    raise ImageError(f"the dir export of {name} differs from its source tree")
            manifest = Manifest(
                name=name,
                files=files,
                sizes=sizes,
                exports=exports,
                tree_digest=digest.digest,
                bytes=digest.bytes,
                file_count=digest.file_count,
                inputs_hash=inputs_hash,
                created=now_iso(),
                extra=dict(extra or {}),
            )
            _write_json(tmp / MANIFEST, manifest.to_json())
            _swap_in(tmp, entry_dir(name))
        except OSError as exc:
            _remove(tmp)
            if exc.errno == errno.ENOSPC:
                raise _no_space(root, digest.bytes * len(formats)) from exc
            raise ImageError(f"writing the store entry {name} failed: {exc}") from exc
        except BaseException:
            _remove(tmp)
            raise
    return manifest


def _write_json(p: Path, data: dict[str, Any]) -> None:
    with open(p, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _swap_in(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        _remove(old)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        # cp -a / tar keep read-only dirs; rmtree copes as root, which the store requires anyway.
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _remove_stale(root: Path, name: str) -> None:
    """Leftovers of crashed exports of NAME (we hold its lock, so none is in use)."""
    for pattern in (f".tmp-{name}-*", f".old-{name}-*", f".rm-{name}-*"):
        for p in root.glob(pattern):
            _remove(p)


def remove(name: str) -> None:
    final = entry_dir(name)
    root = paths.store_root()
    if not (final / MANIFEST).is_file():
        load_manifest(name)  # raises the "not in the store" error listing what is
    with locked(root / f".lock-{name}"):
        gone = root / f".rm-{name}-{os.getpid()}"
        final.rename(gone)  # the entry disappears at once; the slow delete follows
        _remove(gone)
    (root / f".lock-{name}").unlink(missing_ok=True)


# --- verifying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str
    what: str  # "missing", "truncated", "corrupted", "changed"
    detail: str


def verify(name: str, check_dir: bool = True) -> tuple[Manifest, list[Problem]]:
    """Re-hash every export of NAME against its manifest; return the problems found."""
    m = load_manifest(name)
    entry = entry_dir(name)
    problems: list[Problem] = []
    for fname, want in sorted(m.files.items()):
        p = entry / fname
        if not p.is_file():
            problems.append(Problem(str(p), "missing", "file is gone"))
            continue
        size = p.stat().st_size
        want_size = m.sizes.get(fname)
        if want_size is not None and size != want_size:
            kind = "truncated" if size < want_size else "changed"
            problems.append(Problem(str(p), kind, f"{size} bytes, manifest says {want_size}"))
            continue
        got = file_sha256(p)
        if got != want:
            problems.append(Problem(str(p), "corrupted", f"sha256 {got[:16]}…, manifest {want[:16]}…"))
    dir_name = m.exports.get(ExportFormat.DIR.value)
    if check_dir and dir_name:
        d = entry / dir_name
        if not d.is_dir():
            problems.append(Problem(str(d), "missing", "directory is gone"))
        else:
            got_d = tree_digest(d)
            if got_d.digest != m.tree_digest:
                problems.append(
                    Problem(
                        str(d),
                        "changed",
                        f"tree digest {got_d.digest[:16]}… ({got_d.file_count} files), "
                        f"manifest {m.tree_digest[:16]}… ({m.file_count} files)",
                    )
                )
    return m, problems


def checked_export(name: str, fmt: ExportFormat, root: Path | None = None) -> Path:
    """Path of export FMT of image NAME after checking it is what its manifest says (size and
    sha256); ImageError naming the corruption otherwise.

    Staging must never hand nodes a damaged file: the kernel mounts a corrupted SquashFS without
    complaint and a job runs in it, reading garbage or EIO only where it happens to touch a bad
    block. Hashing costs one read of the file, so the result is remembered in a stamp beside it
    (keyed by inode, size, mtime and ctime: any write or replacement changes one of them), and
    the file is hashed again only after it changed. Without write access to the store (a job user
    at a site) the stamp is not written and every call hashes.
    """
    root = root or paths.store_root()
    entry = root / names.image_name(name)
    mpath = entry / MANIFEST
    try:
        m = Manifest.from_json(json.loads(mpath.read_text()), str(mpath))
    except FileNotFoundError:
        raise ImageError(f"image {name!r} is not in the store {root}",
                         f"export it first: shoal image export {name}") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read {mpath}: {exc}", f"re-export: shoal image export {name}") from None
    fname = m.exports.get(fmt.value)
    if fname is None or fname not in m.files:
        raise ImageError(f"image {name!r} has no {fmt.value} export",
                         f"export it: shoal image export {name} --format {fmt.value}")
    path = entry / fname
    want, want_size = m.files[fname], m.sizes.get(fname)
    hint = f"re-export it: shoal image export {name}  (shoal image verify {name} lists every problem)"
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}", hint) from None
    if want_size is not None and st.st_size != want_size:
        kind = "truncated" if st.st_size < want_size else "changed"
        raise ImageError(f"{path} is {kind}: {st.st_size} bytes, the manifest says {want_size}", hint)
    key = {"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "ctime_ns": st.st_ctime_ns, "sha256": want}
    stamp = entry / f".verified-{fname}.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp.read_text()) == key:
            return path
    try:
        got = file_sha256(path)
    except OSError as exc:
        raise ImageError(f"{path} cannot be read ({exc.strerror}): the file or its storage is "
                         "damaged", hint) from None
    if got != want:
        raise ImageError(f"{path} is corrupted: sha256 {got[:16]}…, the manifest says {want[:16]}…",
                         hint)
    with contextlib.suppress(OSError):
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(key))
        os.replace(tmp, stamp)
    return path


def iter_entries() -> Iterator[tuple[str, Path]]:
    for n in list_names():
        yield n, entry_dir(n)
