"""The node state service on a real virtual cluster: a killed node and a FATAL slurmd reach Slurm
at once, a restarted program that fails again lands in FAILED (no loop), and a rolling upgrade
under a stream of short jobs survives a kill -9 of the service in the middle of it.

One 3-node cluster of its own (the service kills and restarts nodes; the session cluster's other
tests should not see that).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.cluster import manager, statebackend
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import enter_prefix, pid1, slurm_client
from shoal.cluster.jobstream import JobStream
from shoal.cluster.state import ClusterDir
from shoal.images.layer1 import ensure_layer1
from shoal.runner import run
from shoal.state.client import StateClient
from tests.conftest import SESSION_CLUSTER

pytestmark = pytest.mark.cluster
NAME = (SESSION_CLUSTER[:7] + "st").lower()


@pytest.fixture(scope="module")
def new_tree() -> Iterator[Path]:
    """A "new release" of layer1 (a copy plus a release file); removed after the cluster is down."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    new = Path(f"/var/cache/shoal/test-layer1-state-{os.getpid()}")
    subprocess.run(["cp", "-a", "--reflink=auto", str(ensure_layer1().path), str(new)], check=True)
    (new / "etc" / "shoal-release").write_text("layer1 state test release\n")
    try:
        yield new
    finally:
        shutil.rmtree(new, ignore_errors=True)


@pytest.fixture(scope="module")
def stcluster(new_tree: Path) -> Iterator[str]:
    with manager.booted(ClusterConfig(name=NAME, nodes=3, accounting=True)):
        yield NAME


def api(name: str) -> StateClient:
    return StateClient(socket_path=str(statebackend.socket_path(name)))


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(step)


def slurm_node(name: str, node: str) -> dict[str, str]:
    st = ClusterDir(name).load()
    return next(dict(n.raw) for n in slurm_client(st).show_nodes() if n.name == node)


def node_view(name: str, node: str) -> dict[str, Any]:
    data: dict[str, Any] = api(name).request("GET", f"/nodes/{node}")
    return data


def events(name: str, after: int = 0) -> list[dict[str, Any]]:
    c = api(name)
    newest = int(c.request("GET", "/")["last_event"])
    out: list[dict[str, Any]] = []
    if newest <= after:
        return out
    for ev in c.events(after=after):
        out.append(ev)
        if ev["id"] >= newest:
            break
    return out


def ready(name: str, node: str) -> bool:
    v = node_view(name, node)
    return bool(
        v["phase"] == "ready"
        and v["health"] == "ok"
        and v["transition"] is None
        and v["dsc"]["slurm_state"] == "idle"
        and not v["dsc"]["slurm_flags"]
    )


def test_killed_node_is_down_in_slurm_at_once_and_booted_again(stcluster: str) -> None:
    st = ClusterDir(stcluster).load()
    wait_for(lambda: ready(stcluster, "node2"), 60, "node2 ready")
    t0 = time.monotonic()
    os.kill(pid1(st, "node2"), signal.SIGKILL)
    raw = wait_for(
        lambda: (r := slurm_node(stcluster, "node2"))["State"].startswith("DOWN") and r,
        10,
        "node2 DOWN in Slurm",
    )
    seconds = time.monotonic() - t0
    assert raw["Reason"].startswith("shoal: node died")
    assert seconds < 3.0, f"{seconds:.2f} s from kill -9 to DOWN (Slurm's own timeout is 60 s)"
    # Desired power is on: the engine boots it, and Slurm takes it back.
    wait_for(lambda: ready(stcluster, "node2"), 90, "node2 back in service", 0.5)
    assert pid1(ClusterDir(stcluster).load(), "node2") != 0


BROKEN_START = (
    "if [ -e /run/slurmd-broken ]; then echo 'slurmd: fatal: test-injected start failure' >&2; exit 1; fi; "
    "exec /usr/sbin/slurmd -D"
)
BROKEN_SLURMD = f"""[program:slurmd]
command=/bin/sh -c "{BROKEN_START}"
priority=30
autostart=true
autorestart=true
startsecs=2
startretries=0
stopsignal=TERM
stopwaitsecs=30
stdout_logfile=/var/log/supervisor/slurmd.log
redirect_stderr=true
"""


