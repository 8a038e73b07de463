"""Address plan, node naming and bridge layout of one virtual cluster (pure functions).

Addresses: cluster index k (unique on the host, 1-249) owns 10.k.0.0/16. Hosts are numbered
h = 1, 2, ...: the controller is h=2, the storage host h=3, node i is h=9+i. Host h sits at
10.k.((h-1)//254).((h-1)%254+1), so every address ends in 1-254 (never .0 or .255, which some
tools treat as network or broadcast addresses even inside a /16): one /16 holds 65,000 hosts.

Bridges: a Linux bridge has at most 1023 ports (BR_MAX_PORTS = 1024 with port number 0 unused).
Nodes are put on bridges in blocks of NODES_PER_BRIDGE. The first bridge (`shb-NAME`) also holds
the controller and the storage host; each further bridge (`sbKxJ`) joins the first one through a
veth pair (`stKxJa` on the first bridge, `stKxJb` on bridge J), so all hosts share one L2 segment
and one subnet: a two-level switch tree, as in a real cluster with leaf switches. Up to
NODES_PER_BRIDGE nodes there is one bridge and no trunk, exactly the old layout.

Slurm node names are node1..nodeN; slurm.conf lists them in hostlist form, one NodeName line per
run of nodes whose addresses share the third octet (NodeName=node[247-500] NodeAddr=10.k.1.[1-254]).
Interface names must fit IFNAMSIZ (15 characters): `sv249n4096` and `sb249x7` do.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.slurm.hostlist import compress, expand

# Design limit of the plan (addresses, bridges, interface names), tested; the config's bound is
# shoal.limits.MAX_NODES (what this 2-core machine is meant to boot), and what fits in memory
# now is decided at `up` by shoal.cluster.capacity from measured memory per node.
PLAN_MAX_NODES = 4096
# Kernel limit on ports per bridge (net/bridge/br_private.h: BR_MAX_PORTS = 1 << 10, port 0 unused).
BRIDGE_MAX_PORTS = 1023
# Nodes per bridge: well under the port limit, leaving room for the controller, storage and the
# trunks of up to PLAN_MAX_NODES / NODES_PER_BRIDGE - 1 further bridges on the first one.
NODES_PER_BRIDGE = 512
HOSTS_PER_OCTET = 254
FIRST_NODE_HOST = 10  # node1 is host 10: .1 unused, .2 controller, .3 storage, .4-.9 spare
MAX_INDEX = 249


@dataclass(frozen=True)
class Addressing:
    """IPv4 plan of one cluster: 10.<index>.0.0/16; controller .0.2, storage .0.3, nodes from .0.10."""

    index: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_INDEX:
            raise ValueError(f"cluster index {self.index} out of range 1-{MAX_INDEX}")

    @property
    def prefix(self) -> str:
        return f"10.{self.index}."

    @property
    def subnet(self) -> str:
        return f"10.{self.index}.0.0/16"

    @property
    def prefix_len(self) -> int:
        return 16

    @property
    def pattern(self) -> str:
        """ssh known_hosts / authorized_keys wildcard for every address of the cluster."""
        return f"10.{self.index}.*"

    def host(self, h: int) -> str:
        third, fourth = divmod(h - 1, HOSTS_PER_OCTET)
        if h < 1 or third > 255:
            raise ValueError(f"host number {h} out of range")
        return f"10.{self.index}.{third}.{fourth + 1}"

    @property
    def controller(self) -> str:
        return self.host(2)

    @property
    def storage(self) -> str:
        return self.host(3)

    def node(self, i: int) -> str:
        """Address of node i (1-based)."""
        if not 1 <= i <= PLAN_MAX_NODES:
            raise ValueError(f"node index {i} out of range 1-{PLAN_MAX_NODES}")
        return self.host(FIRST_NODE_HOST - 1 + i)

    def node_blocks(self, nodes: int) -> list[tuple[int, int, str]]:
        """Runs of nodes whose addresses share the third octet: (first, last, NodeAddr hostlist)."""
        out: list[tuple[int, int, str]] = []
        i = 1
        while i <= nodes:
            h = FIRST_NODE_HOST - 1 + i
            third, fourth0 = divmod(h - 1, HOSTS_PER_OCTET)
            last = min(nodes, i + (HOSTS_PER_OCTET - 1 - fourth0))
            a, b = fourth0 + 1, fourth0 + 1 + (last - i)
            base = f"10.{self.index}.{third}."
            out.append((i, last, f"{base}{a}" if a == b else f"{base}[{a}-{b}]"))
            i = last + 1
        return out


def node_name(i: int) -> str:
    return f"node{i}"


def node_names(nodes: int) -> list[str]:
    return [node_name(i) for i in range(1, nodes + 1)]


def node_number(name: str) -> int:
    """1-based number of node `name` (node17 -> 17)."""
    digits = name.removeprefix("node")
    if not name.startswith("node") or not digits.isdigit() or digits.startswith("0"):
        raise ValueError(f"{name!r} is not a node name")
    return int(digits)


def hostlist(names: list[str]) -> str:
    """Slurm's compact form of node names: node[1-4,7,9-12] (any order, duplicates dropped).

    Names are checked here; the folding is shoal.slurm.hostlist's, the one implementation."""
    nums = sorted({node_number(n) for n in names})
    return compress([node_name(i) for i in nums])


def expand_hostlist(expr: str) -> list[str]:
    """Inverse of hostlist() for node names: node[1-3,7] -> node1 node2 node3 node7."""
    names = expand(expr)
    for n in names:
        node_number(n)  # only node names here
    return names


# ------------------------------------------------------------------------------------ bridges


def bridge_count(nodes: int) -> int:
    return max(1, -(-nodes // NODES_PER_BRIDGE))


def bridge_name(cluster: str, index: int, j: int) -> str:
    """Bridge j of a cluster: j = 0 keeps the historical name shb-NAME; more are sbKxJ."""
    return f"shb-{cluster}" if j == 0 else f"sb{index}x{j}"


def trunk_names(index: int, j: int) -> tuple[str, str]:
    """The veth pair joining bridge j (j >= 1) to bridge 0: (end on bridge 0, end on bridge j)."""
    return f"st{index}x{j}a", f"st{index}x{j}b"


def bridge_of_node(i: int) -> int:
    """Which bridge node i (1-based) is plugged into."""
    return (i - 1) // NODES_PER_BRIDGE


@dataclass(frozen=True)
class BridgePlan:
    """Every bridge of a cluster and the trunks between them (all names on the host)."""

    bridges: tuple[str, ...]
    trunks: tuple[tuple[str, str, str], ...]  # (veth on bridge 0, veth on bridge j, bridge j)

    @classmethod
    def of(cls, cluster: str, index: int, nodes: int) -> BridgePlan:
        n = bridge_count(nodes)
        bridges = tuple(bridge_name(cluster, index, j) for j in range(n))
        trunks = tuple((*trunk_names(index, j), bridges[j]) for j in range(1, n))
        return cls(bridges, trunks)

    def ports(self, nodes: int) -> list[int]:
        """Ports used on each bridge (host links + trunks), to check against BRIDGE_MAX_PORTS."""
        counts = [0] * len(self.bridges)
        counts[0] += 2 + len(self.trunks)  # controller, storage (when present), trunks
        for i in range(1, nodes + 1):
            counts[bridge_of_node(i)] += 1
        for j in range(1, len(self.bridges)):
            counts[j] += 1
        return counts
