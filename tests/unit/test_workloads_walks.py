"""catwalk and statwalk against a temporary tree with known counts, run as standalone scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.errors import DistError
from shoal.workloads import script_names, script_path


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, int, int]:
    root = tmp_path / "img"
    sizes = [0, 1, 4095, 4096, 70000, 1 << 20, 3 * (1 << 20) + 7]
    total = 0
    for i, size in enumerate(sizes):
        d = root / f"d{i % 3}" / f"e{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(size))
        total += size
    (root / "link").symlink_to("d0")  # not followed: would double count
    (root / "dangling").symlink_to("nowhere")
    # skipped by default: a /tmp under the root holds the staged image inside ch-run
    (root / "tmp").mkdir()
    (root / "tmp" / "big").write_bytes(b"x" * 1000)
    return root, len(sizes), total


def run_script(name: str, *args: str) -> dict[str, object]:
    # the host python3 without the venv, as inside a container
    out = subprocess.run(
        [sys.executable, "-I", str(script_path(name)), *args],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert isinstance(rec, dict)
    return rec


# startread reads a fraction of the files: all of them here, to compare with the full walks
ALL = {"startread": ("--fraction", "1")}


@pytest.mark.parametrize("name", script_names())
def test_counts(name: str, tree: tuple[Path, int, int]) -> None:
    root, nfiles, nbytes = tree
    rec = run_script(name, str(root), *ALL.get(name, ()))
    assert rec["workload"] == name
    assert rec["files"] == nfiles
    assert rec["bytes"] == nbytes
    assert rec["errors"] == 0
    assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0


@pytest.mark.parametrize("name", script_names())
def test_skip_override_includes_tmp(name: str, tree: tuple[Path, int, int]) -> None:
    root, nfiles, nbytes = tree
    rec = run_script(name, str(root), "--skip", "/proc", *ALL.get(name, ()))
    assert rec["files"] == nfiles + 1
    assert rec["bytes"] == nbytes + 1000


def test_statwalk_counts_entries(tree: tuple[Path, int, int]) -> None:
    root, nfiles, _ = tree
    rec = run_script("statwalk", str(root))
    subdirs = sum(1 for t, ds, _ in os.walk(root) for d in ds if not os.path.islink(f"{t}/{d}"))
    # entries: the files, 2 symlinks, every directory below root and the file in tmp is not seen
    assert rec["entries"] == nfiles + 2 + subdirs
    assert rec["dirs"] == subdirs  # root counted, tmp seen but not entered


def test_startread_reads_the_same_few_percent_every_time(tmp_path: Path) -> None:
    root = tmp_path / "img"
    for i in range(2000):
        d = root / f"d{i % 40}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"y" * 100)
    a = run_script("startread", str(root))
    files = int(str(a["files"]))
    assert a["files_total"] == 2000 and 0.015 * 2000 <= files <= 0.045 * 2000
    assert a["bytes"] == 100 * files
    assert run_script("startread", str(root))["files"] == a["files"]  # deterministic choice


def test_unknown_workload() -> None:
    with pytest.raises(DistError, match="unknown workload"):
        script_path("nope")
    with pytest.raises(DistError, match="no script"):
        script_path("mpihello")
