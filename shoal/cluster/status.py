"""What `shoal cluster status` reports: Slurm's view, each node's supervisord programs, memory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shoal.cluster import manager, netns
from shoal.cluster.enter import pid1
from shoal.cluster.node import running as host_running
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.cluster.supervisor import Program, Supervisor
from shoal.errors import ClusterError


@dataclass
class NodeStatus:
    name: str
    slurm_state: str
    running: bool
    programs: list[Program] = field(default_factory=list)
    rss_bytes: int = 0
    processes: int = 0


def supervisor_of(state: ClusterState, node: str) -> Supervisor:
    pid = pid1(state, node)
    return Supervisor(f"/proc/{pid}/root/run/supervisor.sock", node)


def rss_of_netns(ns: str) -> tuple[int, int]:
    """Total RSS (bytes) and count of the processes in one network namespace."""
    ino = netns.netns_inode(ns)
    if ino is None:
        return 0, 0
    total = 0
    pids = netns.pids_in_netns({ino})
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    # nsenter/unshare wrappers of the node are outside its pid namespace but inside its netns.
    return total, len(pids)


def cluster_status(name: str) -> tuple[ClusterState, list[NodeStatus]]:
    state = ClusterDir(name).load()
    slurm = manager.node_states(state) if host_running(state, "ctl") else {}
    out: list[NodeStatus] = []
    for node in state.nodes:
        running = host_running(state, node)
        ns = NodeStatus(node, slurm.get(node, "?"), running)
        if running:
            try:
                ns.programs = supervisor_of(state, node).programs()
            except ClusterError:
                ns.programs = []
            ns.rss_bytes, ns.processes = rss_of_netns(state.netns(node))
        out.append(ns)
    return state, out
