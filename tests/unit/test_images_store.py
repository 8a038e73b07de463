"""Image store manifests and verify (real tar/mksquashfs on a tiny tree: fast, no daemons)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from shoal.errors import ImageError
from shoal.images import store
from shoal.images.store import ALL_FORMATS, ExportFormat, Manifest
from shoal.images.treedigest import tree_digest


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "store"
    monkeypatch.setenv("SHOAL_STORE", str(d))
    return d


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "hello").write_bytes(b"\x7fELF" + os.urandom(3000))
    (root / "usr" / "bin" / "hello").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "dev").mkdir()
    return root


def sample_manifest() -> Manifest:
    return Manifest(
        name="x",
        files={"x.tar.gz": "a" * 64},
        sizes={"x.tar.gz": 10},
        exports={"tar.gz": "x.tar.gz"},
        tree_digest="b" * 64,
        bytes=123,
        file_count=4,
        inputs_hash="c" * 24,
        created="2025-01-01T00:00:00+00:00",
    )


def test_manifest_round_trip() -> None:
    m = sample_manifest()
    data = json.loads(json.dumps(m.to_json()))
    assert data["format_version"] == store.FORMAT_VERSION
    assert Manifest.from_json(data, "here") == m


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format_version": 99}, "format_version 99"),
        ({"bytes": "12"}, "'bytes' should be int"),
        ({"bytes": True}, "'bytes' should be int"),
        ({"files": []}, "'files' should be dict"),
    ],
)
def test_manifest_rejects_bad_values(edit: dict[str, object], message: str) -> None:
    data = sample_manifest().to_json() | edit
    with pytest.raises(ImageError, match=message):
        Manifest.from_json(data, "m.json")


def test_manifest_rejects_missing_key() -> None:
    data = sample_manifest().to_json()
    del data["tree_digest"]
    with pytest.raises(ImageError, match="missing key 'tree_digest'"):
        Manifest.from_json(data, "m.json")


def test_unknown_image_names_the_stored_ones(store_dir: Path) -> None:
    (store_dir / "a").mkdir(parents=True)
    (store_dir / "a" / "manifest.json").write_text("{}")
    with pytest.raises(ImageError, match="stored: a"):
        store.load_manifest("zzz")


def test_add_verify_and_remove(store_dir: Path, tree: Path) -> None:
    m = store.add_to_store("tiny", tree, "inputs123")
    entry = store.entry_dir("tiny")
    assert sorted(os.listdir(entry)) == ["dir", "manifest.json", "tiny.sqfs", "tiny.tar.gz"]
    assert m.tree_digest == tree_digest(tree).digest
    assert m.file_count == 2
    assert set(m.exports) == {f.value for f in ALL_FORMATS}
    assert store.load_manifest("tiny") == m
    assert store.list_names() == ["tiny"]
    assert not [p for p in store_dir.iterdir() if p.name.startswith((".tmp", ".old"))]
    _, problems = store.verify("tiny")
    assert problems == []

    # A second export replaces the entry in one step.
    (tree / "etc" / "new").write_text("x")
    m2 = store.add_to_store("tiny", tree, "inputs456")
    assert m2.tree_digest != m.tree_digest
    assert store.load_manifest("tiny").inputs_hash == "inputs456"

    store.remove("tiny")
    assert not entry.exists()
    assert store.list_names() == []
    with pytest.raises(ImageError, match="not in the store"):
        store.remove("tiny")


def test_tar_and_squashfs_unpack_to_the_tree(store_dir: Path, tree: Path, tmp_path: Path) -> None:
    m = store.add_to_store("tiny", tree, "h", [ExportFormat.TAR_GZ, ExportFormat.SQUASHFS])
    entry = store.entry_dir("tiny")
    t, s = tmp_path / "from-tar", tmp_path / "from-sqfs"
    t.mkdir()
    subprocess.run(["tar", "-C", str(t), "-xzf", str(entry / "tiny.tar.gz")], check=True)
    subprocess.run(
        ["unsquashfs", "-q", "-n", "-d", str(s), str(entry / "tiny.sqfs")],
        check=True,
        capture_output=True,
    )
    assert tree_digest(t).digest == tree_digest(s).digest == m.tree_digest


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "dir"])
def test_verify_names_the_damaged_export(store_dir: Path, tree: Path, damage: str) -> None:
    store.add_to_store("tiny", tree, "h")
    entry = store.entry_dir("tiny")
    tar = entry / "tiny.tar.gz"
    if damage == "flip":
        data = bytearray(tar.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tar.write_bytes(bytes(data))
        want = (str(tar), "corrupted")
    elif damage == "truncate":
        tar.write_bytes(tar.read_bytes()[:-7])
        want = (str(tar), "truncated")
    elif damage == "delete":
        tar.unlink()
        want = (str(tar), "missing")
    else:
        (entry / "dir" / "etc" / "passwd").write_text("evil\n")
        want = (str(entry / "dir"), "changed")
    _, problems = store.verify("tiny")
    assert [(p.path, p.what) for p in problems] == [want]


def test_failed_export_leaves_no_entry(store_dir: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(t: Path, fmt: ExportFormat, out: Path) -> None:
        calls.append(fmt)
        if fmt is ExportFormat.SQUASHFS:
            raise ImageError("mksquashfs exploded")
        out.write_bytes(b"partial")

    monkeypatch.setattr(store, "export_file", broken)
    with pytest.raises(ImageError, match="exploded"):
        store.add_to_store("tiny", tree, "h")
    assert calls == [ExportFormat.TAR_GZ, ExportFormat.SQUASHFS]
    assert list(store_dir.iterdir()) == [store_dir / ".lock-tiny"]
    assert store.list_names() == []


def test_space_check_says_where_and_how_much(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"no space left under .*needed about \d+ MB"):
        store.check_space(tmp_path / "a" / "b", 1 << 60, ALL_FORMATS)
