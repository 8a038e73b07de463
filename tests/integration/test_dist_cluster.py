"""Every distribution method on the virtual cluster: stage mpihello on 4 nodes, run it (4 MPI
ranks on 4 hosts), verify, clean up, check nothing is left; and a node dying mid-staging.

Runs on the session's 4-node cluster (tests/conftest.py) with the mpihello image built and
exported into the store by the session fixture.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from shoal import paths
from shoal.runner import run
from shoal.staging import driver
from shoal.staging.registry import method_names
from tests.conftest import ClusterHandle

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
IMAGE = "mpihello"


@pytest.fixture(scope="module")
def cluster_name(cluster: ClusterHandle, mpihello_in_store: str) -> str:
    return cluster.name


def on_node(name: str, node: str, *cmd: str) -> str:
    from shoal.cluster import enter
    from shoal.cluster.state import ClusterDir

    prefix = enter.enter_prefix(ClusterDir(name).load(), node)
    return run([*prefix, *cmd], timeout=60, check=False).stdout


def assert_clean(name: str, nodes: list[str]) -> None:
    for node in nodes:
        out = on_node(name, node, "sh", "-c",
                      "ls -A /tmp/shoal 2>/dev/null; grep -c ' /tmp/shoal' /proc/self/mountinfo")
        assert out.split() == ["0"], f"{node} keeps: {out!r}"
    # Loop devices are host-wide: only ours (backed by this test's image) count.
    loops = run(["losetup", "-a"], timeout=30).stdout.splitlines()
    assert [ln for ln in loops if f"/{IMAGE}/" in ln] == []


@pytest.mark.parametrize("method", method_names())
def test_run_on_four_nodes(method: str, cluster_name: str, tmp_path: Path) -> None:
    from shoal.cluster.state import ClusterDir
    from shoal.staging.registry import get_method

    if get_method(method).prepare == "registry-push" and \
            ClusterDir(cluster_name).load().storage != "sshfs":
        pytest.skip(f"{method} needs the storage host's registry (storage = sshfs): "
                    "tests/integration/test_cluster_sshfs.py runs it")
    site = driver.site_for(cluster_name)
    seen: list[driver.DistResult] = []
    # gds=hash: PMIx's shared-memory store warns about locks inside ch-run containers
    ran = driver.run_in_image(site, IMAGE, method, ["mpihello"], nodes=4, verify=True,
                              timeout=300, on_staged=seen.append,
                              srun_args=["--mpi=pmix", "--export=ALL,PMIX_MCA_gds=hash"])
    assert ran.returncode == 0, ran.stderr
    ranks = [ln.split() for ln in ran.stdout.splitlines() if ln.startswith("rank=")]
    hosts = sorted(f[2].removeprefix("host=") for f in ranks)
    assert sorted(f[0] for f in ranks) == [f"rank={i}" for i in range(4)]
    assert len(set(hosts)) == 4, ran.stdout
    assert "ring passed size=4" in ran.stdout
    result = seen[0]
    assert result.ok and sorted(result.records) == hosts
    manifest = json.loads((paths.store_root() / IMAGE / "manifest.json").read_text())
    for rec in result.records.values():
        assert rec["verify"]["ok"] and rec["verify"]["digest"] == manifest["tree_digest"]
        assert rec["image_digest"] == manifest["tree_digest"]
        assert rec["stage_seconds"] > 0
    if method in ("sbcast", "sbcast-squashfs"):
        assert result.collective_seconds is not None
        # the broadcast came over the network, not from shared storage
        assert all(r["bytes_net_rx"] >= r["broadcast_bytes"] for r in result.records.values())
    assert all(c["ok"] and c["left"] == [] for c in ran.cleanup.values())
    assert_clean(cluster_name, hosts)


def test_node_dies_mid_staging(cluster: ClusterHandle, cluster_name: str) -> None:
    """slurmd of one node is stopped as staging starts: the command names it and cleans up the
    others."""
    import threading

    from shoal.cluster import enter
    from shoal.cluster.state import ClusterDir

    site = driver.site_for(cluster_name)
    alloc = driver.allocate(site, 4, time_limit="10")
    victim = alloc.nodes[-1]
    state = ClusterDir(cluster_name).load()
    supervisorctl = [*enter.enter_prefix(state, victim), "supervisorctl", "-c",
                     "/etc/supervisor/supervisord.conf"]
    # The state service would start the stopped slurmd again within a second or so
    # (supervisor.restart), and the node would stage after all: it is frozen meanwhile.
    thaw = ExitStack()
    thaw.enter_context(cluster.frozen(victim))

    def kill_later() -> None:
        # the node "dies" while staging starts: its slurmd stops, and any step daemon of this
        # job on it is killed (by pid; slurmstepd would otherwise finish the step without
        # slurmd). Staging is seconds long now, so waiting for a step to show first raced it.
        run([*supervisorctl, "stop", "slurmd"], timeout=60, check=False)
        on_node(cluster_name, victim, "sh", "-c",
                f"for p in $(pgrep -f 'slurmstepd: \\[{alloc.job}\\.'); do kill -9 $p; done")

    killer = threading.Thread(target=kill_later)
    try:
        killer.start()
        killer.join()  # dead before the staging step launches: no race with a seconds-long stage
        t0 = time.monotonic()
        result = driver.distribute(site, alloc, "untar", IMAGE, timeout=40)
        assert time.monotonic() - t0 < 150  # bounded: nothing hangs
        killer.join()
        assert victim in result.failed, result.failed
        with pytest.raises(Exception, match=victim):
            driver.raise_if_failed(result)
        assert "no record" in result.failed[victim]
        assert_clean(cluster_name, [n for n in alloc.nodes if n != victim])
    finally:
        killer.join()
        run([*supervisorctl, "start", "slurmd"], timeout=60, check=False)
        thaw.close()
        driver.release(site, alloc.job)
        for node in alloc.nodes:
            on_node(cluster_name, node, "rm", "-rf", f"/tmp/shoal/{alloc.job}")
        # back in service (the state service resumes it) before the next test allocates
        cluster.wait_idle(victim)


def test_bcast_middle_node_killed(cluster_name: str) -> None:
    """The agent of the chain's second node is killed mid-broadcast (SIGKILL): the lost node is
    named, the nodes after it are re-fed from an earlier node, nothing hangs, and cleanup removes
    every partial copy (the killed node's too)."""
    import threading

    site = driver.site_for(cluster_name)
    alloc = driver.allocate(site, 4, time_limit="10")
    victim = alloc.nodes[1]  # the chain is nodes[0] -> nodes[1] -> nodes[2] -> nodes[3]
    part = f"/tmp/shoal/{alloc.job}/{IMAGE}.sqfs"
    seen: list[driver.DistResult] = []

    def stage() -> None:
        # the root's reads paced to 10 MB/s: 70 MB take ~7 s, time enough to land the kill
        seen.append(driver.distribute(site, alloc, "bcast-squashfs", IMAGE, timeout=90,
                                      rate=10e6))

    t = threading.Thread(target=stage)
    try:
        t0 = time.monotonic()
        t.start()
        killed = ""
        while time.monotonic() - t0 < 60 and t.is_alive():
            size = on_node(cluster_name, victim, "stat", "-c", "%s", part).strip()
            if size.isdigit() and int(size) >= 15_000_000:
                killed = on_node(cluster_name, victim, "sh", "-c",
                                 # [b]: the pattern must not match this shell itself
                                 f"p=$(pgrep -f '[b]cast --job {alloc.job} ');"
                                 " kill -9 $p && echo $p")
                break
            time.sleep(0.1)
        t.join(timeout=150)
        assert not t.is_alive(), "the broadcast hung"
        assert killed.strip(), "the agent was not found mid-broadcast"
        assert time.monotonic() - t0 < 120
        result = seen[0]
        assert sorted(result.failed) == [victim], result.failed
        # named by the nodes that saw it go (the one it fed, the one feeding it)
        assert f"lost its feed from {victim}" in result.failed[victim] or \
            f"lost {victim}" in result.failed[victim], result.failed
        brecs = result.extra["bcast"]
        after = alloc.nodes[2]
        assert brecs[after]["ok"] and brecs[after]["fed_by"] == [victim, alloc.nodes[0]]
        assert brecs[alloc.nodes[3]]["ok"] and brecs[alloc.nodes[3]]["fed_by"] == [after]
        with pytest.raises(Exception, match=victim):
            driver.raise_if_failed(result)
        assert_clean(cluster_name, alloc.nodes)  # partial copies gone, the victim's too
    finally:
        t.join(timeout=150)
        driver.release(site, alloc.job)
        for node in alloc.nodes:
            on_node(cluster_name, node, "rm", "-rf", f"/tmp/shoal/{alloc.job}")
