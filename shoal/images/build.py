"""Charliecloud image builds, cached by a hash of their inputs.

Every ``ch-image`` call goes through ``shoal.runner.run`` as ``/usr/bin/python3 /usr/bin/ch-image``
(the first python3 on PATH may lack Debian's lark module) with ``CH_IMAGE_STORAGE`` set to
``cache_root()/ch`` and ``$USER`` set. The debootstrap base is imported once per base hash as
``shoal-base``; each image is ``ch-image build --force`` from its Dockerfile and skipped when the
hash of (Dockerfile, context files, base hash) matches the marker written after its last good build.
Markers live next to the storage (``cache_root()/ch-built``) because ch-image owns its directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal import names, paths
from shoal.errors import CommandError, ImageError
from shoal.fsutil import locked, require_space
from shoal.images.base import ensure_base
from shoal.images.progress import step
from shoal.runner import run

# /usr/bin: the charliecloud-builders package; /usr/local/bin: what `make setup` installs from it
# without its docker.io and buildah dependencies (scripts/install-debs.sh)
CH_IMAGE_SCRIPT = next((p for p in ("/usr/bin/ch-image", "/usr/local/bin/ch-image")
                        if os.path.exists(p)), "/usr/bin/ch-image")
CH_IMAGE = ["/usr/bin/python3", CH_IMAGE_SCRIPT]
BASE_IMAGE = "shoal-base"
BUILD_TIMEOUT = 3600.0
IMPORT_TIMEOUT = 1200.0
# Bump when the way we build changes in a way the inputs do not show (flags, post-processing).
BUILD_RECIPE_VERSION = "1"
# Free space a build needs in the storage: a copy of the base plus what apt downloads and
# unpacks (the largest built-in image, lammps, is ~500 MB).
BUILD_SPACE = 1500 << 20

PostProcess = Callable[[Path], None]


@dataclass(frozen=True)
class BuiltImage:
    name: str
    path: Path
    inputs_hash: str
    cached: bool
    seconds: float


def storage() -> Path:
    return paths.cache_root() / "ch"


def markers_dir() -> Path:
    return paths.cache_root() / "ch-built"


def image_dir(name: str) -> Path:
    """Where ch-image keeps the unpacked image NAME."""
    return storage() / "img" / names.image_name(name)


def ch_env() -> dict[str, str]:
    user = os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
    return {"CH_IMAGE_STORAGE": str(storage()), "USER": user}


def ch_image(args: list[str], *, timeout: float, what: str, hint: str | None = None) -> str:
    """Run ch-image with shoal's storage; returns its stdout+stderr.

    Serialized across shoal processes: ch-image refuses to run while another instance holds the
    storage, and a parallel `shoal image build` should wait rather than fail.
    """
    with locked(markers_dir() / ".lock-storage"):
        done = run([*CH_IMAGE, *args], env=ch_env(), timeout=timeout, what=what, hint=hint)
    return done.stdout + done.stderr


def tree_inputs_digest(context: Path) -> str:
    """Hash of a build context: relative paths, exec bits, contents, symlink targets."""
    h = hashlib.sha256()
    for p in sorted(context.rglob("*")):
        rel = p.relative_to(context).as_posix()
        if any(part in {"__pycache__", ".git"} for part in p.relative_to(context).parts):
            continue
        if p.is_symlink():
            h.update(f"L {rel} {os.readlink(p)}\n".encode())
        elif p.is_file():
            mode = "x" if os.access(p, os.X_OK) else "-"
            h.update(f"F {rel} {mode} {_file_sha(p)}\n".encode())
        elif p.is_dir():
            h.update(f"D {rel}\n".encode())
    return h.hexdigest()


def inputs_hash(dockerfile: Path, context: Path, base_hash: str, extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"recipe {BUILD_RECIPE_VERSION}\nbase {base_hash}\nextra {extra}\n".encode())
    h.update(f"dockerfile {_file_sha(dockerfile)}\n".encode())
    h.update(f"context {tree_inputs_digest(context)}\n".encode())
    return h.hexdigest()[:24]


def _file_sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_marker(name: str) -> dict[str, object] | None:
    try:
        data = json.loads((markers_dir() / f"{names.image_name(name)}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(name: str, data: dict[str, object]) -> None:
    names.image_name(name)
    d = markers_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.rename(d / f"{name}.json")


def drop_marker(name: str) -> None:
    (markers_dir() / f"{names.image_name(name)}.json").unlink(missing_ok=True)


def ensure_base_imported() -> str:
    """Import the debootstrap base into ch-image storage as shoal-base; return its hash."""
    base = ensure_base()
    base_hash = base.name
    with locked(markers_dir() / ".lock-base"):
        marker = read_marker(BASE_IMAGE)
        if (
            marker is not None
            and marker.get("inputs_hash") == base_hash
            and (image_dir(BASE_IMAGE) / "etc" / "debian_version").exists()
        ):
            return base_hash
        drop_marker(BASE_IMAGE)
        start = time.monotonic()
        with step(f"ch-image import {BASE_IMAGE}"):
            try:
                ch_image(
                    ["import", str(base), BASE_IMAGE],
                    timeout=IMPORT_TIMEOUT,
                    what=f"ch-image import {BASE_IMAGE}",
                )
            except CommandError as exc:
                raise ImageError(
                    f"importing the base into ch-image failed: {exc.message}",
                    f"check free space under {storage()}",
                ) from exc
        write_marker(
            BASE_IMAGE,
            {"inputs_hash": base_hash, "built": time.time(), "seconds": time.monotonic() - start},
        )
    return base_hash


_STEP_RE = re.compile(r"^\s*(\d+)[.*]?\s+([A-Z]+)(\.[A-Z])?\s+(.*)$")


def failing_step(output: str) -> str | None:
    """The last Dockerfile instruction ch-image announced (the one that failed)."""
    last = None
    for line in output.splitlines():
        m = _STEP_RE.match(line)
        if m:
            last = f"step {m.group(1)}: {m.group(2)} {m.group(4)}".strip()
    return last


def build_image(
    name: str,
    dockerfile: Path,
    context: Path,
    *,
    post: PostProcess | None = None,
    post_version: str = "",
    rebuild: bool = False,
) -> BuiltImage:
    """Build (or reuse) image NAME and return its directory in ch-image storage.

    ``post`` runs on the built tree (as real root, after ch-image's fakeroot build) before the
    marker is written, so a failed post-processing step means the next call builds again.
    """
    if not dockerfile.is_file():
        raise ImageError(f"no Dockerfile at {dockerfile}")
    base_hash = ensure_base_imported()
    want = inputs_hash(dockerfile, context, base_hash, extra=post_version)
    target = image_dir(name)
    with locked(markers_dir() / f".lock-{name}"):
        marker = read_marker(name)
        if not rebuild and marker is not None and marker.get("inputs_hash") == want and target.is_dir():
            return BuiltImage(name, target, want, True, 0.0)
        drop_marker(name)
        if target.is_symlink():
            # A pointer to a published tree (see layer1.py): ch-image must not build through it.
            target.unlink()
        require_space(storage(), BUILD_SPACE)
        start = time.monotonic()
        with step(f"ch-image build {name}"):
            try:
                ch_image(
                    [
                        "--no-cache",
                        "build",
                        "--force",
                        "-t",
                        name,
                        "-f",
                        str(dockerfile),
                        str(context),
                    ],
                    timeout=BUILD_TIMEOUT,
                    what=f"ch-image build {name}",
                )
            except CommandError as exc:
                log = markers_dir() / f"{name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(f"$ {' '.join(exc.argv)}\n--- stderr\n{exc.stderr}\n--- stdout\n{exc.stdout}")
                _remove_partial(name)
                where = failing_step(exc.stderr + "\n" + exc.stdout) or "before the first step"
                errors = [ln for ln in exc.stderr.splitlines() if ln.startswith("error")]
                reason = errors[-1] if errors else f"exit {exc.returncode}"
                tail = _tail(exc.stdout) or _tail(exc.stderr)
                raise ImageError(
                    f"building image {name} failed at {where}: {reason}; output tail: {tail}",
                    f"fix {dockerfile} (full log: {log})",
                ) from exc
        if post is not None:
            post(target)
        seconds = time.monotonic() - start
        write_marker(
            name,
            {"inputs_hash": want, "base_hash": base_hash, "built": time.time(), "seconds": seconds},
        )
    return BuiltImage(name, target, want, False, seconds)


def delete_image(name: str) -> None:
    """Forget a built image (storage tree and marker)."""
    drop_marker(name)
    target = image_dir(name)
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        try:
            ch_image(["delete", name], timeout=600, what=f"ch-image delete {name}")
        except CommandError:
            shutil.rmtree(target, ignore_errors=True)


def _remove_partial(name: str) -> None:
    """A failed build leaves a half-built tree in storage; it is never used, so free the space."""
    target = image_dir(name)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)


def _tail(text: str, lines: int = 8, width: int = 1200) -> str:
    kept = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-width:]
