"""Cluster config validation and slurm.conf rendering (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cluster import controller
from shoal.cluster.config import ClusterConfig, load, validate
from shoal.cluster.slurmconf import Addressing, hostlist, render_hosts, render_slurm_conf
from shoal.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = validate({})
    assert cfg.nodes == 4 and cfg.network == "none" and cfg.name == "shoal"


def test_error_quotes_key_value_and_line(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[cluster]\nname = "x1"\nnetwork = "infiniband"\n')
    with pytest.raises(ConfigError) as exc:
        load(f, {})
    assert "c.toml:3" in exc.value.message
    assert "'infiniband'" in exc.value.message
    assert exc.value.hint and "eth10g" in exc.value.hint


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"nodes": 0}, "nodes = 0"),
        ({"nodes": "4"}, "must be of type int"),
        ({"nodes": True}, "must be of type int"),
        ({"name": "has space"}, "not a valid cluster name"),
        ({"tmpfs_size": "lots"}, "not a size"),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"memory_mb_per_node": 10}, "too small"),
    ],
)
def test_bad_values_are_refused(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate(raw)


def test_overrides_beat_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("nodes = 8\nnetwork = 'eth10g'\n")
    cfg = load(f, {"nodes": 2, "network": None})
    assert cfg.nodes == 2 and cfg.network == "eth10g"


def test_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("nodes = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(f, {})


def test_slurm_conf_lists_every_node_with_its_address() -> None:
    cfg = ClusterConfig(name="abc", nodes=3, cpus_per_node=4, memory_mb_per_node=1000)
    text = render_slurm_conf(cfg, Addressing(7), "/state/ctl")
    assert "ClusterName=abc" in text
    assert "SlurmctldHost=ctl(10.7.0.2)" in text
    assert "NodeName=node[1-3] NodeAddr=10.7.0.[10-12] CPUs=4 RealMemory=1000 State=UNKNOWN" in text
    assert "PartitionName=main Nodes=node[1-3] Default=YES" in text
    # namespaced nodes: the plugins that work without a per-node cgroup tree
    assert "ProctrackType=proctrack/linuxproc" in text and "TaskPlugin=task/none" in text
    assert "AccountingStorageType=accounting_storage/slurmdbd" in text
    no_acct = render_slurm_conf(ClusterConfig(accounting=False), Addressing(1), "/s")
    assert "accounting_storage/none" in no_acct


def test_hosts_and_hostlist() -> None:
    cfg = ClusterConfig(nodes=2)
    hosts = render_hosts(cfg, Addressing(3))
    assert "10.3.0.2\tctl" in hosts and "10.3.0.11\tnode2" in hosts
    assert hostlist(["node1"]) == "node1"
    assert hostlist(["node1", "node2"]) == "node[1-2]"


def test_passwd_maps_uid_1000_to_shoal() -> None:
    text = "root:x:0:0::/root:/bin/sh\nother:x:1000:1000::/home/other:/bin/sh\n"
    out = controller.with_user(text, "passwd")
    assert "other:" not in out and "shoal:x:1000:1000:" in out and out.startswith("root:")
