"""Phase accounting and the bound rule (shoal.staging.accounting), per-host cgroups, storage bandwidth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shoal.cluster import cgroups, netns
from shoal.cluster.config import NETWORK_PROFILES, validate
from shoal.errors import ConfigError
from shoal.staging import accounting, jobstep

MB = 10**6


def util(seconds: float, cpu_s: float, link_bytes: int, link_mbit: float | None,
         storage_bytes: int, storage_mbit: float | None, cores: int = 2) -> dict[str, float | None]:
    return accounting.utilisation(seconds, cpu_s, cores, link_bytes, link_mbit, storage_bytes,
                                  storage_mbit)


# The three forced cases of the bound rule, with figures as the integration test measures them.
def test_unshaped_network_many_nodes_is_cpu_bound() -> None:
    # 16 nodes unpack a 70 MB tarball each on 2 cores; links and storage are unshaped
    u = util(30.0, 55.0, 71 * MB, None, 16 * 71 * MB, None)
    assert u["link"] == 0.0 and u["storage"] == 0.0
    assert accounting.classify_bound(u, host_busy=0.97) == "cpu"
    # the same with other users holding most of the cores: still the CPU (it waited for it)
    starved = util(90.0, 40.0, 71 * MB, None, 16 * 71 * MB, None)
    assert starved["cpu"] is not None and starved["cpu"] < accounting.OVERHEAD_BELOW
    assert accounting.classify_bound(starved, host_busy=0.99) == "cpu"


def test_slow_link_one_node_is_link_bound() -> None:
    # eth1g: 100 Mbit/s per link, 400 Mbit/s storage; 71 MB in 6.5 s, 2.6 CPU seconds
    u = util(6.5, 2.6, 71 * MB, 100.0, 71 * MB, 400.0)
    assert u["link"] == pytest.approx(71 * MB / (6.5 * 12.5 * MB))
    assert accounting.classify_bound(u, host_busy=0.4) == "link"
    # a saturated link names the bound even when the host is busy besides
    assert accounting.classify_bound(u, host_busy=0.95) == "link"


def test_storage_far_below_link_is_storage_bound() -> None:
    # 4 nodes on 1 Gbit/s links read 4 x 71 MB from a 80 Mbit/s storage host
    u = util(30.0, 10.0, 71 * MB, 1000.0, 4 * 71 * MB, 80.0)
    assert accounting.classify_bound(u, host_busy=0.5) == "storage"


def test_serial_cpu_step_alone_is_cpu_and_idle_is_overhead() -> None:
    # one node gunzips alone: one core of two busy, the host half idle
    u = util(4.0, 3.8, 71 * MB, None, 71 * MB, None)
    assert accounting.classify_bound(u, host_busy=0.5) == "cpu"
    assert accounting.classify_bound(util(10.0, 1.0, MB, 1000.0, MB, 800.0),
                                     host_busy=0.2) == "overhead"
    assert accounting.classify_bound({"cpu": None, "link": None, "storage": None}) is None
    assert accounting.utilisation(0.0, 1.0, 2, 1, 1.0, 1, 1.0)["cpu"] is None


def test_link_beats_storage_when_both_saturate() -> None:
    assert accounting.classify_bound({"cpu": 0.2, "link": 0.9, "storage": 0.8}) == "link"
    assert accounting.classify_bound({"cpu": 0.2, "link": 0.5, "storage": 0.6}) == "storage"


class FakeClock(accounting.Clock):
    """A Clock fed with prepared snapshots instead of the machine's counters."""

    def __init__(self, snaps: list[dict[str, Any]]) -> None:
        self._snaps = list(snaps)
        super().__init__(["n1", "n2"])

    def snapshot(self) -> dict[str, Any]:
        return self._snaps.pop(0)


def snap(t: float, cpu1: float, cpu2: float, peak: int, cluster: float, served: int,
         host: tuple[int, int]) -> dict[str, Any]:
    return {"w": 1000.0 + t, "t": t, "host_cpu": host, "cluster_cpu_s": cluster,
            "storage": (served, 0),
            "nodes": {"n1": {"cpu_s": cpu1, "memory_peak_bytes": peak},
                      "n2": {"cpu_s": cpu2, "memory_peak_bytes": peak + 1}}}


