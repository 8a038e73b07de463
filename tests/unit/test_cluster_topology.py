"""Address plan, hostlist naming and bridge layout, checked at 1024 nodes and at the design limit."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from shoal import limits
from shoal.cluster import scripts, topology
from shoal.cluster.config import ClusterConfig, validate
from shoal.cluster.slurmconf import render_hosts, render_slurm_conf
from shoal.cluster.state import ClusterState
from shoal.cluster.topology import Addressing, BridgePlan, expand_hostlist, hostlist
from shoal.errors import ConfigError

IFNAMSIZ = 15  # longest interface name the kernel takes


def _expand_addrs(expr: str) -> list[str]:
    m = re.fullmatch(r"(.*\.)\[(\d+)-(\d+)\]", expr)
    if not m:
        return [expr]
    return [f"{m.group(1)}{i}" for i in range(int(m.group(2)), int(m.group(3)) + 1)]


def _slurm_nodes(text: str) -> dict[str, str]:
    """node name -> NodeAddr, expanding the hostlist-form NodeName lines of a slurm.conf."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("NodeName="):
            fields = dict(f.split("=", 1) for f in line.split())
            names, addrs = expand_hostlist(fields["NodeName"]), _expand_addrs(fields["NodeAddr"])
            assert len(names) == len(addrs), line
            out.update(zip(names, addrs, strict=True))
    return out


@pytest.mark.parametrize("nodes", [1, 245, 246, 1024, topology.PLAN_MAX_NODES])
def test_every_node_has_a_unique_usable_address_in_the_subnet(nodes: int) -> None:
    addr = Addressing(249)
    net = ipaddress.ip_network(addr.subnet)
    hosts = [addr.controller, addr.storage, *(addr.node(i) for i in range(1, nodes + 1))]
    assert len(set(hosts)) == len(hosts)
    for h in hosts:
        ip = ipaddress.ip_address(h)
        assert ip in net and h.rsplit(".", 1)[1] not in ("0", "255")
    assert addr.node(1) == "10.249.0.10" and addr.controller == "10.249.0.2"


def test_slurm_conf_at_1024_nodes_is_compact_and_exact() -> None:
    cfg = ClusterConfig(name="big", nodes=1024)
    addr = Addressing(5)
    text = render_slurm_conf(cfg, addr, "/s")
    node_lines = [ln for ln in text.splitlines() if ln.startswith("NodeName=")]
    assert len(node_lines) == 5  # one per /24-sized block of addresses, not one per node
    assert node_lines[0].startswith("NodeName=node[1-245] NodeAddr=10.5.0.[10-254] ")
    assert node_lines[1].startswith("NodeName=node[246-499] NodeAddr=10.5.1.[1-254] ")
    mapping = _slurm_nodes(text)
    assert list(mapping) == cfg.node_names()
    assert all(mapping[f"node{i}"] == addr.node(i) for i in range(1, 1025))
    assert "PartitionName=main Nodes=node[1-1024] " in text
    # /etc/hosts agrees with slurm.conf
    hosts: dict[str, str] = {}
    for ln in render_hosts(cfg, addr).splitlines()[2:]:
        ip, name = ln.split("\t")
        hosts[name] = ip
    assert all(hosts[n] == a for n, a in mapping.items())


def test_hostlist_round_trip() -> None:
    assert hostlist(["node1"]) == "node1"
    assert hostlist(["node1", "node2"]) == "node[1-2]"
    assert hostlist(["node9", "node1", "node2", "node3", "node7", "node10"]) == "node[1-3,7,9-10]"
    names = [f"node{i}" for i in range(1, 1025) if i % 100 != 0]
    assert expand_hostlist(hostlist(names)) == names
    with pytest.raises(ValueError):
        hostlist(["node01"])


@pytest.mark.parametrize("nodes", [1, 512, 513, 1024, topology.PLAN_MAX_NODES])
def test_bridges_stay_under_the_kernel_port_limit(nodes: int) -> None:
    plan = BridgePlan.of("abcdefghij", 249, nodes)
    assert len(plan.bridges) == -(-nodes // topology.NODES_PER_BRIDGE)
    assert all(p <= topology.BRIDGE_MAX_PORTS for p in plan.ports(nodes))
    assert sum(plan.ports(nodes)) == nodes + 2 + 2 * len(plan.trunks)
    names = [*plan.bridges, *(x for a, b, _ in plan.trunks for x in (a, b))]
    assert len(set(names)) == len(names) and all(len(n) <= IFNAMSIZ for n in names)


def test_1024_nodes_use_two_bridges_joined_by_a_trunk() -> None:
    st = ClusterState(name="big", index=7, nodes=topology.node_names(1024), network={}, config={})
    plan = st.bridge_plan
    assert plan.bridges == ("shb-big", "sb7x1") and plan.trunks == (("st7x1a", "st7x1b", "sb7x1"),)
    assert st.bridge_of("ctl") == st.bridge_of("node512") == "shb-big"
    assert st.bridge_of("node513") == st.bridge_of("node1024") == "sb7x1"
    veths = {st.host_veth(h) for h in st.all_hosts()}
    assert len(veths) == 1025 and all(len(v) <= IFNAMSIZ for v in veths)
    assert st.host_veth("node1024") == "sv7n1024"


def test_config_bound_is_within_the_plan() -> None:
    assert limits.MAX_NODES <= topology.PLAN_MAX_NODES
    assert validate({"nodes": limits.MAX_NODES}).nodes == limits.MAX_NODES
    with pytest.raises(ConfigError, match=f"nodes = {limits.MAX_NODES + 1} is out of range"):
        validate({"nodes": limits.MAX_NODES + 1})


def test_namespace_end_uses_the_plans_prefix_length() -> None:
    assert f'"$SHOAL_IP/{Addressing(1).prefix_len}"' in scripts.text(scripts.NET_UP)


def test_free_index_skips_indexes_with_leftover_links(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.cluster import state as state_mod

    monkeypatch.setattr(state_mod, "_host_ten_nets", lambda: {4})
    monkeypatch.setattr("shoal.cluster.state.os.listdir",
                        lambda p: ["eth0", "lo", "sv3n2", "sb5x1", "st6x1a", "shb-x", "sv"])
    assert state_mod._link_indexes() == {3, 5, 6}
    assert state_mod.free_index({1, 2}) == 7


def test_neighbour_table_is_raised_never_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.cluster import netns

    for name, value in (("gc_thresh2", "512"), ("gc_thresh3", "1024")):
        (tmp_path / name).write_text(value)
    monkeypatch.setattr(netns, "NEIGH_SYSCTL", tmp_path)
    netns.ensure_neighbour_table(1024 // netns.NEIGH_PER_HOST)  # the defaults hold
    assert (tmp_path / "gc_thresh3").read_text() == "1024"
    netns.ensure_neighbour_table(1026)  # 1024 nodes + controller + storage
    assert (tmp_path / "gc_thresh3").read_text() == str(netns.NEIGH_PER_HOST * 1026)
    assert (tmp_path / "gc_thresh2").read_text() == str(netns.NEIGH_PER_HOST * 1026 // 2)
