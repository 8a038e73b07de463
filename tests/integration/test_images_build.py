"""Real image builds, exports and runs (Charliecloud, squashfs-tools; root for layer1).

Builds go through the shared build cache (/var/cache/shoal or $SHOAL_CACHE), so only the first
run of the session is slow; exports go to a scratch store that is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli import jsonout
from shoal.cli.main import main as shoal_main
from shoal.errors import ImageError
from shoal.images import build, catalog, store
from shoal.images.store import ExportFormat
from shoal.images.treedigest import tree_digest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,  # builds and exports into the shared cache and store
]

CH_ENV = {**os.environ, "USER": os.environ.get("USER", "root")}


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="shoal-images-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def scratch_store(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = scratch / "store"
    monkeypatch.setenv("SHOAL_STORE", str(d))
    return d


@pytest.fixture(scope="module")
def mpihello() -> build.BuiltImage:
    return catalog.build_named("mpihello")


def ch_run(image: Path, *cmd: str, timeout: float = 120, mount: Path | None = None) -> str:
    # A SquashFS is FUSE-mounted by ch-run; by default under /var/tmp/$USER.ch, kept afterwards.
    opts = [f"--mount={mount}"] if mount is not None else []
    done = subprocess.run(
        ["ch-run", *opts, str(image), "--", *cmd],
        env=CH_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_mpihello_tarball_and_squashfs_unpack_to_the_same_tree(
    mpihello: build.BuiltImage, scratch_store: Path, scratch: Path
) -> None:
    m = store.add_to_store(
        "mpihello", mpihello.path, mpihello.inputs_hash, [ExportFormat.TAR_GZ, ExportFormat.SQUASHFS]
    )
    entry = store.entry_dir("mpihello")
    from_tar, from_sqfs = scratch / "tar", scratch / "sqfs"
    from_tar.mkdir()
    subprocess.run(["tar", "-C", str(from_tar), "-xzf", str(entry / "mpihello.tar.gz")], check=True)
    subprocess.run(
        ["unsquashfs", "-q", "-n", "-d", str(from_sqfs), str(entry / "mpihello.sqfs")],
        check=True,
        capture_output=True,
    )
    t, s = tree_digest(from_tar), tree_digest(from_sqfs)
    assert t.digest == s.digest == m.tree_digest
    assert t.file_count == m.file_count > 1000
    assert (from_tar / "usr" / "local" / "bin" / "mpihello").is_file()


def test_verify_catches_a_flipped_byte(
    mpihello: build.BuiltImage, scratch_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.add_to_store("mpihello", mpihello.path, mpihello.inputs_hash, [ExportFormat.SQUASHFS])
    assert shoal_main(["image", "verify", "mpihello"]) == 0
    sqfs = store.entry_dir("mpihello") / "mpihello.sqfs"
    with open(sqfs, "r+b") as fh:
        fh.seek(sqfs.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0x01]))
    capsys.readouterr()
    assert shoal_main(["image", "verify", "mpihello"]) == ImageError.exit_code
    err = capsys.readouterr().err
    assert str(sqfs) in err.replace("\n", "") and "corrupted" in err
    assert "shoal image export mpihello" in err


def test_mpihello_runs_two_ranks_from_dir_and_squashfs(
    mpihello: build.BuiltImage, scratch_store: Path, scratch: Path
) -> None:
    store.add_to_store(
        "mpihello", mpihello.path, mpihello.inputs_hash, [ExportFormat.DIR, ExportFormat.SQUASHFS]
    )
    entry = store.entry_dir("mpihello")
    for image in (entry / "dir", entry / "mpihello.sqfs"):
        mnt = scratch / "mnt"
        mnt.mkdir(exist_ok=True)
        out = ch_run(
            image,
            *("mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", "mpihello"),
            mount=mnt if image.suffix == ".sqfs" else None,
        )
        lines = out.splitlines()
        assert sorted(ln.split()[0] for ln in lines if ln.startswith("rank=")) == [
            "rank=0",
            "rank=1",
        ]
        assert "ring passed size=2" in lines
        fom = json.loads(next(ln for ln in lines if ln.startswith("{")))
        assert fom["workload"] == "mpihello" and fom["ring_passed"] is True


def test_lammps_lj_on_two_ranks() -> None:
    lammps = catalog.build_named("lammps")
    out = ch_run(
        lammps.path,
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        "2",
        "lammps-lj",
        timeout=300,
    )
    fom = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
    assert fom["workload"] == "lammps"
    assert fom["procs"] == 2 and fom["atoms"] == 32000 and fom["steps"] == 100
    assert fom["exit_code"] == 0 and fom["loop_s"] > 0


def test_cli_export_list_rm(
    mpihello: build.BuiltImage,
    scratch_store: Path,
    scratch: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = scratch / "plain"
    assert shoal_main(["image", "export", "mpihello", "--format", "tar.gz", "--to", str(plain)]) == 0
    assert [p.name for p in plain.iterdir()] == ["mpihello.tar.gz"]
    assert not scratch_store.exists()  # --to does not touch the store
    assert shoal_main(["image", "export", "mpihello"]) == 0
    capsys.readouterr()
    assert shoal_main(["image", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not jsonout.problems(doc, jsonout.SCHEMAS["image.list"]) and doc["kind"] == "image.list"
    listed = doc["images"]
    assert [m["name"] for m in listed] == ["mpihello"]
    assert set(listed[0]["exports"]) == {"tar.gz", "squashfs", "dir"}
    assert listed[0]["inputs_hash"] == mpihello.inputs_hash
    assert shoal_main(["image", "rm", "mpihello"]) == 0
    assert store.list_names() == []
    assert shoal_main(["image", "export", "no-such-image"]) == ImageError.exit_code
    assert "known images:" in capsys.readouterr().err


def test_build_failure_names_the_failing_step(scratch: Path) -> None:
    name = f"shoal-test-fail-{os.getpid()}"
    (scratch / "Dockerfile").write_text(
        "FROM shoal-base\nRUN echo fine\nRUN echo about-to-fail && false\nRUN echo never\n"
    )
    try:
        with pytest.raises(ImageError) as info:
            build.build_image(name, scratch / "Dockerfile", scratch)
        assert "step 3: RUN echo about-to-fail && false" in info.value.message
        assert "about-to-fail" in info.value.message.split("output tail:")[1]
        assert not build.image_dir(name).exists()
    finally:
        build.delete_image(name)
        (build.markers_dir() / f"{name}.log").unlink(missing_ok=True)
        (build.markers_dir() / f".lock-{name}").unlink(missing_ok=True)


def test_layer1_has_no_secrets_and_munge_owns_its_dirs() -> None:
    from shoal.images.layer1 import MUNGE_DIRS, ensure_layer1, lookup_id

    img = ensure_layer1()
    assert img.size_bytes < 362 * 10**6
    assert not (img.path / "etc" / "munge" / "munge.key").exists()
    assert not list((img.path / "etc" / "ssh").glob("ssh_host_*"))
    uid = lookup_id(img.path / "etc" / "passwd", "munge")
    for rel, mode in MUNGE_DIRS.items():
        st = (img.path / rel).stat()
        assert st.st_uid == uid and st.st_mode & 0o7777 == mode, rel
    for prog in ("usr/sbin/slurmd", "usr/sbin/munged", "usr/sbin/sshd", "usr/bin/supervisord"):
        assert (img.path / prog).exists(), prog
    assert (img.path / "etc/supervisor/conf.d/30-slurmd.conf").is_file()
    again = ensure_layer1()
    assert again.cached and again.hash == img.hash
