"""`shoal image import`: bring an image built elsewhere into the store, with a manifest.

Sources, recognised by content (``detect``):

- ``oci``            an OCI image layout as a tar (``oci-layout``, ``index.json``, ``blobs/``),
                     e.g. ``skopeo copy ... oci-archive:x.tar`` or ``podman save --format oci-archive``
- ``docker-archive`` ``docker save`` output (``manifest.json`` listing ``Layers``)
- ``tar``            a flat root file system tarball (``ch-convert -o tar``, ``ch-image export``)
- ``dir``            a Charliecloud image directory
- ``squashfs``       a SquashFS file (``ch-convert -o squash``)

Layered formats are flattened here in layer order with the OCI whiteout rules: ``.wh.NAME``
removes NAME of the layers below, ``.wh..wh..opq`` empties its directory of what the layers below
put there. This runs as root on untrusted input, so nothing is written through a symlink: every
path is created or removed component by component with lstat checks, member names with ``..``
or absolute paths are refused, devices are skipped and set-id bits dropped (ch-run ignores them
anyway). The flat tree then goes into the store as every exported image does (tar.gz, SquashFS,
directory and a manifest whose ``extra.imported_from`` records the source).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from shoal import paths
from shoal.errors import ImageError
from shoal.images import store
from shoal.runner import run

FORMATS = ("oci", "docker-archive", "tar", "dir", "squashfs")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# what ch-run binds over: an image must have these files (empty is fine) and directories
CH_RUN_FILES = ("etc/passwd", "etc/group", "etc/hosts", "etc/resolv.conf")
CH_RUN_DIRS = ("proc", "sys", "tmp", "home", "mnt", "run", "var/tmp")


def detect(source: Path) -> str:
    """What SOURCE is (one of FORMATS); ImageError if none."""
    if source.is_dir():
        return "dir"
    try:
        with open(source, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ImageError(f"cannot read {source}: {exc.strerror}", "check the path") from None
    if head in (b"hsqs", b"sqsh"):
        return "squashfs"
    try:
        with tarfile.open(source, "r:*") as tf:
            names = set()
            for i, m in enumerate(tf):
                names.add(m.name.lstrip("./"))
                if i > 100_000:
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"{source} is neither a SquashFS file nor a tar archive ({exc})",
                         "give an OCI or docker-archive tarball, a root fs tarball, a SquashFS "
                         "file or an image directory") from None
    if "oci-layout" in names and "index.json" in names:
        return "oci"
    if "manifest.json" in names and not any(n.startswith(("etc/", "usr/")) for n in names):
        return "docker-archive"
    return "tar"


def import_image(name: str, source: Path, fmt: str = "auto") -> tuple[store.Manifest, str]:
    """Flatten SOURCE into a tree and put it into the store as NAME; (manifest, format)."""
    from shoal import names

    names.image_name(name)
    source = source.resolve()
    if not source.exists():
        raise ImageError(f"{source} does not exist", "give the path of the image to import")
    kind = detect(source) if fmt == "auto" else fmt
    if kind not in FORMATS:
        raise ImageError(f"unknown format {fmt!r}", f"use one of: auto, {', '.join(FORMATS)}")
    work = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=paths.store_root().parent
                                 if paths.store_root().parent.is_dir() else None))
    try:
        tree = work / "tree"
        tree.mkdir()
        if kind == "dir":
            _copy_dir(source, tree)
        elif kind == "squashfs":
            tree.rmdir()
            run(["unsquashfs", "-no-progress", "-no-xattrs", "-d", str(tree), str(source)],
                timeout=3600, what="unsquashfs", hint="is it a SquashFS image (ch-convert -o squash)?")
        elif kind == "tar":
            with tarfile.open(source, "r:*") as tf:
                _apply_layer(tf, tree, strip=_single_top(tf))
        else:
            for layer in (_oci_layers if kind == "oci" else _docker_layers)(source):
                with layer as tf:
                    _apply_layer(tf, tree)
        _fixup(tree)
        inputs = "import-" + _source_hash(source)
        m = store.add_to_store(name, tree, inputs, extra={
            "imported_from": str(source), "source_format": kind})
        return m, kind
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- the layered formats -------------------------------------------------------------------------


def _member_json(tf: tarfile.TarFile, name: str) -> Any:
    for cand in (name, f"./{name}"):
        try:
            f = tf.extractfile(cand)
        except KeyError:
            continue
        if f is not None:
            try:
                return json.loads(f.read())
            except ValueError as exc:
                raise ImageError(f"{name} in the archive is not JSON: {exc}") from None
    raise ImageError(f"the archive has no {name}", "is it an OCI/docker image archive?")


class _Layer:
    """A layer tarball inside the outer archive, opened as a TarFile (context manager)."""

    def __init__(self, outer: Path, member: str) -> None:
        self.outer, self.member = outer, member
        self._tfs: list[tarfile.TarFile] = []

    def __enter__(self) -> tarfile.TarFile:
        outer = tarfile.open(self.outer, "r:*")
        self._tfs.append(outer)
        try:
            raw: IO[bytes] | None = outer.extractfile(self.member)
        except KeyError:
            raw = None
        if raw is None:
            raise ImageError(f"layer {self.member} is missing from {self.outer}")
        try:
            inner = tarfile.open(fileobj=raw, mode="r:*")  # gzip or plain
        except tarfile.TarError as exc:
            raise ImageError(f"layer {self.member}: not a (gzip) tar: {exc}",
                             "zstd layers are not supported: re-save the image with gzip") from None
        self._tfs.append(inner)
        return inner

    def __exit__(self, *exc: object) -> None:
        for tf in reversed(self._tfs):
            tf.close()


def _blob(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not hexd.isalnum():
        raise ImageError(f"unsupported digest {digest!r}")
    return f"blobs/sha256/{hexd}"


def _oci_layers(source: Path) -> Iterator[_Layer]:
    with tarfile.open(source, "r:*") as tf:
        doc = _member_json(tf, "index.json")
        for _ in range(4):  # an index may point at an index (multi-arch): take linux/amd64
            mans = doc.get("manifests") or []
            if not mans:
                break
            pick = next((m for m in mans if (m.get("platform") or {}).get("architecture")
                         in ("amd64", None)), mans[0])
            doc = _member_json(tf, _blob(pick["digest"]))
        layers = [_blob(layer["digest"]) for layer in doc.get("layers", [])]
    if not layers:
        raise ImageError(f"{source}: the OCI manifest lists no layers")
    for member in layers:
        yield _Layer(source, member)


def _docker_layers(source: Path) -> Iterator[_Layer]:
    with tarfile.open(source, "r:*") as tf:
        doc = _member_json(tf, "manifest.json")
    if not isinstance(doc, list) or not doc or not isinstance(doc[0].get("Layers"), list):
        raise ImageError(f"{source}: manifest.json has no Layers list", "is it `docker save` output?")
    for member in doc[0]["Layers"]:
        yield _Layer(source, str(member))


# ---- applying one layer safely -------------------------------------------------------------------


def _parts(name: str, strip: str | None = None) -> list[str] | None:
    """Path components of a member name, or None for the archive root; ImageError on '..'."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if strip is not None and parts and parts[0] == strip:
        parts = parts[1:]
    if any(p == ".." for p in parts):
        raise ImageError(f"refusing archive member {name!r}: it points outside the image")
    return parts or None


