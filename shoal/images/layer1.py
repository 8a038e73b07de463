"""The layer1 compute-node image: build (cached) and host-side post-processing.

``ch-image build --force`` fakes chown, so every file of the built tree belongs to the builder
(root). munged refuses to start unless its directories belong to the munge user with strict modes,
so after the build we fix ownership and modes as real root, reading the munge uid/gid from the
image's own /etc/passwd and /etc/group (they need not match the host's). The post-processing is
part of the cached build: it runs once per build, before the cache marker is written.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shoal import paths
from shoal.errors import ImageError
from shoal.fsutil import dir_size, locked
from shoal.images.build import build_image, drop_marker, ensure_base_imported, inputs_hash
from shoal.runner import run

NAME = "layer1"
# Bump when post_process changes: it is part of the build's cache key.
POST_VERSION = "layer1-post-2"
# Published trees kept besides the current one (older ones are removed unless a cluster uses them).
KEEP_TREES = 3

# path in image -> mode; owner munge:munge. munged: key dir and state dirs private, the socket
# dir readable by clients (0755, not 0700), the log dir not world-writable.
MUNGE_DIRS = {
    "etc/munge": 0o700,
    "var/lib/munge": 0o700,
    "var/log/munge": 0o700,
    "run/munge": 0o755,
}
ROOT_DIRS = {
    # sshd insists its privilege-separation dir is root-owned and not group/world-writable.
    "run/sshd": 0o755,
    "var/log/supervisor": 0o755,
    "var/spool/slurmd": 0o755,
    "var/log/slurm": 0o755,
}
SHOAL_USER = ("home/shoal", 1000, 1000)


@dataclass(frozen=True)
class Layer1Image:
    path: Path
    hash: str
    size_bytes: int
    cached: bool = False
    seconds: float = 0.0


def layer1_context() -> Path:
    return paths.recipes_dir() / NAME


def trees_root() -> Path:
    """Published layer1 trees, one directory per inputs hash, never modified once there."""
    return paths.cache_root() / "layer1"


def ensure_layer1(rebuild: bool = False) -> Layer1Image:
    """Build layer1 (or reuse the cached build) and return where its tree is.

    Running clusters use the tree as their overlay lower layer, so it must never change under
    them: ch-image rebuilds in place, hence each build is moved out of ch-image storage into
    trees_root()/<hash> and a new build gets a new directory.
    """
    ctx = layer1_context()
    base_hash = ensure_base_imported()
    want = inputs_hash(ctx / "Dockerfile", ctx, base_hash, extra=POST_VERSION)
    published = trees_root() / want
    if not rebuild and _complete(published):
        return Layer1Image(published, want, dir_size(published), cached=True)
    with locked(trees_root() / ".lock"):
        if not rebuild and _complete(published):
            return Layer1Image(published, want, dir_size(published), cached=True)
        built = build_image(
            NAME,
            ctx / "Dockerfile",
            ctx,
            post=post_process,
            post_version=POST_VERSION,
            rebuild=rebuild,
        )
        if built.inputs_hash != want:
            raise ImageError(f"layer1 inputs changed during the build ({want} -> {built.inputs_hash})")
        tmp = trees_root() / f".tmp-{want}-{os.getpid()}"
        built.path.rename(tmp)
        drop_marker(NAME)  # the tree left ch-image storage; the marker now points at nothing
        if published.exists():  # --rebuild: keep the old tree for clusters still using it
            published.rename(trees_root() / f"{want}.old-{int(time.time())}")
        tmp.rename(published)
        _prune(keep=published)
    return Layer1Image(published, want, dir_size(published), cached=False, seconds=built.seconds)


def _complete(tree: Path) -> bool:
    return (tree / "etc" / "passwd").is_file() and (tree / "usr" / "sbin" / "slurmd").exists()


def _in_use() -> set[str]:
    """Trees named in the state of any virtual cluster (running or kept)."""
    used: set[str] = set()
    for f in paths.clusters_root().glob("*/*.json"):
        try:
            text = f.read_text()
        except OSError:
            continue
        for d in trees_root().iterdir():
            if str(d) in text:
                used.add(d.name)
    return used


def _prune(keep: Path) -> None:
    root = trees_root()
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    trees = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    trees.sort(key=lambda d: d.stat().st_ctime, reverse=True)
    used = _in_use()
    for old in trees[KEEP_TREES:]:
        if old != keep and old.name not in used:
            shutil.rmtree(old, ignore_errors=True)


def lookup_id(db: Path, name: str) -> int:
    """uid (passwd) or gid (group) of NAME in an image's colon-separated database."""
    try:
        lines = db.read_text().splitlines()
    except OSError as exc:
        raise ImageError(f"cannot read {db}: {exc.strerror}") from exc
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            return int(fields[2])
    raise ImageError(f"no '{name}' entry in {db}", "the munge package did not install in layer1")


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def post_process(tree: Path) -> None:
    munge_uid = lookup_id(tree / "etc" / "passwd", "munge")
    munge_gid = lookup_id(tree / "etc" / "group", "munge")
    for rel, mode in MUNGE_DIRS.items():
        d = tree / rel
        d.mkdir(parents=True, exist_ok=True)
        chown_tree(d, munge_uid, munge_gid)
        d.chmod(mode)
    for rel, mode in ROOT_DIRS.items():
        d = tree / rel
        d.mkdir(parents=True, exist_ok=True)
        os.lchown(d, 0, 0)
        d.chmod(mode)
    home, uid, gid = SHOAL_USER
    if (tree / home).is_dir():
        chown_tree(tree / home, uid, gid)
    for leftover in ("etc/munge/munge.key",):
        if (tree / leftover).exists():
            raise ImageError(f"layer1 contains a secret: /{leftover}",
                             "fix shoal/images/recipes/layer1/Dockerfile")
    if list((tree / "etc" / "ssh").glob("ssh_host_*")):
        raise ImageError("layer1 contains ssh host keys", "fix shoal/images/recipes/layer1/Dockerfile")
    check_slurm_matches_host(tree)


def slurm_version(admindir: Path) -> str | None:
    done = run(
        ["dpkg-query", f"--admindir={admindir}", "-W", "-f", "${Version}", "slurmd"],
        check=False,
        timeout=60,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def check_slurm_matches_host(tree: Path) -> None:
    """slurmd in the image must be the host's build: slurmctld runs on the host side."""
    host = slurm_version(Path("/var/lib/dpkg"))
    image = slurm_version(tree / "var" / "lib" / "dpkg")
    if image is None:
        raise ImageError("slurmd is not installed in layer1", "check shoal/images/recipes/layer1/Dockerfile")
    if host is not None and host != image:
        raise ImageError(
            f"Slurm version mismatch: host {host}, layer1 {image}",
            "upgrade the host's Slurm packages or pin the version in shoal/images/recipes/layer1/Dockerfile",
        )
