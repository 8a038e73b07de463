"""The node agent's steps for real on the host, for every registered method (needs root).

Each test runs the agent bundle with the system python3 (as on a node: no venv), and again with a
Python 3.6 (RHEL 8's; skipped with a message where none is installed), against a small
image exported into a temporary store, staging into a tmpfs mounted in a temporary directory.
The collective step of broadcast methods (sbcast) is played by a copy here; the cluster tests
run the real sbcast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shoal.bundle import write_bundle
from shoal.errors import PrivilegeError
from shoal.staging import base, registry
from shoal.staging.record import STAGE_KEYS
from tests.python36 import python36

PYTHON = "/usr/bin/python3"
# the nodes' interpreters: Debian 12's, and RHEL 8's Python 3.6 where one is installed
PYTHONS = [pytest.param(PYTHON, id="py3"), pytest.param("3.6", id="py3.6")]
JOB = "4242"
IMAGE = "tiny"

pytestmark = pytest.mark.root  # mounts, loop devices

METHODS = registry.method_names()


def _mounts_under(prefix: Path) -> list[str]:
    return [m.target for m in base.mounts_under(str(prefix))]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from shoal.images.store import add_to_store
    from shoal.images.synth import synth_image

    root = tmp_path_factory.mktemp("store")
    tree = root.parent / "tree"
    synth_image("many-small", tree, scale=0.01, seed=5)  # 200 files of 1-8 KiB + skeleton
    os.environ["SHOAL_STORE"] = str(root)
    try:
        add_to_store(IMAGE, tree, "test")
    finally:
        del os.environ["SHOAL_STORE"]
    shutil.rmtree(tree)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Agent:
    """The bundle and the interpreter that runs it, as on a node (-I: no user site, no venv)."""

    path: Path
    python: str

    def argv(self, *args: str, flags: tuple[str, ...] = ("-I",)) -> list[str]:
        return [self.python, *flags, str(self.path), *args]


@pytest.fixture(scope="module", params=PYTHONS)
def agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Agent:
    python = request.param if request.param != "3.6" else python36()
    return Agent(write_bundle(tmp_path_factory.mktemp("agent") / "agent.pyz"), python)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", autouse=True)
def oci_registry(store: Path, agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real docker-registry on loopback, as on the storage host: a writable instance the test
    pushes the image to, and a read-only one the `registry` method pulls from."""
    import time

    from shoal.cluster.storage import render_registry_config
    from shoal.staging.oci import REGISTRY_ENV

    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry not installed (make setup)")
    d = tmp_path_factory.mktemp("registry")
    procs = []
    urls = []
    for ro in (False, True):
        port = _free_port()
        conf = d / f"{'ro' if ro else 'rw'}.yml"
        conf.write_text(render_registry_config(f"127.0.0.1:{port}", d / "root", readonly=ro,
                                               secret="x" * 32))
        procs.append(subprocess.Popen(["docker-registry", "serve", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        import urllib.request

        for u in urls:
            for _ in range(100):
                try:
                    urllib.request.urlopen(u + "/v2/", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.05)
        rec = agent_run(agent, store, store, "registry-push", "--image", IMAGE,
                        "--registry", urls[0])
        assert rec["ok"] and rec["pushed"], rec
        again = agent_run(agent, store, store, "registry-push", "--image", IMAGE,
                          "--registry", urls[0])
        assert again["ok"] and not again["pushed"], again  # idempotent
        from shoal.staging.oci import Client, RegistryError

        with pytest.raises(RegistryError, match="HTTP 405"):  # the public one is read-only
            Client(urls[1]).request("POST", "/v2/shoal/other/blobs/uploads/", want=(202,))
        os.environ[REGISTRY_ENV] = urls[1]
        yield urls[1]
    finally:
        os.environ.pop(REGISTRY_ENV, None)
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "node-tmp"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        for m in sorted(_mounts_under(mnt), key=len, reverse=True):
            if m != str(mnt):
                subprocess.run(["umount", "-l", m], check=False)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def agent_run(agent: Agent, store: Path, stage_root: Path, *args: str,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        agent.argv("--store", str(store), "--stage-root", str(stage_root),
                   "--mount-root", str(stage_root.parent / "jobs"), *args),
        capture_output=True, text=True, timeout=120, env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    rec: dict[str, Any] = json.loads(lines[0])
    assert proc.returncode == (0 if rec["ok"] else 1), proc.stderr
    return rec


def play_collective(method: str, store: Path, root: Path, agent: Agent) -> None:
    m = registry.get_method(method)
    if m.collective == "sbcast":
        ctx = base.Context(JOB, IMAGE, str(store), {}, str(root))
        shutil.copy(ctx.artifact(m.artifact), ctx.local_artifact(m.artifact))
    elif m.collective == "bcast":
        # the real broadcast, on a one-node "step": the root reads the store and unpacks/keeps
        env = {"PATH": os.environ["PATH"], "SLURMD_NODENAME": "solo",
               "SHOAL_BCAST_TOKEN": "t" * 64}
        rec = agent_run(agent, store, root, "bcast", "--job", JOB, "--image", IMAGE,
                        "--method", method, "--nodes", "solo", env=env)
        assert rec["ok"] and rec["sha256"] and rec["storage_bytes_read"] > 0, rec
        assert rec["cpu_seconds"] >= 0 and rec["bytes"] == rec["storage_bytes_read"]


def loops_on(path: str) -> list[str]:
    out = subprocess.run(["losetup", "-j", path], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


@pytest.mark.parametrize("method", METHODS)
def test_stage_verify_cleanup(method: str, store: Path, agent: Agent, tmpfs: Path) -> None:
    root = tmpfs / "shoal"
    manifest = json.loads((store / IMAGE / "manifest.json").read_text())
    common = ("--job", JOB, "--image", IMAGE)
    rec = agent_run(agent, store, root, "check", *common, "--method", method)
    assert rec["ok"], rec
    play_collective(method, store, root, agent)
    rec = agent_run(agent, store, root, "stage", *common, "--method", method)
    assert rec["ok"], rec
    assert rec["method"] == method and rec["job"] == JOB and rec["node"]
    assert rec["image_digest"] == manifest["tree_digest"]
    assert rec["end"] >= rec["start"] and rec["stage_seconds"] >= 0
    assert set(STAGE_KEYS) <= set(rec)
    for k in ("stage_bytes_from_storage", "bytes_net_rx", "bytes_net_tx", "peak_bytes"):
        assert isinstance(rec[k], int) and rec[k] >= 0, k
    assert rec["stage_cpu_seconds"] >= 0
    staged = Path(rec["staged"])
    assert (staged / "etc" / "passwd").is_file()
    assert sum(1 for _ in (staged / "data").rglob("f*")) == 200
    if method == "registry":
        assert rec["registry_bytes"] == rec["stage_bytes_from_storage"] == \
            manifest["sizes"][f"{IMAGE}.tar.gz"]
    if method in ("untar", "sbcast", "bcast", "registry"):
        assert staged == root / JOB / IMAGE
        assert rec["peak_bytes"] >= manifest["bytes"]
    if method == "untar":
        assert rec["stage_bytes_from_storage"] == manifest["sizes"][f"{IMAGE}.tar.gz"]
    if method in ("squashfs-kernel", "squashfuse", "sbcast-squashfs", "bcast-squashfs"):
        assert os.path.ismount(staged)
    if method == "shared-dir":
        assert staged == store / IMAGE / "dir"

    rec = agent_run(agent, store, root, "verify", *common)
    assert rec["ok"] and rec["digest"] == manifest["tree_digest"], rec

    if method in ("squashfs-kernel", "squashfuse"):
        # a workload's reads through the mount show up in cleanup's figures
        for p in (staged / "data").rglob("f*"):
            p.read_bytes()
    rec = agent_run(agent, store, root, "cleanup", "--job", JOB)
    assert rec["ok"] and rec["left"] == [], rec
    if method in ("squashfs-kernel", "squashfuse"):
        assert rec["figures"][IMAGE]["mount_bytes_read"] > 0
    assert _mounts_under(tmpfs) == [str(tmpfs)]
    assert not (root / JOB).exists()
    for sq in (store / IMAGE / f"{IMAGE}.sqfs", root / JOB / f"{IMAGE}.sqfs"):
        assert loops_on(str(sq)) == []
    # the store entry is untouched by staging and cleanup
    assert (store / IMAGE / "dir" / "etc" / "passwd").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_cleanup_is_idempotent(method: str, store: Path, agent: Agent, tmpfs: Path) -> None:
    root = tmpfs / "shoal"
    rec = agent_run(agent, store, root, "stage", "--job", JOB, "--image", IMAGE,
                    "--method", method) if not registry.get_method(method).collective else None
    if rec is not None:
        assert rec["ok"], rec
    for _ in range(2):
        rec = agent_run(agent, store, root, "cleanup", "--job", JOB, "--image", IMAGE)
        assert rec["ok"], rec
    rec = agent_run(agent, store, root, "cleanup", "--job", JOB)
    assert rec["ok"] and not (root / JOB).exists(), rec


def test_tmpfs_too_small(store: Path, agent: Agent, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        for method in ("untar", "sbcast"):
            rec = agent_run(agent, store, small / "shoal", "stage" if method == "untar" else "check",
                            "--job", JOB, "--image", IMAGE, "--method", method)
            assert not rec["ok"]
            assert "node-local storage too small" in rec["error"], rec
            assert "MiB free" in rec["error"]
            assert not (small / "shoal" / JOB / IMAGE).exists()  # refused before unpacking
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_verify_catches_flipped_byte(store: Path, agent: Agent, tmpfs: Path) -> None:
    root = tmpfs / "shoal"
    rec = agent_run(agent, store, root, "stage", "--job", JOB, "--image", IMAGE,
                    "--method", "untar")
    victim = next((Path(rec["staged"]) / "data").rglob("f*"))
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    rec = agent_run(agent, store, root, "verify", "--job", JOB, "--image", IMAGE)
    assert not rec["ok"] and "differs from the manifest" in rec["error"]
    assert agent_run(agent, store, root, "cleanup", "--job", JOB)["ok"]


def test_failed_stage_leaves_nothing(store: Path, agent: Agent, tmpfs: Path,
                                     tmp_path: Path) -> None:
    bad = tmp_path / "badstore"
    shutil.copytree(store / IMAGE, bad / IMAGE, symlinks=True)
    tar = bad / IMAGE / f"{IMAGE}.tar.gz"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated in transit
    root = tmpfs / "shoal"
    rec = agent_run(agent, bad, root, "stage", "--job", JOB, "--image", IMAGE,
                    "--method", "untar")
    assert not rec["ok"] and "unpacking" in rec["error"]
    assert not (root / JOB / IMAGE).exists()
    shutil.rmtree(bad)


def test_unknown_image_and_method(store: Path, agent: Agent, tmpfs: Path) -> None:
    root = tmpfs / "shoal"
    rec = agent_run(agent, store, root, "stage", "--job", JOB, "--image", "nope",
                    "--method", "untar")
    assert not rec["ok"] and "not in the store" in rec["error"]
    rec = agent_run(agent, store, root, "stage", "--job", JOB, "--image", IMAGE,
                    "--method", "carrier-pigeon")
    assert not rec["ok"] and "unknown distribution method" in rec["error"]
    assert "untar" in rec["hint"]


def test_privileged_methods_fail_up_front_unprivileged(store: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ctx = base.Context(JOB, IMAGE, str(store), {}, str(tmp_path / "shoal"))
    for name in METHODS:
        m = registry.get_method(name)
        if m.privileged:
            with pytest.raises(PrivilegeError, match="needs root"):
                m.check(ctx)
        else:
            m.check(ctx)
    assert not (tmp_path / "shoal").exists()


def _hook(agent: Agent, store: Path, tmpfs: Path, hook: str, env: dict[str, str]) -> None:
    proc = subprocess.run(agent.argv("--store", str(store), "--stage-root", str(tmpfs / "shoal"),
                                     "--mount-root", str(tmpfs / "jobs"), hook),
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("method", [m for m in METHODS if registry.get_method(m).prolog])
def test_prolog_epilog(method: str, store: Path, agent: Agent, tmpfs: Path) -> None:
    """The job comment slurmctld keeps asks; the Prolog mounts on a root-made directory; the
    job's user gets its own area; the Epilog undoes both."""
    env = {"SLURM_JOB_ID": JOB, "SLURM_JOB_UID": "1000", "SLURM_JOB_GID": "1000",
           "SLURM_JOB_COMMENT": f"shoal-stage={method}:{IMAGE}"}
    os.chmod(tmpfs / "..", 0o755)
    _hook(agent, store, tmpfs, "prolog", env)
    staged = tmpfs / "jobs" / JOB / IMAGE
    assert os.path.ismount(staged)
    st = os.stat(tmpfs / "jobs" / JOB)
    assert st.st_uid == 0 and not st.st_mode & 0o022
    user = os.stat(tmpfs / "shoal" / JOB)
    assert (user.st_uid, oct(user.st_mode & 0o777)) == (1000, "0o700")
    # the job's own step reports the Prolog's staging
    rec = agent_run(agent, store, tmpfs / "shoal", "stage", "--job", JOB, "--image", IMAGE,
                    "--method", method)
    assert rec["ok"] and rec["staged_by"] == "prolog" and rec["reported_by"] == "step"
    assert rec["staged"] == str(staged)
    _hook(agent, store, tmpfs, "epilog", env)
    assert not (tmpfs / "jobs" / JOB).exists() and not (tmpfs / "shoal" / JOB).exists()
    assert loops_on(str(store / IMAGE / f"{IMAGE}.sqfs")) == []


def test_prolog_refuses_what_the_admin_did_not_put_in_the_store(store: Path, agent: Agent,
                                                                 tmpfs: Path) -> None:
    env = {"SLURM_JOB_ID": JOB, "SLURM_JOB_UID": "1000", "SLURM_JOB_GID": "1000"}
    # a user's image: its directory belongs to the user
    own = store / "users-own"
    shutil.copytree(store / IMAGE, own)
    os.chown(own, 1000, 1000)
    try:
        for comment in ("shoal-stage=squashfs-kernel:../etc", "shoal-stage=squashfs-kernel:nope",
                        "shoal-stage=squashfs-kernel:users-own", "shoal-stage=untar:" + IMAGE,
                        f"shoal-stage=squashfs-kernel:{IMAGE}/x"):
            _hook(agent, store, tmpfs, "prolog", {**env, "SLURM_JOB_COMMENT": comment})
            assert _mounts_under(tmpfs) == [str(tmpfs)], comment
            _hook(agent, store, tmpfs, "epilog", env)
    finally:
        shutil.rmtree(own)


def test_user_area_survives_no_planted_symlink(tmp_path: Path) -> None:
    """Attack 1 of docs/SECURITY.md at the unit level: a symlink a user planted where the next job's
    directory goes is moved aside, never followed; the Epilog removes only the job's own dir."""
    from shoal.staging import privileged as priv

    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    os.chmod(tmp, 0o1777)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0\n")
    (tmp / "shoal").symlink_to(victim)
    os.lchown(tmp / "shoal", 1000, 1000)
    d = priv.user_job_dir(str(tmp / "shoal"), "7", 1000, 1000)
    assert not (tmp / "shoal").is_symlink() and os.stat(tmp / "shoal").st_uid == 0
    assert os.stat(victim).st_uid == 0 and os.stat(d).st_uid == 1000
    # the user's job plants a link in its own dir; the Epilog sweeps as the user
    (Path(d) / "x").symlink_to(victim / "passwd")
    from shoal.staging.nodeagent import sweep

    assert priv.remove_user_job_dir(str(tmp / "shoal"), "7", 1000, 1000, sweep) == []
    assert (victim / "passwd").read_text() == "root:x:0:0\n" and not Path(d).exists()


@pytest.mark.parametrize("comment,want", [
    (None, None), ("", None), ("a note", None),
    ("shoal-stage=squashfs-kernel:img", ("squashfs-kernel", "img")),
    ("note shoal-stage=squashfuse:a.b-c_1 more", ("squashfuse", "a.b-c_1")),
])
def test_parse_comment(comment: str | None, want: tuple[str, str] | None) -> None:
    from shoal.staging.privileged import parse_comment

    assert parse_comment(comment) == want


@pytest.mark.parametrize("comment", [
    "shoal-stage=squashfs-kernel", "shoal-stage=x:../etc", "shoal-stage=x:/abs",
    "shoal-stage=X:img", "shoal-stage=a:b shoal-stage=c:d", "shoal-stage=x:.hidden",
])
def test_parse_comment_refuses(comment: str) -> None:
    from shoal.staging.privileged import Refused, parse_comment

    with pytest.raises(Refused):
        parse_comment(comment)


def test_bundle_needs_only_the_standard_library(agent: Agent) -> None:
    # -I -S: no site-packages at all, as on a node with a bare python3
    proc = subprocess.run(agent.argv("methods", flags=("-I", "-S")), capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(proc.stdout)["methods"] == METHODS
