"""layer1 post-processing on a fake built tree: ownership and modes munged insists on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import ImageError
from shoal.images import layer1
from shoal.runner import Completed, Runner, use_runner

root_only = pytest.mark.root  # chown


class DpkgRunner(Runner):
    def __init__(self, host: str, image: str) -> None:
        super().__init__()
        self.versions = {"/var/lib/dpkg": host}
        self.image = image

    def run(self, argv: Sequence[str], **kw: Any) -> Completed:
        args = [str(a) for a in argv]
        admindir = args[1].split("=", 1)[1]
        v = self.versions.get(admindir, self.image)
        return Completed(args, 0 if v else 1, v, "", 0.0)


def fake_tree(root: Path) -> Path:
    (root / "etc" / "munge").mkdir(parents=True)
    (root / "etc" / "ssh").mkdir()
    (root / "var" / "lib" / "munge").mkdir(parents=True)
    (root / "home" / "shoal").mkdir(parents=True)
    (root / "home" / "shoal" / ".bashrc").write_text("")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nmunge:x:100:101::/nonexistent:/usr/sbin/nologin\n"
        "shoal:x:1000:1000::/home/shoal:/bin/bash\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nmunge:x:101:\nshoal:x:1000:\n")
    return root


@root_only
def test_post_process_sets_owners_and_modes(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "t")
    with use_runner(DpkgRunner("22.05.8-4+deb12u3", "22.05.8-4+deb12u3")):
        layer1.post_process(tree)
    for rel, mode in layer1.MUNGE_DIRS.items():
        st = (tree / rel).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (100, 101, mode), rel
    assert (tree / "run" / "sshd").stat().st_mode & 0o777 == 0o755
    assert (tree / "home" / "shoal" / ".bashrc").stat().st_uid == 1000


@root_only
@pytest.mark.parametrize("secret", ["etc/munge/munge.key", "etc/ssh/ssh_host_ed25519_key"])
def test_post_process_refuses_baked_secrets(tmp_path: Path, secret: str) -> None:
    tree = fake_tree(tmp_path / "t")
    (tree / secret).write_text("secret")
    with use_runner(DpkgRunner("1", "1")), pytest.raises(ImageError, match="layer1 contains"):
        layer1.post_process(tree)


@root_only
def test_slurm_mismatch_is_an_error(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "t")
    with (
        use_runner(DpkgRunner("22.05.8-4+deb12u3", "22.05.8-4")),
        pytest.raises(ImageError, match="Slurm version mismatch"),
    ):
        layer1.post_process(tree)


def test_lookup_id(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "t")
    assert layer1.lookup_id(tree / "etc" / "passwd", "munge") == 100
    assert layer1.lookup_id(tree / "etc" / "group", "munge") == 101
    with pytest.raises(ImageError, match="no 'slurm' entry"):
        layer1.lookup_id(tree / "etc" / "passwd", "slurm")


# --- publishing: immutable per-hash trees ------------------------------------------------------


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """ensure_layer1 with the base and ch-image replaced: each 'build' writes a small tree."""
    from shoal.images import build

    monkeypatch.setenv("SHOAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SHOAL_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(layer1, "ensure_base_imported", lambda: "basehash")
    builds: list[str] = []

    def fake(name: str, dockerfile: Path, context: Path, **kw: Any) -> build.BuiltImage:
        h = build.inputs_hash(dockerfile, context, "basehash", extra=kw["post_version"])
        d = build.image_dir(name)
        (d / "usr" / "sbin").mkdir(parents=True)
        (d / "usr" / "sbin" / "slurmd").write_text(f"build {len(builds)}")
        (d / "etc").mkdir()
        (d / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        builds.append(h)
        return build.BuiltImage(name, d, h, False, 0.1)

    monkeypatch.setattr(layer1, "build_image", fake)
    return builds


def test_layer1_tree_is_published_once_per_hash(fake_build: list[str]) -> None:
    first = layer1.ensure_layer1()
    assert first.path == layer1.trees_root() / first.hash
    assert not first.cached
    from shoal.images.build import image_dir

    assert not image_dir("layer1").exists()  # moved out of ch-image storage
    second = layer1.ensure_layer1()
    assert second.cached and second.path == first.path
    assert len(fake_build) == 1


def test_layer1_rebuild_keeps_the_old_tree_for_running_clusters(fake_build: list[str]) -> None:
    first = layer1.ensure_layer1()
    old_inode = first.path.stat().st_ino
    again = layer1.ensure_layer1(rebuild=True)
    assert again.path == first.path
    assert again.path.stat().st_ino != old_inode
    kept = [d for d in layer1.trees_root().iterdir() if ".old-" in d.name]
    assert len(kept) == 1 and kept[0].stat().st_ino == old_inode


def test_layer1_prune_spares_trees_a_cluster_names(
    fake_build: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoal import paths

    root = layer1.trees_root()
    root.mkdir(parents=True)
    olds = []
    for i in range(5):
        d = root / f"old{i}"
        d.mkdir()
        os.utime(d, (i, i))
        olds.append(d)
    state = paths.clusters_root() / "c1"
    state.mkdir(parents=True)
    (state / "cluster.json").write_text(f'{{"layer1_image": "{olds[0]}"}}')
    monkeypatch.setattr(layer1, "KEEP_TREES", 2)
    cur = layer1.ensure_layer1()
    left = {d.name for d in root.iterdir() if not d.name.startswith(".")}
    assert cur.path.name in left and "old0" in left  # current, and in use by cluster c1
    assert len(left) == 3  # + one more of the newest
