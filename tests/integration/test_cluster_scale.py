"""A 128-node cluster of full layer1 nodes: boot, address plan, srun fan-out, status, down.

It boots its own cluster (manager.booted), so it runs beside the session cluster; the whole test
takes 1-2 minutes on an idle 2-core machine (<= 4 minutes is the budget). Time bounds here are
loose (other users share the machine); the targets are measured by bench/bench_cluster.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from shoal.cluster import capacity, manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import enter_prefix
from shoal.cluster.state import ClusterState
from shoal.cluster.status import cluster_status
from shoal.cluster.topology import Addressing
from shoal.runner import run
from tests.conftest import SESSION_CLUSTER, wait_idle

pytestmark = pytest.mark.cluster

NODES = 128
NAME = f"{SESSION_CLUSTER[:7]}big"
MiB = 1 << 20


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[ClusterState, float]]:
    if os.geteuid() != 0:
        pytest.skip("virtual cluster tests need root")
    try:
        capacity.check_nodes(NODES)
    except Exception as exc:  # the machine is full of other clusters right now
        pytest.skip(f"no memory for {NODES} nodes now: {exc}")
    with manager.booted(ClusterConfig(name=NAME, nodes=NODES)) as res:
        yield res.state, res.boot_seconds
    # booted() raised if `down` left anything


def ctl(state: ClusterState, *cmd: str, timeout: float = 120) -> str:
    return run([*enter_prefix(state, "ctl"), *cmd], timeout=timeout).stdout


def test_boot_and_hostlist_config(big: tuple[ClusterState, float]) -> None:
    state, boot = big
    assert boot < 180, f"{NODES} nodes took {boot:.0f} s to be idle"
    conf = ctl(state, "cat", "/etc/slurm/slurm.conf")
    node_lines = [ln for ln in conf.splitlines() if ln.startswith("NodeName=")]
    assert node_lines[0].startswith("NodeName=node[1-128] ")  # 128 nodes fit one address block
    assert f"Nodes=node[1-{NODES}]" in conf


def test_srun_reaches_every_node_at_its_planned_address(big: tuple[ClusterState, float]) -> None:
    state, _ = big
    t0 = time.monotonic()
    out = ctl(state, "srun", f"-N{NODES}", "sh", "-c", 'echo "$(hostname) $(hostname -I)"')
    took = time.monotonic() - t0
    seen = dict(line.split()[:2] for line in out.splitlines() if line.strip())
    addr = Addressing(state.index)
    assert seen == {f"node{i}": addr.node(i) for i in range(1, NODES + 1)}
    assert took < 120, f"srun -N{NODES} took {took:.0f} s"


def test_ssh_to_the_last_node(big: tuple[ClusterState, float]) -> None:
    state, _ = big
    assert ctl(state, "ssh", f"node{NODES}", "hostname").strip() == f"node{NODES}"


def test_status_shows_every_node_running_with_its_pss(big: tuple[ClusterState, float]) -> None:
    state, _ = big
    # the srun test's job may still run 128 Epilogs on a loaded machine
    states = wait_idle(state, state.nodes)
    assert len(states) == NODES, f"slurmctld knows {len(states)} nodes"
    t0 = time.monotonic()
    _, nodes = cluster_status(state.name)
    took = time.monotonic() - t0
    assert len(nodes) == NODES
    busy = {n.name: n.slurm_state for n in nodes if n.slurm_state != "idle"}
    assert not busy, f"not idle after 120 s: {busy}"
    want = {"rsyslogd", "munged", "slurmd", "sshd"}
    for n in nodes:
        running = {p.name for p in n.programs if p.state == "RUNNING"}
        assert want <= running, f"{n.name}: {running}"
        assert 4 * MiB < n.pss_bytes < 64 * MiB and n.uss_bytes <= n.pss_bytes <= n.rss_bytes
    assert took < 60
    # the capacity check now uses this measurement
    cost = capacity.node_cost(state.layer1_hash)
    assert cost.nodes == NODES and cost.layer1 == state.layer1_hash
