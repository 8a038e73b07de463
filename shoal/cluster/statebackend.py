"""The virtual cluster as a backend of the node state service (shoal/state), and the service's
place in the cluster's life cycle.

Where the service runs: a host process (host PID and mount namespaces) that has joined only the
controller's network namespace. From there it sees every node's PID 1 die the moment it dies
(a pidfd per node: the controller's own PID namespace could not see that), binds the API on the
controller's cluster address (the nodes' listeners reach it; the host has no address on the
cluster bridge, so nothing outside the cluster does), and serves a unix socket in a root-only
directory of the cluster's state dir for the host's admin and the CLI. `down` stops it first, so
it never restarts nodes that are being taken down.

The backend gives the engine: liveness pushed from pidfds, the image each node runs (the overlay
lower dir of its root, read from the PID 1's mountinfo), power on/off, an image swap (the rolling
upgrade's container swap) and supervisord program restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from shoal.cluster import netns
from shoal.cluster import node as nodectl
from shoal.cluster.enter import enter_prefix, pid1
from shoal.cluster.slurmconf import Addressing
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.cluster.supervisor import supervisor_of
from shoal.errors import ClusterError, ShoalError
from shoal.runner import spawn
from shoal.slurm.client import SlurmClient
from shoal.state.backend import BackendError, Report
from shoal.state.client import StateClient
from shoal.state.engine import EngineConfig
from shoal.state.service import DEFAULT_PORT, ServiceConfig

START_TIMEOUT = 60.0  # a loaded 2-core machine takes seconds to import and bind
RESCAN = 0.5  # seconds between looks for a node's new PID 1 (after a boot or swap)


def state_dir(name: str) -> Path:
    return ClusterDir(name).root / "state"


def socket_path(name: str) -> Path:
    return state_dir(name) / "api.sock"


def db_path(name: str) -> Path:
    return ClusterDir(name).root / "state.sqlite"


def pid_file(name: str) -> Path:
    return ClusterDir(name).root / "state.pid"


def listener_conf(controller_ip: str) -> str:
    """/etc/slurm/shoal-state.conf as the nodes' listeners read it."""
    return f"# shoal state service of this cluster\nurl = http://{controller_ip}:{DEFAULT_PORT}\n"


def munge_socket(state: ClusterState) -> str:
    """The controller's munged (cluster key), reached through its PID 1's root."""
    return f"/proc/{pid1(state, 'ctl')}/root/run/munge/munge.socket.2"