def _parent(root: Path, parts: list[str]) -> Path:
    """The real directory that will hold parts[-1], made as needed. A symlinked directory (merged
    /usr: lib -> usr/lib) is followed as inside a chroot at root, never out of the image."""
    cur = root
    for p in parts[:-1]:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            inside = _follow_in_root(root, cur)
            if inside is not None:
                cur = inside
                continue
        elif stat.S_ISDIR(st.st_mode):
            continue
        # a file (or a dangling link) where the layer wants a directory: the layer wins
        _remove(cur)
        os.mkdir(cur, 0o755)
    return cur


def _follow_in_root(root: Path, link: Path, depth: int = 0) -> Path | None:
    """Where symlink LINK leads if the image were the root (a real directory in it), or None."""
    if depth > 16:
        return None  # a loop of links
    cur = link
    for _ in range(16):
        target = os.readlink(cur)
        base = str(root) if target.startswith("/") else str(cur.parent)
        nxt = os.path.normpath(os.path.join(base, target.lstrip("/")))
        if os.path.commonpath([nxt, str(root)]) != str(root):
            return None  # leads out of the image: not followed
        # a component of nxt itself may be a link: resolve it piecewise, inside root
        rel = os.path.relpath(nxt, root)
        real = root
        for comp in ([] if rel == "." else rel.split(os.sep)):
            real = real / comp
            try:
                st = os.lstat(real)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                deeper = _follow_in_root(root, real, depth + 1) if real != cur else None
                if deeper is None:
                    return None
                real = deeper
        st = os.lstat(real)
        if stat.S_ISDIR(st.st_mode):
            return real
        if not stat.S_ISLNK(st.st_mode):
            return None
        cur = real
    return None


