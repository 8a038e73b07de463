"""Session fixtures: one virtual cluster per test session, images built once and reused.

Integration tests (marked `cluster`) need root; without it they are skipped with the reason.
The cluster is taken down at the end of the session, also when tests fail; a cluster of the
same name left by a crashed earlier run is removed first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from shoal.runner import Completed, run

if TYPE_CHECKING:
    from shoal.cluster.state import ClusterState

SESSION_CLUSTER = os.environ.get("SHOAL_TEST_CLUSTER_NAME", "pytest")
SESSION_NODES = 4


def wait_idle(state: ClusterState, nodes: list[str], timeout: float = 120) -> dict[str, str]:
    """Wait until Slurm shows every one of NODES idle; Slurm's last states (node -> state).

    A job's srun returns before its Epilog has run on every node, so right after a job the
    nodes are COMPLETING for a moment, the longer the more loaded the machine is.
    """
    from shoal.cluster import manager

    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = manager.node_states(state)
        if all(states.get(n) == "idle" for n in nodes):
            break
        time.sleep(0.5)
    return states


@dataclass
class ClusterHandle:
    """Handle on the session's running cluster for tests."""

    name: str
    nodes: list[str] = field(default_factory=list)

    def ctl(self, *cmd: str, check: bool = True, timeout: float = 120) -> Completed:
        """Run a command on the controller (login node) in its namespaces."""
        from shoal.cluster import enter
        from shoal.cluster.state import ClusterDir

        prefix = enter.enter_prefix(ClusterDir(self.name).load(), "ctl")
        return run([*prefix, *cmd], check=check, timeout=timeout)

    def on(self, node: str, *cmd: str, check: bool = True, timeout: float = 120) -> Completed:
        """Run a command inside a node's container."""
        from shoal.cluster import enter
        from shoal.cluster.state import ClusterDir

        prefix = enter.enter_prefix(ClusterDir(self.name).load(), node)
        return run([*prefix, *cmd], check=check, timeout=timeout)

    def wait_idle(self, node: str, timeout: float = 120) -> str:
        """Wait until Slurm shows NODE idle (no job, no Epilog still running); its last state."""
        from shoal.cluster.state import ClusterDir

        return wait_idle(ClusterDir(self.name).load(), [node], timeout).get(node, "")

    @contextmanager
    def frozen(self, node: str) -> Iterator[None]:
        """The state service (when the cluster runs one) leaves NODE alone meanwhile.

        A test that breaks a node on purpose (stops its slurmd) freezes it: the engine would
        otherwise start the program again at once (supervisor.restart), racing the test. A frozen
        node that dies is still reported DOWN in Slurm (docs/STATE.md).
        """
        from shoal.cluster import statebackend
        from shoal.cluster.state import ClusterDir
        from shoal.state.client import StateClient

        if not ClusterDir(self.name).load().config.get("state_service", True):
            yield
            return
        api = StateClient(socket_path=str(statebackend.socket_path(self.name)))
        api.request("POST", "/freeze", {"nodes": [node]})
        try:
            yield
        finally:
            api.request("POST", "/thaw", {"nodes": [node]})

    def __str__(self) -> str:
        return self.name


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("virtual cluster tests need root")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `root` or `cluster` are skipped, saying why, when not run as root."""
    for mark in ("root", "cluster"):
        if item.get_closest_marker(mark) is not None and os.geteuid() != 0:
            pytest.skip(f"marked {mark}: needs root")


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    _need_root()
    from shoal.cluster import manager
    from shoal.cluster.config import ClusterConfig

    with manager.booted(ClusterConfig(name=SESSION_CLUSTER, nodes=SESSION_NODES)) as res:
        yield ClusterHandle(SESSION_CLUSTER, res.state.nodes)


@pytest.fixture(scope="session")
def mpihello_in_store() -> str:
    """The mpihello image built (cached by input hash) and exported into the image store."""
    _need_root()
    from shoal.images.catalog import ensure_in_store

    return ensure_in_store("mpihello")


@contextmanager
def private_munged() -> Iterator[str]:
    """A munged of our own: a fresh random key and its socket in a private temporary directory,
    run in the foreground so it is stopped by its pid. Yields the socket path."""
    exe = shutil.which("munged") or "/usr/sbin/munged"
    if not os.access(exe, os.X_OK):
        pytest.skip("munged is not installed (make setup installs munge)")
    # A short path: a unix socket's path is limited to 107 bytes, pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="shoal-munge-", dir="/tmp")
    key = os.path.join(d, "key")
    with open(key, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(os.urandom(1024))
    sock = os.path.join(d, "sock")
    proc = subprocess.Popen(
        [exe, "--foreground", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d}/pid",
         f"--log-file={d}/log", f"--seed-file={d}/seed", "--force"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"munged did not start: {err.strip()}")
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def munged() -> Iterator[str]:
    """The socket of a private munged (see private_munged), stopped after the test."""
    with private_munged() as sock:
        yield sock