def test_clock_phases_window_and_run_accounting() -> None:
    clock = FakeClock([
        snap(0.0, 10.0, 20.0, 0, 100.0, 0, (0, 0)),
        snap(4.0, 12.0, 22.5, 300, 105.0, 140 * MB, (600, 800)),  # end of stage
        snap(5.0, 12.5, 23.0, 400, 106.0, 141 * MB, (700, 1000)),  # end of workload
        snap(5.5, 12.6, 23.1, 50, 106.2, 141 * MB, (750, 1100)),  # end of cleanup
    ])
    for name in ("stage", "workload", "cleanup"):
        clock.mark(name)
    table = clock.phase_table()
    assert list(table) == ["stage", "workload", "cleanup"]
    assert table["stage"]["seconds"] == pytest.approx(4.0)
    assert table["stage"]["nodes"]["n1"]["cpu_s"] == pytest.approx(2.0)
    assert table["workload"]["nodes"]["n2"]["memory_peak_bytes"] == 401
    win = clock.window("workload")
    assert win["seconds"] == pytest.approx(5.0) and win["cluster_cpu_s"] == pytest.approx(6.0)
    assert win["host_cpu_util"] == pytest.approx(0.7)
    assert win["storage_served_bytes"] == 141 * MB
    first = {n: {"c0": {"net_rx": 0, "net_tx": 0, "storage_rx": 0}} for n in ("n1", "n2")}
    last = {"n1": {"c1": {"net_rx": 71 * MB, "net_tx": MB, "storage_rx": 70 * MB}},
            "n2": {"c1": {"net_rx": 70 * MB, "net_tx": MB, "storage_rx": 70 * MB}}}
    acct = jobstep.run_accounting(clock, ["n1", "n2"], first, last, 1005.0,
                                  {"link_mbit": 1000.0, "storage_mbit": 800.0, "host_cores": 2,
                                   "storage": "sshfs"})
    a = acct["n1"]
    assert a["time_to_solution"] == pytest.approx(5.0)
    assert a["phase_stage_s"] == pytest.approx(4.0) and a["phase_cleanup_s"] == pytest.approx(0.5)
    assert a["cpu_stage_s"] == pytest.approx(2.0) and a["cpu_s"] == pytest.approx(2.6)
    assert a["memory_peak_bytes"] == 400
    assert a["net_rx_bytes"] == 71 * MB and a["storage_rx_bytes"] == 70 * MB
    # storage: 141 MB in 5 s of a 100 MB/s host = 0.28; cpu 6/(5*2) = 0.6; link 71/(5*125) = 0.11
    assert a["util_storage"] == pytest.approx(0.282, abs=1e-3)
    assert a["bound"] == "cpu"
    rec = jobstep.merge("n1", method="untar", image="img", workload="catwalk", job="7",
                        batch_node="n1", stage={"stage_bytes_from_storage": 5}, work=None,
                        scope="node", clean=None, error=None, collective_s=None,
                        collective_bytes=0, job_stage_s=1.0, acct=a)
    assert rec["bytes_from_storage"] == 70 * MB and rec["bytes_estimate_from_storage"] == 5
    assert rec["bytes_net_rx"] == 71 * MB


def test_own_and_cluster_cgroup_from_proc_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "cgroup"
    f.write_text("4:memory:/shoal/c1/node3\n2:cpuacct:/shoal/c1/node3\n1:cpu:/\n")
    assert accounting.own_cgroup("memory", str(f)) == "/shoal/c1/node3"
    real = accounting.own_cgroup
    monkeypatch.setattr(accounting, "own_cgroup", lambda c, p=str(f): real(c, p))
    assert accounting.cluster_cgroup() == "/shoal/c1"
    f.write_text("2:cpuacct:/process_api/abc\n")
    assert accounting.cluster_cgroup() is None  # not a shoal node: no figures, no guessing


def test_node_usage_reads_the_cgroup_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounting, "CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cpuacct/shoal/c1/node1").mkdir(parents=True)
    (tmp_path / "memory/shoal/c1/node1").mkdir(parents=True)
    (tmp_path / "cpuacct/shoal/c1/node1/cpuacct.usage").write_text("2500000000\n")
    (tmp_path / "memory/shoal/c1/node1/memory.usage_in_bytes").write_text("10\n")
    (tmp_path / "memory/shoal/c1/node1/memory.max_usage_in_bytes").write_text("99\n")
    u = accounting.node_usage("node1", "/shoal/c1")
    assert u == {"cpu_s": 2.5, "memory_bytes": 10, "memory_peak_bytes": 99}
    assert accounting.reset_peak("node1", "/shoal/c1")
    assert (tmp_path / "memory/shoal/c1/node1/memory.max_usage_in_bytes").read_text() == "0"
    assert accounting.node_usage("node9", "/shoal/c1")["cpu_s"] is None


def test_host_cgroup_names_and_env() -> None:
    cg = cgroups.HostCgroup("c1", "node2")
    assert cg.path("memory") == Path("/sys/fs/cgroup/memory/shoal/c1/node2")
    files = cg.env()["SHOAL_CGROUP_PROCS"].split()
    assert files == [f"/sys/fs/cgroup/{c}/shoal/c1/node2/cgroup.procs" for c in cgroups.CONTROLLERS]


def test_storage_bandwidth_from_profile_or_config() -> None:
    cfg = validate({"network": "eth10g", "storage": "sshfs"})
    assert cfg.storage_rate_mbit == NETWORK_PROFILES["eth10g"].storage_mbit == 800.0
    assert validate({"network": "eth10g", "storage_mbit": 80}).storage_rate_mbit == 80.0
    assert validate({"network": "eth10g", "storage_mbit": 0}).storage_rate_mbit is None
    assert validate({"network": "none"}).storage_rate_mbit is None
    with pytest.raises(ConfigError, match="storage_mbit"):
        validate({"storage_mbit": -1})
    with pytest.raises(ConfigError, match="storage_mbit"):
        validate({"storage_mbit": "fast"})


def test_htb_burst_covers_a_timer_tick() -> None:
    args = netns.htb_args(800.0, 256)
    assert args[:4] == ["rate", "800mbit", "ceil", "800mbit"]
    burst = int(args[5].removesuffix("kb"))
    assert burst * 1024 >= 800e6 / 8 / 250  # at least one tick (HZ=250) of data
