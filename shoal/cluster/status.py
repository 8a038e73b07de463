"""What `shoal cluster status` reports: Slurm's view, each node's supervisord programs, memory.

Built for hundreds of nodes: one pass over /proc finds every node's processes, and the
supervisord XML-RPC calls (one per node, through its socket in the node's /run) run in a thread
pool, so the time is one process scan plus a few RPC round trips, not one scan per node.
Memory is PSS (shared pages split among the processes that map them): what a node really costs.
Idle nodes' PSS is kept as the measurement the capacity check uses (shoal/cluster/capacity.py).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shoal.cluster import capacity, manager, netns
from shoal.cluster.node import running as host_running
from shoal.cluster.node import running_hosts
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.cluster.supervisor import Program
from shoal.cluster.supervisor import supervisor_of as supervisor_of  # its home moved to supervisor.py
from shoal.errors import ClusterError

# supervisord answers in its one thread; more workers than this only queue on 2 cores
RPC_WORKERS = 16


@dataclass
class NodeStatus:
    name: str
    slurm_state: str
    running: bool
    programs: list[Program] = field(default_factory=list)
    rss_bytes: int = 0
    pss_bytes: int = 0  # what the node costs: shared pages split among their users
    uss_bytes: int = 0  # private pages only
    processes: int = 0


def memory_of_netns(ns: str) -> capacity.NodeMemory:
    """PSS/USS/RSS and count of the processes in one network namespace (the node's unshare
    wrapper is outside its pid namespace but inside its netns, so it counts too)."""
    ino = netns.netns_inode(ns)
    if ino is None:
        return capacity.NodeMemory()
    return capacity.memory_of(capacity.processes_by_netns([ino]).get(ino, []))


def rss_of_netns(ns: str) -> tuple[int, int]:
    """Total RSS (bytes) and count of the processes in one network namespace."""
    mem = memory_of_netns(ns)
    return mem.rss, mem.processes


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


def _programs(state: ClusterState, node: str, timeout: float = 5.0) -> list[Program]:
    try:
        return supervisor_of(state, node, timeout=timeout).programs()
    except ClusterError:
        return []


def cluster_status(name: str, record: bool = True) -> tuple[ClusterState, list[NodeStatus]]:
    state = ClusterDir(name).load()
    slurm = manager.node_states(state) if host_running(state, "ctl") else {}
    up = running_hosts(state, state.nodes)
    inodes = {n: netns.netns_inode(state.netns(n)) for n in up}
    by_ns = capacity.processes_by_netns(i for i in inodes.values() if i is not None)
    with ThreadPoolExecutor(max_workers=RPC_WORKERS) as pool:
        programs = dict(zip(up, pool.map(lambda n: _programs(state, n), up), strict=True))
    # a supervisord that did not answer in time on a loaded machine gets one longer try
    for n in [n for n in up if not programs[n]]:
        programs[n] = _programs(state, n, timeout=20.0)
    out: list[NodeStatus] = []
    idle: list[capacity.NodeMemory] = []
    for node in state.nodes:
        ns = NodeStatus(node, slurm.get(node, "?"), node in programs)
        if ns.running:
            ns.programs = programs[node]
            ino = inodes.get(node)
            mem = capacity.memory_of(by_ns.get(ino, []) if ino is not None else [])
            ns.rss_bytes, ns.pss_bytes, ns.uss_bytes, ns.processes = mem.rss, mem.pss, mem.uss, mem.processes
            if ns.slurm_state == "idle":
                idle.append(mem)
        out.append(ns)
    if record and state.phase == "up":
        # idle nodes only: a busy node's memory is its jobs', not what the node costs
        cost = capacity.cost_from(idle, len(state.nodes), state.layer1_hash)
        if cost is not None:
            with contextlib.suppress(OSError):
                capacity.record(cost)
    return state, out
