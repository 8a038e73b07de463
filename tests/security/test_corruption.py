"""Item 10: a corrupted SquashFS in the store. With `--verify` the error names the corruption
(not "[Errno 5] Input/output error"); without it, no method stages the damaged file (a kernel
mount of it succeeds, and a job would run in it). Real mksquashfs, real loop mount (root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.bundle import write_bundle
from shoal.errors import DistError, ImageError
from shoal.images.store import ExportFormat, add_to_store, checked_export
from shoal.staging import base
from shoal.staging.driver import Site, check_image
from shoal.staging.registry import get_method
from tests.unit.test_dist_nodeagent import JOB, PYTHON, Agent, agent_run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")
IMAGE = "damaged"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store with one image whose SquashFS (and tarball) get damaged by the test."""
    root = tmp_path / "store"
    tree = tmp_path / "tree"
    (tree / "data").mkdir(parents=True)
    for i in range(8):  # compressible: a damaged block fails to decompress (EIO on read)
        words = [os.urandom(4).hex() for _ in range(64)]
        (tree / "data" / f"f{i}").write_text(" ".join(words[j % 61] for j in range(40000)))
    monkeypatch.setenv("SHOAL_STORE", str(root))
    add_to_store(IMAGE, tree, "test", formats=[ExportFormat.TAR_GZ, ExportFormat.SQUASHFS])
    yield root


def _damage(path: Path, at: int | None = None, length: int = 4096) -> None:
    """Flip bytes of PATH without changing its size (bit rot, a torn copy); by default in the
    middle, else at offset AT (4096: the first data blocks of a SquashFS, after its superblock)."""
    at = path.stat().st_size // 2 if at is None else at
    with open(path, "r+b") as fh:
        fh.seek(at)
        block = fh.read(length)
        fh.seek(at)
        fh.write(bytes(b ^ 0xFF for b in block))


def test_checked_export_names_the_corruption_and_caches_good_files(store: Path) -> None:
    sqfs = checked_export(IMAGE, ExportFormat.SQUASHFS)  # good: hashed, stamp written
    stamp = store / IMAGE / f".verified-{sqfs.name}.json"
    assert stamp.is_file()
    assert checked_export(IMAGE, ExportFormat.SQUASHFS) == sqfs  # from the stamp
    _damage(sqfs)  # same size; mtime/ctime change, so the stamp no longer vouches
    with pytest.raises(ImageError, match=r"damaged\.sqfs is corrupted: sha256") as exc:
        checked_export(IMAGE, ExportFormat.SQUASHFS)
    assert exc.value.hint and "re-export" in exc.value.hint
    with open(store / IMAGE / f"{IMAGE}.tar.gz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ImageError, match=r"changed: .* bytes, the manifest says"):
        checked_export(IMAGE, ExportFormat.TAR_GZ)


@pytest.mark.parametrize("method", ["squashfs-kernel", "squashfuse", "sbcast-squashfs", "untar"])
def test_no_method_stages_a_damaged_file(store: Path, method: str) -> None:
    m = get_method(method)
    site = Site((), store, str(store), str(store))
    check_image(site, IMAGE, m)  # intact: fine
    _damage(store / IMAGE / (f"{IMAGE}.sqfs" if m.artifact == "sqfs" else f"{IMAGE}.tar.gz"))
    with pytest.raises(DistError, match=rf"{method} will not stage .damaged.: .* is corrupted"):
        check_image(site, IMAGE, m)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "node-tmp"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        for m in sorted((x.target for x in base.mounts_under(str(mnt))), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)


def test_verify_of_a_mounted_damaged_squashfs_names_it(store: Path, tmp_path: Path,
                                                       tmpfs: Path) -> None:
    # the node side alone (as if the damage happened after the submit-side check): the kernel
    # mounts the damaged file; verify hits EIO on the bad blocks and must say what that means
    agent = Agent(write_bundle(tmp_path / "agent.pyz"), PYTHON)
    root = tmpfs / "shoal"
    _damage(store / IMAGE / f"{IMAGE}.sqfs", at=4096)  # data blocks: it still mounts
    common = ("--job", JOB, "--image", IMAGE)
    rec = agent_run(agent, store, root, "stage", *common, "--method", "squashfs-kernel")
    assert rec["ok"], rec
    try:
        rec = agent_run(agent, store, root, "verify", *common)
        assert not rec["ok"]
        assert "is corrupted: reading" in rec["error"] and "I/O error" in rec["error"], rec
        assert "Errno" not in rec["error"] and "shoal image verify" in rec.get("hint", ""), rec
    finally:
        rec = agent_run(agent, store, root, "cleanup", "--job", JOB)
    assert rec["ok"], rec


