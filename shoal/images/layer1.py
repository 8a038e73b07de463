"""The layer1 compute-node image: build (cached) and host-side post-processing.

``ch-image build --force`` fakes chown, so every file of the built tree belongs to the builder
(root). munged refuses to start unless its directories belong to the munge user with strict modes,
so after the build we fix ownership and modes as real root, reading the munge uid/gid from the
image's own /etc/passwd and /etc/group (they need not match the host's). The post-processing is
part of the cached build: it runs once per build, before the cache marker is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shoal import paths
from shoal.errors import ImageError
from shoal.images.build import build_image, dir_size
from shoal.runner import run

NAME = "layer1"
# Bump when post_process changes: it is part of the build's cache key.
POST_VERSION = "layer1-post-2"

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
    return paths.REPO_ROOT / "layer1"


def ensure_layer1(rebuild: bool = False) -> Layer1Image:
    """Build layer1 (or reuse the cached build) and return where its tree is."""
    ctx = layer1_context()
    built = build_image(
        NAME,
        ctx / "Dockerfile",
        ctx,
        post=post_process,
        post_version=POST_VERSION,
        rebuild=rebuild,
    )
    return Layer1Image(
        path=built.path,
        hash=built.inputs_hash,
        size_bytes=dir_size(built.path),
        cached=built.cached,
        seconds=built.seconds,
    )


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
            raise ImageError(f"layer1 contains a secret: /{leftover}", "fix layer1/Dockerfile")
    if list((tree / "etc" / "ssh").glob("ssh_host_*")):
        raise ImageError("layer1 contains ssh host keys", "fix layer1/Dockerfile")
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
        raise ImageError("slurmd is not installed in layer1", "check layer1/Dockerfile")
    if host is not None and host != image:
        raise ImageError(
            f"Slurm version mismatch: host {host}, layer1 {image}",
            "upgrade the host's Slurm packages or pin the version in layer1/Dockerfile",
        )