def _remove(p: Path) -> None:
    st = os.lstat(p)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(p)  # does not follow symlinks inside
    else:
        os.unlink(p)


def _exists(p: Path) -> bool:
    try:
        os.lstat(p)
    except FileNotFoundError:
        return False
    return True


def _apply_layer(tf: tarfile.TarFile, root: Path, strip: str | None = None) -> None:
    # whiteouts first: they remove what the layers BELOW put there, never this layer's files
    members = [(m, p) for m in tf.getmembers() if (p := _parts(m.name, strip)) is not None]
    for _m, parts in members:
        base = parts[-1]
        if base == OPAQUE:
            d = _parent(root, parts)
            for child in os.listdir(d):
                _remove(d / child)
        elif base.startswith(WHITEOUT):
            target = _parent(root, parts) / base[len(WHITEOUT):]
            if _exists(target):
                _remove(target)
    hardlinks: list[tuple[tarfile.TarInfo, list[str]]] = []
    for m, parts in members:
        if parts[-1].startswith(WHITEOUT):
            continue
        if m.islnk():
            hardlinks.append((m, parts))
        else:
            _extract(tf, m, root, parts)
    for m, parts in hardlinks:
        lparts = _parts(m.linkname, strip)
        if lparts is None:
            continue
        src = _parent(root, lparts) / lparts[-1]
        dest = _parent(root, parts) / parts[-1]
        if _exists(dest):
            _remove(dest)
        if _exists(src) and stat.S_ISREG(os.lstat(src).st_mode):
            os.link(src, dest)


def _extract(tf: tarfile.TarFile, m: tarfile.TarInfo, root: Path, parts: list[str]) -> None:
    dest = _parent(root, parts) / parts[-1]
    mode = m.mode & 0o777  # no set-id or sticky bits from an untrusted archive
    if m.isdir():
        if _exists(dest) and not stat.S_ISDIR(os.lstat(dest).st_mode):
            _remove(dest)
        if not _exists(dest):
            os.mkdir(dest, 0o755)
        os.chmod(dest, mode | 0o700)
        return
    if _exists(dest):
        _remove(dest)
    if m.issym():
        os.symlink(m.linkname, dest)
    elif m.isfile():
        src = tf.extractfile(m)
        if src is None:
            return
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(dest, mode)
    # devices, FIFOs: skipped (ch-run binds the host's /dev)


def _single_top(tf: tarfile.TarFile) -> str | None:
    """The one top-level directory a root fs tarball is wrapped in (ch-convert's), if any."""
    tops = {p[0] for m in tf.getmembers() if (p := _parts(m.name))}
    if len(tops) != 1:
        return None
    top = next(iter(tops))
    return top if top not in ("bin", "etc", "usr", "lib", "var") else None


# ---- directories and finishing -------------------------------------------------------------------


def _copy_dir(src: Path, dest: Path) -> None:
    if not (src / "bin").exists() and not (src / "usr").exists():
        raise ImageError(f"{src} does not look like an image directory (no bin/ or usr/)",
                         "give the root of the unpacked image")
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda d, names: names if Path(d) == src / "dev" else [])


def _fixup(tree: Path) -> None:
    if not any(_exists(tree / p) for p in ("bin", "usr")):
        raise ImageError("the imported image has no bin/ or usr/: it is not a root file system",
                         "check the source (an empty or wrong layer list?)")
    dev = tree / "dev"
    if _exists(dev):
        _remove(dev)
    os.mkdir(dev, 0o755)
    for rel in CH_RUN_DIRS:
        d = _parent(tree, [*rel.split("/"), "x"])
        os.chmod(d, 0o1777 if rel.endswith("tmp") else 0o755)
    for rel in CH_RUN_FILES:
        p = tree / rel
        if not _exists(p):
            _parent(tree, rel.split("/"))
            p.write_text("")
    os.chmod(tree, 0o755)


def _source_hash(source: Path) -> str:
    h = hashlib.sha256()
    if source.is_dir():
        from shoal.images.treedigest import tree_digest

        h.update(tree_digest(str(source)).digest.encode())
    else:
        with open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:24]