@contextlib.contextmanager
def _state_lock(cd: ClusterDir) -> Iterator[None]:
    """Serialize read-modify-write of cluster.json (swaps of K nodes run in parallel threads)."""
    with open(cd.root / ".state.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def image_of(pid: int) -> str:
    """The layer1 tree a node runs: the lower dir of the overlay mounted at its root."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    found = ""
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 10 or fields[4] != "/":
            continue
        sep = fields.index("-")
        if fields[sep + 1] != "overlay":
            continue
        for opt in fields[sep + 3].split(","):
            if opt.startswith("lowerdir="):
                found = opt[len("lowerdir=") :].replace("\\040", " ")
    return found


class VirtualBackend:
    capabilities: frozenset[str] = frozenset({"watch", "power", "swap", "restart"})

    def __init__(self, name: str) -> None:
        self.name = name
        self.cd = ClusterDir(name)

    def _state(self) -> ClusterState:
        return self.cd.load()

    def nodes(self) -> dict[str, str]:
        st = self._state()
        addr = Addressing(st.index)
        return {n: addr.node(i) for i, n in enumerate(st.nodes, 1)}

    async def watch(self, report: Report) -> None:
        loop = asyncio.get_running_loop()
        watched: dict[str, tuple[int, int]] = {}  # node -> (pid, pidfd)
        images: dict[str, str] = {}

        def died(node: str) -> None:
            _pid, fd = watched.pop(node)
            loop.remove_reader(fd)
            os.close(fd)
            images.pop(node, None)
            report(node, False, "")

        try:
            while True:
                try:
                    st = self._state()
                except ClusterError:
                    await asyncio.sleep(RESCAN)
                    continue
                for node in st.nodes:
                    if node in watched:
                        if not images.get(node):  # the overlay appears a moment after PID 1
                            images[node] = image_of(watched[node][0])
                            if images[node]:
                                report(node, True, images[node])
                        continue
                    try:
                        pid = pid1(st, node)
                        fd = os.pidfd_open(pid)
                    except (ClusterError, OSError):
                        report(node, False, "")
                        continue
                    watched[node] = (pid, fd)
                    loop.add_reader(fd, died, node)
                    images[node] = image_of(pid)
                    report(node, True, images[node])
                await asyncio.sleep(RESCAN)
        finally:
            for _pid, fd in watched.values():
                loop.remove_reader(fd)
                os.close(fd)

    def resolve_image(self, ref: str) -> str:
        from shoal.images.layer1 import trees_root

        if ref.startswith("layer1:"):
            key = ref.split(":", 1)[1]
            root = trees_root()
            hits = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith(key)) if key else []
            if len(hits) != 1:
                raise BackendError(
                    f"{ref!r} names {len(hits)} layer1 trees",
                    f"give a unique hash prefix of a directory in {root}, or a tree's path",
                )
            path = hits[0]
        else:
            path = Path(ref)
        if not path.is_absolute() or not (path / "usr" / "sbin" / "slurmd").exists():
            raise BackendError(
                f"{ref!r} is not a layer1 tree", "use layer1:HASH or the absolute path of a built tree"
            )
        return str(path)

    def power_on(self, node: str, image: str) -> None:
        with _state_lock(self.cd):
            st = self._state()
            # Its PID 1, not the outer unshare, decides: that one lingers for a moment after
            # the PID 1 died (it reaps it), and the engine asks right after seeing the death.
            with contextlib.suppress(ClusterError):
                if netns.is_alive(pid1(st, node)):
                    return  # started by someone else meanwhile
            lower = Path(image) if image else None
            nodectl.stop_node(st, node, grace=2.0)  # leftovers of the dead container
            nodectl.prepare_node(self.cd, node)
            st.node_pids[node] = nodectl.start_node(self.cd, st, node, lower=lower)
            if image:
                st.node_images[node] = Path(image).name
            self.cd.save(st)

    def power_off(self, node: str) -> None:
        nodectl.stop_node(self._state(), node)

    def swap(self, node: str, image: str) -> None:
        nodectl.stop_node(self._state(), node)
        with _state_lock(self.cd):
            st = self._state()
            nodectl.prepare_node(self.cd, node)
            st.node_pids[node] = nodectl.start_node(self.cd, st, node, lower=Path(image))
            st.node_images[node] = Path(image).name
            self.cd.save(st)

    def restart_program(self, node: str, program: str) -> None:
        supervisor_of(self._state(), node).start(program)


def service_setup(name: str, ecfg: EngineConfig) -> tuple[VirtualBackend, SlurmClient, ServiceConfig]:
    """What `shoal state serve --cluster NAME` runs with."""
    st = ClusterDir(name).load()
    client = SlurmClient(enter_prefix(st, "ctl"), timeout=30)
    scfg = ServiceConfig(
        db=db_path(name),
        socket=socket_path(name),
        listen=(Addressing(st.index).controller, DEFAULT_PORT),
        munge_socket=munge_socket(st),
        engine=ecfg,
    )
    return VirtualBackend(name), client, scfg


def start_service(name: str, extra: list[str] | None = None) -> int:
    """Start the cluster's state service in the controller's network namespace; its pid."""
    cd = ClusterDir(name)
    st = cd.load()
    argv = [
        "nsenter", f"--net={netns.NETNS_DIR / st.netns('ctl')}", "--",
        sys.executable, "-m", "shoal.cli.main", "state", "serve", "--cluster", name, *(extra or []),
    ]  # fmt: skip
    sock = socket_path(name)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    pid = spawn(argv, log_path=cd.logs / "state.log")
    pid_file(name).write_text(f"{pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not sock.exists():
        if not netns.is_alive(pid) or time.monotonic() > deadline:
            tail = (cd.logs / "state.log").read_text(errors="replace").strip().splitlines()[-3:]
            stop_service(name)
            raise ClusterError(
                f"the state service of {name!r} did not start: {' | '.join(tail)}",
                f"see {cd.logs / 'state.log'}",
            )
        time.sleep(0.05)
    return pid


def service_pid(name: str) -> int:
    try:
        pid = int(pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return 0
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return 0
    # The pid may have been reused since: only a live `state serve --cluster NAME` is ours.
    ours = b"serve" in cmdline and name.encode() in cmdline
    return pid if ours and netns.is_alive(pid) else 0


def stop_service(name: str, grace: float = 5.0) -> None:
    """Stop the cluster's state service (by the pid it was started with)."""
    pid = service_pid(name)
    if pid:
        netns.kill_all([pid], grace=grace)
    with contextlib.suppress(FileNotFoundError):
        pid_file(name).unlink()


@contextlib.contextmanager
def hands_off(name: str, nodes: list[str]) -> Iterator[None]:
    """Freeze NODES in the cluster's state service (when it runs) while another tool (`shoal
    cluster upgrade`) stops and starts them, so the engine does not boot a node that tool is
    about to start itself; thaw them afterwards."""
    client = StateClient(socket_path=str(socket_path(name))) if service_pid(name) else None
    if client is not None:
        with contextlib.suppress(ShoalError):
            client.request("POST", "/freeze", {"nodes": nodes})
    try:
        yield
    finally:
        if client is not None:
            with contextlib.suppress(ShoalError):
                client.request("POST", "/thaw", {"nodes": nodes})
