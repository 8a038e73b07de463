"""Synthetic images with a controlled file population (`shoal image synth`).

A synthetic image is a runnable image directory: a copy of a base image directory (so ch-run and
python3 work in it: catwalk and statwalk need them) with the synthetic tree added under /data. Without
a base it gets a minimal skeleton (the /etc files ch-run binds over), enough for mksquashfs, tar and
the staging methods but not for running programs.

Profiles (scale multiplies the count for many-small and like:, the file size for few-large):

    many-small      20,000 files of 1-8 KiB (uniform), 20 entries per directory, nested
    few-large       8 files of 64 MiB
    like:DIR        the size distribution of the regular files of image directory DIR: same count
                    and sizes at scale 1 (so same total), quantile-sampled at other scales

Everything is deterministic in (profile, scale, seed); content is random bytes (incompressible) or,
with content="compressible", half random half zero per 4 KiB block (about 2:1 under gzip).
The image is written next to dest_dir and renamed into place at the end: no half-written image.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from shoal.errors import ImageError
from shoal.runner import run

KiB = 1024
MiB = 1024 * KiB
DATA_DIR = "data"
FANOUT = 20  # entries per directory in the synthetic tree
PROFILES = ("many-small", "few-large", "like:IMAGE_DIR")
Content = Literal["random", "compressible"]

_SKELETON = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/resolv.conf": "",
}
_SKELETON_DIRS = ("bin", "dev", "etc", "home", "mnt", "proc", "root", "sys", "tmp", "usr", "var")


@dataclass
class SynthReport:
    """What synth_image wrote: exact figures of the synthetic tree (under /data of the image)."""

    profile: str
    dest: str
    data_dir: str
    seed: int
    scale: float
    content: str
    files: int
    dirs: int
    bytes: int
    min_size: int
    max_size: int
    # log2 bucket -> count: bucket b holds sizes in [2**(b-1), 2**b), bucket 0 holds empty files
    histogram: dict[int, int] = field(default_factory=dict)
    base: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def size_bucket(size: int) -> int:
    return size.bit_length()


def histogram(sizes: list[int]) -> dict[int, int]:
    return dict(sorted(Counter(size_bucket(s) for s in sizes).items()))


def scan_sizes(image_dir: Path) -> list[int]:
    """Sizes of the regular files under image_dir (symlinks not followed)."""
    if not image_dir.is_dir():
        raise ImageError(
            f"like: {image_dir} is not a directory",
            "give an unpacked image directory, e.g. one in the store's dir/",
        )
    sizes: list[int] = []
    for top, _dirs, files in os.walk(image_dir):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode):
                sizes.append(st.st_size)
    if not sizes:
        raise ImageError(f"like: {image_dir} holds no regular files", None)
    return sizes


def plan_sizes(profile: str, scale: float, seed: int) -> list[int]:
    """The file sizes of a profile, in file order (deterministic)."""
    if scale <= 0:
        raise ImageError(f"scale must be positive, got {scale}", None)
    rng = random.Random(f"sizes:{profile}:{seed}")
    if profile == "many-small":
        n = max(1, round(20000 * scale))
        return [rng.randint(1 * KiB, 8 * KiB) for _ in range(n)]
    if profile == "few-large":
        return [max(1, round(64 * MiB * scale))] * 8
    if profile.startswith("like:"):
        src = sorted(scan_sizes(Path(profile[5:])))
        n = max(1, round(len(src) * scale))
        if n == len(src):
            sizes = list(src)
        else:
            # quantiles of the source distribution: keeps its shape at any count
            sizes = [src[min(len(src) - 1, int((i + 0.5) * len(src) / n))] for i in range(n)]
            # quantiles of a lumpy distribution miss its mean: rescale so the total keeps its
            # ratio to the count (mean file size preserved), the residue goes to the largest file
            target = round(sum(src) * n / len(src))
            got = sum(sizes)
            if got > 0:
                sizes = [round(s * target / got) for s in sizes]
                sizes[-1] = max(0, sizes[-1] + target - sum(sizes))
        rng.shuffle(sizes)
        return sizes
    raise ImageError(f"unknown synth profile {profile!r}", f"known profiles: {', '.join(PROFILES)}")


def tree_paths(n: int) -> Iterator[str]:
    """Relative paths of n files in a balanced tree of at most FANOUT entries per directory."""
    depth = 0
    while FANOUT ** (depth + 1) < n:
        depth += 1
    for i in range(n):
        parts = []
        rest = i // FANOUT
        for _ in range(depth):
            parts.append(f"d{rest % FANOUT:02d}")
            rest //= FANOUT
        yield "/".join([*reversed(parts), f"f{i:06d}"])


def _content(rng: random.Random, size: int, content: Content) -> bytes:
    if content == "random":
        return rng.randbytes(size)
    block = 4 * KiB
    half = block // 2
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(half) + bytes(block - half)
    return bytes(out[:size])


def _write_data(data: Path, sizes: list[int], seed: int, content: Content) -> int:
    rng = random.Random(f"content:{seed}")
    made: set[Path] = set()
    for rel, size in zip(tree_paths(len(sizes)), sizes, strict=True):
        path = data / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        # large files are written in chunks so memory stays small at any scale
        with open(path, "wb") as f:
            left = size
            while left > 0:
                n = min(left, 16 * MiB)
                f.write(_content(rng, n, content))
                left -= n
    return sum(1 for _t, ds, _f in os.walk(data) for _d in ds) + 1


def _check_space(where: Path, need: int) -> None:
    free = shutil.disk_usage(where).free
    if free < need:
        raise ImageError(
            f"no space left for the synthetic image in {where}: needs {need / MiB:.0f} MiB, "
            f"{free / MiB:.0f} MiB free",
            "free space there, or lower --scale",
        )


def synth_image(
    profile: str,
    dest_dir: str | os.PathLike[str],
    scale: float = 1.0,
    seed: int = 0,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    content: Content = "random",
) -> SynthReport:
    """Write a synthetic image directory at dest_dir (must not exist) and report its exact figures."""
    dest = Path(dest_dir)
    if dest.exists():
        raise ImageError(f"{dest} exists", "remove it or choose another name")
    if content not in ("random", "compressible"):
        raise ImageError(f"unknown content kind {content!r}", "use random or compressible")
    sizes = plan_sizes(profile, scale, seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    base_bytes = 0
    if base_dir is not None:
        base = Path(base_dir)
        if not (base / "etc").is_dir():
            raise ImageError(
                f"base image {base} has no etc/: not an image directory",
                "give an unpacked image directory as base",
            )
        base_bytes = sum(scan_sizes(base))
    # the tree plus 4 KiB per file of block rounding
    _check_space(dest.parent, sum(sizes) + 4 * KiB * len(sizes) + base_bytes)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        if base_dir is not None:
            # cp -a keeps symlinks, modes and hard links of the base image exactly
            run(["cp", "-a", f"{base_dir}/.", f"{tmp}/"], timeout=1800, what="copying the base image")
        else:
            for d in _SKELETON_DIRS:
                (tmp / d).mkdir()
            for rel, text in _SKELETON.items():
                (tmp / rel).write_text(text)
        data = tmp / DATA_DIR
        if data.exists():
            raise ImageError(f"base image already has /{DATA_DIR}", "use a base image without it")
        data.mkdir()
        dirs = _write_data(data, sizes, seed, content)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthReport(
        profile=profile,
        dest=str(dest),
        data_dir=str(dest / DATA_DIR),
        seed=seed,
        scale=scale,
        content=content,
        files=len(sizes),
        dirs=dirs,
        bytes=sum(sizes),
        min_size=min(sizes),
        max_size=max(sizes),
        histogram=histogram(sizes),
        base=str(base_dir) if base_dir is not None else None,
    )
