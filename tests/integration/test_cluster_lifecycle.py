"""Cluster life cycle: down leaves nothing, also after kill -9; bad input fails cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cluster import enter, manager, netns
from shoal.cluster.config import ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.cluster.topology import Addressing
from shoal.errors import ClusterError
from tests.conftest import wait_idle

pytestmark = pytest.mark.cluster
SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def leftovers(name: str, index: int, nodes: list[str]) -> list[str]:
    left: list[str] = []
    for h in ["ctl", *nodes]:
        if Path(f"/run/netns/shoal-{name}-{h}").exists():
            left.append(f"netns {h}")
    if Path(f"/sys/class/net/shb-{name}").exists():
        left.append("bridge")
    mounts = Path("/proc/self/mountinfo").read_text()
    if f"/clusters/{name}/" in mounts or f"shoal-{name}-" in mounts:
        left.append("mount")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if f"clusters/{name}/".encode() in env:
                left.append(f"process {pid}")
    if ClusterDir(name).root.exists():
        left.append("state dir")
    return left


@pytest.fixture
def small_cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    name = "lc" + str(abs(hash(request.node.name)) % 1000)
    with manager.booted(ClusterConfig(name=name, nodes=2)):
        yield name


def test_down_removes_everything(small_cluster: str) -> None:
    state = ClusterDir(small_cluster).load()
    assert leftovers(small_cluster, state.index, state.nodes) != []  # it is really there
    assert manager.down(small_cluster) == []
    assert leftovers(small_cluster, state.index, state.nodes) == []


def test_down_after_kill_9_of_every_process(small_cluster: str) -> None:
    state = ClusterDir(small_cluster).load()
    inodes = {netns.netns_inode(state.netns(h)) for h in state.all_hosts()}
    pids = netns.pids_in_netns({i for i in inodes if i is not None})
    pids += [state.controller_pid, *state.node_pids.values()]
    assert len(pids) > 10
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert manager.down(small_cluster) == []
    assert leftovers(small_cluster, state.index, state.nodes) == []


def test_taken_name_is_refused(small_cluster: str) -> None:
    with pytest.raises(ClusterError, match="already exists"):
        manager.up(ClusterConfig(name=small_cluster, nodes=1), progress=False)
    # ... and the running cluster is untouched
    st = manager.node_states(ClusterDir(small_cluster).load())
    assert set(st.values()) == {"idle"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nodes", "0"], "--nodes 0 is out of range: a virtual cluster has 1 to "),
        (["--nodes", "500"], "at most"),
        (["--nodes", "513"], "--nodes 513 is out of range: a virtual cluster has 1 to 512"),
        (["--network", "infiniband"], "not a known profile"),
        (["--name", "Bad_Name"], "not a valid cluster name"),
    ],
)
def test_bad_input_one_line_error_nothing_created(args: list[str], needle: str, tmp_path: Path) -> None:
    name = "badin"
    cmd = SHOAL + ["cluster", "up", *(["--name", name] if "--name" not in args else []), *args]
    env = dict(os.environ)
    if "500" in args:
        # the capacity check believes the latest measurement: here one of 200 MiB per idle node
        (tmp_path / "capacity.json").write_text(json.dumps(
            {"x": {"layer1": "x", "pss_mb": 200.0, "uss_mb": 190.0, "nodes": 4, "measured": time.time()}}))
        env["SHOAL_STATE"] = str(tmp_path)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode != 0
    assert needle in res.stderr
    assert "hint:" in res.stderr
    assert "Traceback" not in res.stderr
    assert not ClusterDir(name).root.exists()
    if "500" in args:  # the refusal names the real limit and what it came from
        assert "PSS 200.0 MiB per idle node measured on 4 nodes" in res.stderr
        assert not (tmp_path / "clusters" / name).exists()


def test_not_root_is_refused() -> None:  # as root, to drop privileges (module: cluster)
    res = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *SHOAL,
         "cluster", "up", "--name", "nr", "--nodes", "1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/tmp"},
    )
    assert res.returncode != 0
    assert "needs root" in res.stderr
    assert not ClusterDir("nr").root.exists()


def test_two_clusters_run_at_once_on_distinct_subnets(small_cluster: str) -> None:
    other = small_cluster + "b"
    # booted raises ClusterError naming anything taking `other` down left behind
    with manager.booted(ClusterConfig(name=other, nodes=1, accounting=False)):
        a, b = ClusterDir(small_cluster).load(), ClusterDir(other).load()
        assert a.index != b.index and a.bridge != b.bridge
        for st in (a, b):
            out = subprocess.run(
                [*enter.enter_prefix(st, "ctl"), "srun", "-N1", "sh", "-c", "hostname -I"],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout
            assert out.startswith(Addressing(st.index).prefix)
    # taking one down leaves the other running (its srun's Epilog may still run: wait_idle)
    state = ClusterDir(small_cluster).load()
    assert set(wait_idle(state, state.nodes).values()) == {"idle"}
