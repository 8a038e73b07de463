"""Life cycle of one compute node container: prepare its upper layer, start it, stop it.

A node is PID 1 ``node-init.sh`` (shoal/cluster/files/) in new mount/uts/pid/ipc namespaces
joined to the node's network namespace; it assembles the node's root (overlay of the layer1 image
and a per-node upper layer holding only the node's placed files) and execs supervisord. Its
parameters are saved as ``env.json`` in the node's state directory, so a restart (rolling upgrade)
starts the same node again, optionally on a new image.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from shoal.cluster import netns, secrets
from shoal.cluster.enter import new_namespaces, pid1
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ClusterError
from shoal.fsutil import write_file
from shoal.runner import reap, spawn


def image_ids(image: Path, user: str) -> tuple[int, int]:
    """uid and gid of USER in the image's /etc/passwd."""
    for line in (image / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise ClusterError(f"the layer1 image has no user {user!r}", "rebuild it: `shoal image build layer1`")


def prepare_node(cd: ClusterDir, name: str) -> None:
    """A fresh per-node upper layer holding only the node's placed files (keys, hosts)."""
    nd = cd.node(name)
    for sub in ("upper", "work"):
        if (nd / sub).exists():
            shutil.rmtree(nd / sub)
    up_ = nd / "upper"
    for sub in ("work", "root", "upper/.oldroot", "upper/pfs", "upper/etc/slurm", "upper/etc/shoal",
                "upper/var/log/slurm"):
        (nd / sub).mkdir(parents=True, exist_ok=True)
    write_file(up_ / "etc/hosts", (cd.ctl / "etc" / "hosts").read_text())
    write_file(up_ / "etc/hostname", name + "\n")
    # fusermount3 and mount(8) read /etc/mtab, which image builds may leave out.
    (up_ / "etc/mtab").symlink_to("../proc/self/mounts")
    secrets.place_in_node(cd, up_)


def save_env(cd: ClusterDir, name: str, env: dict[str, str]) -> None:
    """The node's init parameters (node-init.sh's environment), kept for restarts."""
    (cd.node(name) / "env.json").write_text(json.dumps(env, indent=1, sort_keys=True))


def start_node(cd: ClusterDir, state: ClusterState, name: str, lower: Path | None = None,
               nicer: int = 0) -> int:
    """Start node `name`'s container from its saved environment (optionally on a new image);
    `nicer` > 0 runs it that much nicer than the caller (`up` runs at a raised priority)."""
    env = json.loads((cd.node(name) / "env.json").read_text())
    if lower is not None:
        env["SHOAL_LOWER"] = str(lower)
        save_env(cd, name, env)
    argv = new_namespaces(state.netns(name), ["/bin/sh", str(cd.root / "node-init.sh")])
    return spawn(["nice", "-n", str(nicer), *argv] if nicer else argv,
                 log_path=cd.logs / f"{name}.console", env=env)


def stop_node(state: ClusterState, node: str, grace: float = 10.0) -> None:
    """Stop one node's container: TERM its supervisord, then sweep its network namespace."""
    with contextlib.suppress(ClusterError):
        netns.kill_all([pid1(state, node)], grace=grace)
    ino = netns.netns_inode(state.netns(node))
    if ino is not None:
        netns.kill_all(netns.pids_in_netns({ino}), grace=2.0)


def running(state: ClusterState, host: str, reap_first: bool = True) -> bool:
    """Is the container of `host` ('ctl' or a node) alive?"""
    pid = state.controller_pid if host == "ctl" else state.node_pids.get(host, 0)
    if reap_first:
        reap()
    return pid > 0 and netns.is_alive(pid)


def running_hosts(state: ClusterState, hosts: list[str]) -> list[str]:
    """Those of `hosts` whose container is alive (one reap for all: reap() polls every spawned
    process, so once per host was quadratic, 65,000 polls per check at 256 nodes)."""
    reap()
    return [h for h in hosts if running(state, h, reap_first=False)]
