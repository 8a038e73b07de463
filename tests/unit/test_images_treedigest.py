"""The file-tree digest: what changes it, what does not, and that nodes can run it stdlib-only."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.images import treedigest
from shoal.images.treedigest import tree_digest


def make_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "conf").write_text("a=1\n")
    (root / "empty").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "etc" / "zero").write_bytes(b"")
    return root


def test_identical_trees_have_equal_digests(tmp_path: Path) -> None:
    a = tree_digest(make_tree(tmp_path / "a"))
    b = tree_digest(make_tree(tmp_path / "b"))
    assert a == b
    assert a.file_count == 3
    assert a.bytes == len(b"#!/bin/sh\necho hi\n") + len(b"a=1\n")
    assert a.entries == 7


@pytest.mark.parametrize(
    "change",
    [
        "flip_byte",
        "truncate",
        "mode",
        "symlink_target",
        "rename",
        "add_empty_dir",
        "add_empty_file",
        "dir_mode",
    ],
)
def test_every_content_change_changes_the_digest(tmp_path: Path, change: str) -> None:
    root = make_tree(tmp_path / "t")
    before = tree_digest(root).digest
    conf = root / "etc" / "conf"
    if change == "flip_byte":
        data = bytearray(conf.read_bytes())
        data[0] ^= 0x01
        conf.write_bytes(bytes(data))
    elif change == "truncate":
        conf.write_bytes(conf.read_bytes()[:-1])
    elif change == "mode":
        conf.chmod(0o600)
    elif change == "symlink_target":
        (root / "lib").unlink()
        (root / "lib").symlink_to("usr/lib64")
    elif change == "rename":
        conf.rename(root / "etc" / "conf2")
    elif change == "add_empty_dir":
        (root / "new").mkdir()
    elif change == "add_empty_file":
        (root / "empty" / "f").write_bytes(b"")
    elif change == "dir_mode":
        (root / "empty").chmod(0o700)
    assert tree_digest(root).digest != before


def test_times_and_root_mode_do_not_count(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    before = tree_digest(root).digest
    os.utime(root / "etc" / "conf", (1, 1))
    root.chmod(0o700)
    assert tree_digest(root).digest == before


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        tree_digest(tmp_path / "missing")


def test_module_imports_only_the_standard_library() -> None:
    # The distribution code copies this file onto nodes that have only python3.
    src = Path(treedigest.__file__).read_text()
    for node in ast.walk(ast.parse(src)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for n in names:
            top = n.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", n


def test_runs_as_a_script_with_isolated_python(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    out = subprocess.run(
        [sys.executable, "-I", "-S", treedigest.__file__, str(root)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    data = json.loads(out)
    assert data["digest"] == tree_digest(root).digest
    assert data["file_count"] == 3
    bad = subprocess.run(
        [sys.executable, "-I", "-S", treedigest.__file__, str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
