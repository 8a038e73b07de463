"""Faults on a real cluster: a node whose PID 1 died makes `cluster
status` fail and `cluster list` say so; `down` leaves nothing (namespaces, interfaces, mounts,
loop devices, processes, state); an `up` interrupted by Ctrl-C, and interrupted again while it
cleans up, leaves nothing either, not even the host-side mariadb-install-db.

Each test boots its own small cluster (1-2 nodes, named after SHOAL_TEST_CLUSTER_NAME)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cluster import audit, manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import pid1
from shoal.cluster.node import running
from shoal.cluster.state import ClusterDir, ClusterState
from tests.conftest import SESSION_CLUSTER

pytestmark = pytest.mark.cluster
SHOAL = [sys.executable, "-m", "shoal.cli.entry"]
PREFIX = SESSION_CLUSTER[:8]


def _name(tag: str) -> str:
    return (PREFIX + tag)[:10]


@pytest.fixture
def own(request: pytest.FixtureRequest) -> Iterator[str]:
    """A cluster name of this test; whatever remains of it is removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = _name(request.param if hasattr(request, "param") else "f")
    if ClusterDir(name).exists():
        manager.down(name)
    try:
        yield name
    finally:
        if ClusterDir(name).exists():
            manager.down(name)


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("own", ["d"], indirect=True)
def test_dead_node_fails_status_and_down_leaves_nothing(own: str) -> None:
    # without the state service, which would boot the node again (its own tests cover that):
    # here status itself must see the dead node
    res = manager.up(ClusterConfig(name=own, nodes=2, accounting=False, state_service=False))
    fp = audit.Footprint.of(res.state)
    first = _shoal("cluster", "status", "--name", own)
    assert first.returncode == 0, first.stderr
    # node2's PID 1 dies (as after an OOM kill): with nothing to restart it, it stays dead
    os.kill(pid1(res.state, "node2"), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while running(res.state, "node2") and time.monotonic() < deadline:
        time.sleep(0.2)
    st = _shoal("cluster", "status", "--name", own)
    assert st.returncode != 0, st.stdout + st.stderr
    assert "node2 not running" in st.stderr and "hint:" in st.stderr, st.stderr
    js = _shoal("cluster", "status", "--name", own, "--json")
    assert js.returncode != 0 and "node2 not running" in json.loads(js.stdout)["faults"]
    listed = _shoal("cluster", "list")
    row = next(ln for ln in listed.stdout.splitlines() if f" {own} " in ln)
    assert "degraded" in row and " up " not in row, listed.stdout
    assert manager.down(own) == []
    assert audit.leftovers(fp) == []


def _wait_for(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _install_db_running(root: Path) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"mariadb-install-db" in cmd and str(root).encode() in cmd:
                return True
    return False


@pytest.mark.parametrize("own", ["i"], indirect=True)
def test_second_ctrl_c_during_cleanup_leaves_nothing(own: str) -> None:
    cd = ClusterDir(own)
    for _attempt in range(3):
        # SIGINT as at a terminal: a test run started in the background (`.ci/run &` from a
        # script) ignores SIGINT, children inherit that, and Python then installs no
        # KeyboardInterrupt handler: every Ctrl-C below would be lost and `up` would finish.
        proc = subprocess.Popen([*SHOAL, "cluster", "up", "--name", own, "--nodes", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            # interrupt once the namespaces exist (and the host-side helper that copies the
            # accounting database, `up`'s one process outside them, may still run). `up` is
            # stopped (SIGSTOP) the moment they are seen, so it cannot finish booting while the
            # test reads its state: on a loaded machine this process may wait seconds for a core.
            _wait_for(lambda p=proc: p.poll() is not None or (
                cd.exists() and (Path("/run/netns") / f"shoal-{own}-node1").exists()), 300, "netns")
            if proc.poll() is None:
                proc.send_signal(signal.SIGSTOP)
            if proc.poll() is not None:  # it was up before it was seen: take it down, again
                proc.communicate(timeout=60)
                manager.down(own)
                continue
            state = ClusterState(**{k: v for k, v in json.loads(cd.state_file.read_text()).items()
                                    if k != "version"})
            fp = audit.Footprint.of(state)
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGCONT)
            for _ in range(5):  # the impatient user: Ctrl-C again and again during the cleanup
                time.sleep(0.3)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=120)
            break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    else:
        pytest.skip("`up` was done each time before its namespaces were seen")
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    _wait_for(lambda: not _install_db_running(cd.root), 10, "mariadb-install-db to go")
    # the netns inodes are known only once the namespaces exist; take them again if needed
    assert audit.leftovers(fp) == [], err
