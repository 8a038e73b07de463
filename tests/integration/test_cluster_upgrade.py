"""Rolling upgrade: a node's layer1 container is swapped for a new image while jobs keep running."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cluster import enter, manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.cluster.upgrade import upgrade
from shoal.images.layer1 import ensure_layer1

pytestmark = pytest.mark.cluster
NAME = "upg"


@pytest.fixture
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # "New release" of the node image: the current layer1 plus a release file.
    new = Path(f"/var/cache/shoal/test-layer1-{os.getpid()}")
    subprocess.run(["cp", "-a", "--reflink=auto", str(ensure_layer1().path), str(new)], check=True)
    (new / "etc" / "shoal-release").write_text("layer1 test release 2\n")
    try:
        with manager.booted(ClusterConfig(name=NAME, nodes=2, accounting=False)):
            yield new
    finally:
        shutil.rmtree(new, ignore_errors=True)


def test_rolling_upgrade_keeps_other_nodes_working(two_node_cluster: Path) -> None:
    new = two_node_cluster
    st = ClusterDir(NAME).load()
    ctl = enter.enter_prefix(st, "ctl")
    # A job running on node1 during the upgrade of node2 must finish normally.
    job = subprocess.run([*ctl, "sbatch", "--parsable", "-w", "node1", "-o", "/pfs/upg-%j.out",
                          "--wrap", "sleep 8; echo survived"],
                         capture_output=True, text=True, check=True).stdout.strip()
    old_pid = enter.pid1(st, "node2")
    done = upgrade(NAME, new, "release2", nodes=["node2"])
    assert [d.node for d in done] == ["node2"]
    st = ClusterDir(NAME).load()
    assert enter.pid1(st, "node2") != old_pid
    assert st.node_images["node2"] == "release2"
    node2 = enter.enter_prefix(st, "node2")
    rel = subprocess.run([*node2, "cat", "/etc/shoal-release"], capture_output=True, text=True)
    assert rel.stdout.strip() == "layer1 test release 2"
    out = subprocess.run([*ctl, "srun", "-N2", "hostname"], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert sorted(out) == ["node1", "node2"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = subprocess.run([*ctl, "cat", f"/pfs/upg-{job}.out"], capture_output=True, text=True).stdout
        if "survived" in text:
            break
        time.sleep(0.5)
    assert "survived" in text
