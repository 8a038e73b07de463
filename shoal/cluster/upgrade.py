"""Rolling upgrade of layer1 nodes: swap each node's container for one on a new image, no reboot.

Per node (in batches): drain it in Slurm (running jobs finish, no new ones start), stop its
container (supervisord as PID 1 stops the services), start a new container on the new layer1 image
with a fresh upper layer and the node's secrets placed again, wait until slurmd registers, resume it.
The node's network namespace, address and Slurm identity stay; the rest of the cluster keeps
running jobs throughout. This is what an admin does on a real site with a node-image swap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.cluster import manager, node
from shoal.cluster.enter import slurm_client
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ClusterError, ShoalError


@dataclass(frozen=True)
class NodeUpgrade:
    node: str
    old_hash: str
    new_hash: str
    drain_seconds: float
    swap_seconds: float


def _slurm_state(state: ClusterState, host: str) -> str:
    return manager.node_states(state).get(host, "")


def _scontrol(state: ClusterState, name: str, *settings: str) -> None:
    slurm_client(state).update_node(name, *settings)


def _wait(pred: Callable[[], bool], timeout: float, what: str, hint: str) -> float:
    t0 = time.monotonic()
    delay = 0.2
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise ClusterError(f"{what} did not happen within {timeout:.0f} s", hint)
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
    return time.monotonic() - t0


def slurmd_start_time(state: ClusterState, name: str) -> str:
    try:
        nodes = slurm_client(state).show_nodes()
    except ShoalError:
        return ""
    return next((n.raw.get("SlurmdStartTime", "") for n in nodes if n.name == name), "")


def _swap_one(
    cd: ClusterDir, state: ClusterState, host: str, image: Path, image_hash: str, drain_timeout: float
) -> NodeUpgrade:
    old = state.node_images.get(host, state.layer1_hash)
    logs_hint = f"see `shoal cluster logs --name {state.name} --node {host}`"

    def drained() -> bool:
        return _slurm_state(state, host) in ("drain", "drained")

    _scontrol(state, host, "State=DRAIN", "Reason=shoal-rolling-upgrade")
    drain_s = _wait(drained, drain_timeout, f"draining {host} (its jobs finishing)",
                    "wait for the jobs on the node, or raise --drain-timeout")
    t0 = time.monotonic()
    started = slurmd_start_time(state, host)

    def registered() -> bool:
        # The new slurmd has registered when the controller shows a new slurmd start time.
        return slurmd_start_time(state, host) not in ("", started)

    def in_service() -> bool:
        return _slurm_state(state, host) in ("idle", "mix", "alloc")

    from shoal.cluster import statebackend

    with statebackend.hands_off(state.name, [host]):
        node.stop_node(state, host)
        node.prepare_node(cd, host)
        state.node_pids[host] = node.start_node(cd, state, host, lower=image)
        state.node_images[host] = image_hash
        cd.save(state)
        _wait(registered, 120, f"{host} re-registering after the swap", logs_hint)
    _scontrol(state, host, "State=RESUME")
    _wait(in_service, 60, f"{host} returning to service", logs_hint)
    return NodeUpgrade(host, old, image_hash, drain_s, time.monotonic() - t0)


def upgrade(
    name: str,
    image: Path,
    image_hash: str,
    nodes: list[str] | None = None,
    drain_timeout: float = 600.0,
    on_node: Callable[[NodeUpgrade], None] | None = None,
) -> list[NodeUpgrade]:
    """Move `nodes` (default: all not yet on image_hash) of cluster `name` to the new image."""
    manager.check_prerequisites()
    cd = ClusterDir(name)
    state = cd.load()
    if state.phase != "up":
        raise ClusterError(f"cluster {name!r} is not up", f"start it: `shoal cluster up --name {name}`")
    todo = nodes or [n for n in state.nodes if state.node_images.get(n) != image_hash]
    for n in todo:
        if n not in state.nodes:
            raise ClusterError(f"no node {n!r} in cluster {name!r}", f"nodes: {', '.join(state.nodes)}")
    done: list[NodeUpgrade] = []
    for host in todo:
        done.append(_swap_one(cd, state, host, image, image_hash, drain_timeout))
        if on_node is not None:
            on_node(done[-1])
    state.layer1_image = str(image)
    state.layer1_hash = image_hash
    cd.save(state)
    return done
