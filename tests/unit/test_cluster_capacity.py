"""Capacity from measured memory per node, and the node-local copy check (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.cluster import capacity
from shoal.cluster.capacity import Capacity, NodeCost, NodeMemory
from shoal.errors import ClusterError, DistError
from shoal.staging.fit import check_node_local_copies

MB = capacity.MB


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOAL_STATE", str(tmp_path))
    return tmp_path


def test_cost_model_spreads_shared_pages() -> None:
    cost = NodeCost(pss_mb=25.0, uss_mb=20.0, nodes=64)
    k = capacity.KERNEL_MB_PER_NODE
    assert cost.at(64) == pytest.approx(25.0 + k)
    assert cost.at(128) == pytest.approx(22.5 + k)  # shared 5 MB now split over twice the nodes
    assert cost.at(1) > cost.at(64) > cost.at(1024) > 20.0 + k


def test_max_nodes_is_the_largest_that_fits() -> None:
    cap = Capacity(available_mb=12000, usable_mb=10000, controller_mb=400, cost=NodeCost(25, 20, 64))
    n = cap.max_nodes()
    assert cap.need_mb(n) <= 10000 < cap.need_mb(n + 1)
    assert 390 < n < 420


def test_refusal_says_the_real_limit(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = {"MemTotal": 24000, "MemAvailable": 8000}
    monkeypatch.setattr(capacity, "meminfo", lambda: info)
    cap = capacity.capacity()
    most = cap.max_nodes()
    with pytest.raises(ClusterError) as exc:
        capacity.check_nodes(most + 1)
    assert f"{most + 1} nodes need about" in exc.value.message
    assert "PSS 16.5 MiB per idle node measured by the benchmark on 256 nodes" in exc.value.message
    assert exc.value.hint is not None and f"at most {most} nodes fit now" in exc.value.hint
    capacity.check_nodes(most)


def test_measurement_is_recorded_and_preferred(state: Path) -> None:
    assert capacity.node_cost("abc") == capacity.DEFAULT_COST
    mems = [NodeMemory(pss=30 * MB, uss=22 * MB, rss=60 * MB, processes=6)] * 3
    mems.append(NodeMemory())  # a node whose processes were gone: not counted
    cost = capacity.cost_from(mems, 8, "abc")
    assert cost is not None
    capacity.record(cost)
    got = capacity.node_cost("abc")
    assert (got.pss_mb, got.uss_mb, got.nodes, got.layer1) == (30.0, 22.0, 8, "abc")
    assert capacity.node_cost("other").layer1 == "abc"  # latest of any build before the default
    assert "measured on 8 nodes at" in got.source()
    assert json.loads((state / "capacity.json").read_text())["abc"]["pss_mb"] == 30.0


def test_memory_of_own_process() -> None:
    import os

    mem = capacity.memory_of([os.getpid(), 999_999_999])
    assert mem.processes == 1 and 0 < mem.uss <= mem.pss <= mem.rss


def _store(tmp_path: Path, image: str = "img", tree: int = 191 * MB, tar: int = 70 * MB) -> Path:
    d = tmp_path / "store" / image
    d.mkdir(parents=True)
    d.joinpath("manifest.json").write_text(json.dumps({
        "bytes": tree,
        "exports": {"tar.gz": f"{image}.tar.gz", "squashfs": f"{image}.sqfs"},
        "sizes": {f"{image}.tar.gz": tar, f"{image}.sqfs": tar},
    }))
    return tmp_path / "store"


def test_node_local_copies_that_cannot_fit_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    # untar on 256 nodes: 256 x 191 MB = 47.8 GB
    with pytest.raises(DistError) as exc:
        check_node_local_copies("untar", "img", 256, store, "2G", available_mb=20000)
    assert "256 nodes needs 47.8 GiB of node-local memory in total" in exc.value.message
    assert exc.value.hint is not None and "at most 104 nodes" in exc.value.hint
    assert "squashfs-kernel" in exc.value.hint and "untar" not in exc.value.hint.split("(")[1]
    assert check_node_local_copies("untar", "img", 100, store, "2G", available_mb=20000) == 191 * MB
    # sbcast holds tarball and tree at once
    with pytest.raises(DistError, match="261 MiB per node"):
        check_node_local_copies("sbcast", "img", 100, store, None, available_mb=20000)
    # lazy methods copy nothing, at any size
    assert check_node_local_copies("squashfuse", "img", 4096, store, "2G", available_mb=1) == 0


def test_copy_larger_than_a_nodes_tmpfs_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, tree=3 << 30)
    with pytest.raises(DistError, match="each node's /tmp"):
        check_node_local_copies("untar", "img", 1, store, "2G", available_mb=1e6)


def test_study_refuses_copies_before_submitting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.study.matrix import Experiment
    from shoal.study.session import check_memory

    store = _store(tmp_path)
    monkeypatch.setattr(capacity, "meminfo", lambda: {"MemTotal": 24000, "MemAvailable": 20000})
    small = [Experiment("img", "untar", "catwalk", n) for n in (1, 4, 16)]
    check_memory(small, store, "2G")
    with pytest.raises(DistError, match="untar of img on 256 nodes"):
        check_memory([*small, Experiment("img", "untar", "catwalk", 256)], store, "2G")
    check_memory([Experiment("img", "squashfuse", "catwalk", 256)], store, "2G")
