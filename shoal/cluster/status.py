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


def dead_hosts(state: ClusterState) -> list[str]:
    """Hosts (controller, storage host, nodes) whose container is gone: a cluster with any is
    not up, whatever its state file says (a node's PID 1 that died stays dead)."""
    hosts = state.all_hosts()
    dead = [h for h in hosts if not host_running(state, h)]
    if state.storage == "sshfs" and state.storage_pid and not netns.is_alive(state.storage_pid):
        dead.append("storage")
    return dead


def live_phase(state: ClusterState) -> str:
    """The phase to show: the state file's, or "degraded" when an up cluster lost a host."""
    if state.phase != "up":
        return state.phase
    dead = dead_hosts(state)
    if not dead:
        return "up"
    shown = ", ".join(dead[:3]) + (f" +{len(dead) - 3}" if len(dead) > 3 else "")
    return f"degraded ({shown} not running)"


# supervisord states of a program that is up or on its way up (right after boot, say)
_HEALTHY = ("RUNNING", "STARTING")


def faults(state: ClusterState, nodes: list[NodeStatus]) -> list[str]:
    """What makes `cluster status` exit non-zero: dead hosts and programs not RUNNING."""
    out = [f"{h} not running" for h in dead_hosts(state)]
    for n in nodes:
        out += [f"{n.name}:{p.name} {p.state}" for p in n.programs if p.state not in _HEALTHY]
    return out


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
