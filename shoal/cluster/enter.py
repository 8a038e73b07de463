"""Entering the namespaces of a virtual cluster's hosts: starting a container in new ones, and
running a command inside a running one (the controller, a node).

Every host is a process tree in its own network namespace (made by shoal.cluster.netns) plus new
mount, uts, pid and ipc namespaces. ``new_namespaces`` is the argv that starts such a tree;
``enter_prefix`` the argv prefix that runs a command inside a running one, found through the PID 1
(supervisord) of its pid namespace.
"""

from __future__ import annotations

from pathlib import Path

from shoal.cluster import netns
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ClusterError
from shoal.slurm.client import SlurmClient


def new_namespaces(ns: str, argv: list[str]) -> list[str]:
    """argv that runs ARGV as PID 1 of new mount/uts/ipc/pid namespaces inside netns NS."""
    # nsenter (not `ip netns exec`, which remounts /sys and hides cgroups from slurmd), then new
    # mount/uts/pid/ipc namespaces; --kill-child ties the container's PID 1 to this process.
    return [
        "nsenter", f"--net={netns.NETNS_DIR / ns}", "--",
        "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
        "--propagation", "private", "--", *argv,
    ]


def pid1(state: ClusterState, host: str) -> int:
    """Host pid of the PID 1 (supervisord) of `host` ('ctl' or a node name)."""
    outer = state.controller_pid if host == "ctl" else state.node_pids.get(host, 0)
    if not outer:
        raise ClusterError(f"no node {host!r} in cluster {state.name!r}", f"nodes: {', '.join(state.nodes)}")
    try:
        children = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
    except OSError:
        children = []
    if not children:
        raise ClusterError(
            f"{host} of cluster {state.name!r} is not running",
            f"restart the cluster: `shoal cluster down --name {state.name}` then `up`",
        )
    return int(children[0])


def enter_prefix(state: ClusterState, host: str = "ctl") -> list[str]:
    """argv prefix that runs a command inside the namespaces of the controller or a node."""
    target = pid1(state, host)
    return [
        "nsenter", f"--target={target}", "--mount", "--uts", "--net", "--ipc", "--pid", "--",
        "/usr/bin/env", "-", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root", "USER=root", "LOGNAME=root", "LANG=C.UTF-8",
    ]


def slurm_prefix(name: str) -> list[str]:
    """argv prefix for Slurm client commands of cluster `name` (run on its controller)."""
    return enter_prefix(ClusterDir(name).load(), "ctl")


def slurm_client(state: ClusterState, timeout: float = 30.0) -> SlurmClient:
    """A SlurmClient whose commands run on the cluster's controller (its network only)."""
    return SlurmClient(enter_prefix(state, "ctl"), timeout=timeout)