def test_fatal_slurmd_is_down_at_once_restart_fails_once_then_thaw_recovers(stcluster: str) -> None:
    node = "node3"
    st = ClusterDir(stcluster).load()
    on = enter_prefix(st, node)
    wait_for(lambda: ready(stcluster, node), 60, f"{node} ready")
    conf = "/etc/supervisor/conf.d/30-slurmd.conf"
    original = run([*on, "cat", conf]).stdout
    # A slurmd whose start fails fast, with no retries (layer1's startretries=100 would take an
    # hour of back-off): supervisord runs it normally until /run/slurmd-broken exists.
    run([*on, "sh", "-c", f"cat > {conf}"], input=BROKEN_SLURMD)
    run([*on, "supervisorctl", "update", "slurmd"], check=False)
    wait_for(
        lambda: node_view(stcluster, node)["dsc"]["programs"].get("slurmd") == "RUNNING",
        30,
        "slurmd RUNNING under the test config",
    )
    wait_for(lambda: ready(stcluster, node), 60, f"{node} ready again")
    after = int(api(stcluster).request("GET", "/")["last_event"])
    try:
        run([*on, "touch", "/run/slurmd-broken"])
        pid = run([*on, "supervisorctl", "pid", "slurmd"]).stdout.strip()
        run([*on, "kill", "-9", pid])
        raw = wait_for(
            lambda: (r := slurm_node(stcluster, node))["State"].startswith("DOWN") and r,
            15,
            f"{node} DOWN in Slurm",
        )
        seen = time.time()
        assert raw["Reason"].startswith("shoal: slurmd FATAL")
        fatal = next(
            e for e in events(stcluster, after) if e["kind"] == "process" and e["data"]["state"] == "FATAL"
        )
        assert seen - fatal["data"]["at"] < 3.0
        # The engine tries supervisor.restart once; it fails (still broken): FAILED, no loop.
        wait_for(lambda: node_view(stcluster, node)["phase"] == "failed", 60, f"{node} failed")
        time.sleep(3)
        starts = [
            e
            for e in events(stcluster, after)
            if e["kind"] == "transition"
            and e["data"]["name"] == "supervisor.restart"
            and e["data"]["status"] == "started"
        ]
        assert len(starts) == 1
        assert slurm_node(stcluster, node)["State"].startswith("DOWN")
    finally:
        run([*on, "rm", "-f", "/run/slurmd-broken"])
        run([*on, "sh", "-c", f"cat > {conf}"], input=original)
        run([*on, "supervisorctl", "update", "slurmd"], check=False)
        run([*on, "supervisorctl", "start", "slurmd"], check=False)
    # Repaired by hand; thaw is the operator's go-ahead: back in service.
    wait_for(
        lambda: node_view(stcluster, node)["dsc"]["programs"].get("slurmd") == "RUNNING",
        30,
        "slurmd RUNNING again",
    )
    api(stcluster).request("POST", "/thaw", {"nodes": [node]})
    wait_for(lambda: ready(stcluster, node), 60, f"{node} back in service", 0.5)


def test_rolling_upgrade_under_jobs_survives_a_service_restart(stcluster: str, new_tree: Path) -> None:
    new = new_tree
    st = ClusterDir(stcluster).load()
    ctl = enter_prefix(st, "ctl")
    client = slurm_client(st)
    for n in st.nodes:
        wait_for(functools.partial(ready, stcluster, n), 90, f"{n} ready")
    # Short one-node jobs, submitted throughout the upgrade.
    with JobStream(client) as stream:
        time.sleep(2)
        api(stcluster).request("PATCH", "/cfg/nodes", {"image": str(new), "max_unavailable": 1})
        # kill -9 the service while a node is being worked on, and start it again.
        wait_for(
            lambda: any(r["transition"] for r in api(stcluster).request("GET", "/nodes")["nodes"]),
            60,
            "a transition in progress",
        )
        time.sleep(1.0)
        os.kill(statebackend.service_pid(stcluster), signal.SIGKILL)
        time.sleep(1.0)
        statebackend.start_service(stcluster)

        def converged() -> bool:
            rows = api(stcluster).request("GET", "/nodes")["nodes"]
            return all(
                r["dsc"]["image"] == str(new) and r["phase"] == "ready" and r["transition"] is None
                for r in rows
            )

        wait_for(converged, 300, "every node on the new image", 1.0)
    job_ids = stream.job_ids
    for n in st.nodes:
        out = run([*enter_prefix(ClusterDir(stcluster).load(), n), "cat", "/etc/shoal-release"]).stdout
        assert out.strip() == "layer1 state test release"
    evs = events(stcluster)
    swaps = [
        e["node"]
        for e in evs
        if e["kind"] == "transition"
        and e["data"]["name"] == "layer1.swap"
        and e["data"]["status"] == "started"
    ]
    assert sorted(swaps) == sorted(st.nodes)  # each node swapped once, also across the restart
    assert any(e["kind"] == "service" and e["data"]["resumed_transitions"] for e in evs)
    # Never more than max_unavailable=1 node out at once (from the phase events).
    out_now: set[str] = set()
    most = 0
    for e in evs:
        step = (e["data"].get("name"), e["data"].get("status")) if e["kind"] == "transition" else None
        if step == ("slurm.drain", "started"):
            out_now.add(e["node"])
        if step == ("slurm.resume", "done"):
            out_now.discard(e["node"])
        most = max(most, len(out_now))
    assert most == 1
    assert len(job_ids) >= 10
    # Requeued jobs carry restart_cnt > 0 (squeue keeps finished jobs MinJobAge=300 s; 22.05's sacct
    # JSON has no restart count).
    listed = json.loads(run([*ctl, "squeue", "--json", "--states=all"]).stdout)["jobs"]
    ours = [j for j in listed if j["job_id"] in set(job_ids)]
    assert len(ours) == len(job_ids)
    assert [j["job_id"] for j in ours if j.get("restart_cnt", 0)] == []
    final = client.wait(job_ids, timeout=120)
    bad = {j: f.state for j, f in final.items() if not f.state.ok}
    assert not bad, f"jobs not COMPLETED during the upgrade: {bad}"
