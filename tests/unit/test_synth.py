"""synth_image: exact counts and sizes per profile, determinism, like:, errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from shoal.errors import ImageError
from shoal.images.synth import (
    FANOUT,
    KiB,
    MiB,
    histogram,
    plan_sizes,
    scan_sizes,
    synth_image,
    tree_paths,
)


def on_disk(data: Path) -> tuple[int, int, list[int]]:
    sizes = [p.stat().st_size for p in data.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes), sizes


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_many_small_exact(tmp_path: Path) -> None:
    rep = synth_image("many-small", tmp_path / "img", scale=0.05, seed=3)
    files, total, sizes = on_disk(Path(rep.data_dir))
    assert rep.files == files == 1000
    assert rep.bytes == total
    assert all(1 * KiB <= s <= 8 * KiB for s in sizes)
    assert (rep.min_size, rep.max_size) == (min(sizes), max(sizes))
    assert sum(rep.histogram.values()) == 1000
    for top, dirs, names in os.walk(rep.data_dir):
        assert len(dirs) + len(names) <= FANOUT, top
    assert (tmp_path / "img" / "etc" / "passwd").is_file()  # ch-run binds over it


def test_few_large_exact(tmp_path: Path) -> None:
    rep = synth_image("few-large", tmp_path / "img", scale=1 / 64, seed=0)
    files, total, sizes = on_disk(Path(rep.data_dir))
    assert rep.files == files == 8
    assert sizes == [1 * MiB] * 8
    assert rep.bytes == total == 8 * MiB


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    a = synth_image("many-small", tmp_path / "a", scale=0.01, seed=7)
    b = synth_image("many-small", tmp_path / "b", scale=0.01, seed=7)
    c = synth_image("many-small", tmp_path / "c", scale=0.01, seed=8)
    assert tree_hash(Path(a.data_dir)) == tree_hash(Path(b.data_dir))
    assert tree_hash(Path(a.data_dir)) != tree_hash(Path(c.data_dir))


def test_like_copies_distribution(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src_sizes = [0, 10, 100, 5000, 5000, 70000, 300000, 1 << 20] * 3
    for i, s in enumerate(src_sizes):
        d = src / f"x{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"a" * s)
    (src / "sym").symlink_to("x0")
    rep = synth_image(f"like:{src}", tmp_path / "img", seed=1)
    files, total, sizes = on_disk(Path(rep.data_dir))
    assert files == rep.files == len(src_sizes)
    assert total == rep.bytes == sum(src_sizes)
    assert sorted(sizes) == sorted(src_sizes)
    assert rep.histogram == histogram(scan_sizes(src))
    half = plan_sizes(f"like:{src}", 0.5, 1)
    assert len(half) == 12
    assert abs(sum(half) - sum(src_sizes) / 2) <= 0.01 * sum(src_sizes)


def test_compressible_content(tmp_path: Path) -> None:
    import gzip

    rep = synth_image("few-large", tmp_path / "img", scale=1 / 256, content="compressible")
    data = next(Path(rep.data_dir).rglob("f*")).read_bytes()
    assert len(data) == 256 * KiB
    assert len(gzip.compress(data)) < 0.6 * len(data)
    rnd = synth_image("few-large", tmp_path / "rnd", scale=1 / 256)
    data = next(Path(rnd.data_dir).rglob("f*")).read_bytes()
    assert len(gzip.compress(data)) > 0.99 * len(data)


def test_base_dir_layered(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (base / "bin").mkdir()
    (base / "bin" / "sh").symlink_to("busybox")
    rep = synth_image("many-small", tmp_path / "img", scale=0.001, base_dir=base)
    img = tmp_path / "img"
    assert (img / "bin" / "sh").is_symlink()
    assert (img / "etc" / "passwd").read_text() == "root:x:0:0::/:/bin/sh\n"
    assert on_disk(Path(rep.data_dir))[0] == 20


def test_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="unknown synth profile"):
        synth_image("huge", tmp_path / "img")
    with pytest.raises(ImageError, match="not a directory"):
        synth_image(f"like:{tmp_path}/none", tmp_path / "img")
    with pytest.raises(ImageError, match="not an image directory"):
        synth_image("many-small", tmp_path / "img", base_dir=tmp_path)
    (tmp_path / "exists").mkdir()
    with pytest.raises(ImageError, match="exists"):
        synth_image("many-small", tmp_path / "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_no_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10, 0, 10))
    with pytest.raises(ImageError, match=r"no space left.*needs 512 MiB"):
        synth_image("few-large", tmp_path / "img", scale=1.0)
    assert list(tmp_path.iterdir()) == []


def test_tree_paths_unique() -> None:
    paths = list(tree_paths(9000))
    assert len(set(paths)) == 9000
    assert paths[0].count("/") == 3
