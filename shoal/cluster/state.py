"""On-disk state of virtual clusters: one directory per cluster under SHOAL_STATE/clusters/NAME.

The state file (cluster.json) is written before anything is created, so `down` can always find
and remove what a crashed or killed `up` left behind.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from shoal import names
from shoal.cluster import topology
from shoal.errors import ClusterError
from shoal.paths import clusters_root

STATE_VERSION = 1


@dataclass
class ClusterState:
    name: str
    index: int
    nodes: list[str]
    network: dict[str, Any]
    config: dict[str, Any]
    layer1_image: str = ""
    layer1_hash: str = ""
    controller_pid: int = 0
    storage: str = "bind"  # bind | sshfs (config.STORAGE_MODES)
    storage_pid: int = 0  # outer pid of the storage host (storage = "sshfs" only)
    broker_pid: int = 0  # the cluster's mount broker on the host (shoal.cluster.broker)
    node_pids: dict[str, int] = field(default_factory=dict)
    node_images: dict[str, str] = field(default_factory=dict)  # node -> layer1 hash it runs
    phase: str = "creating"  # creating | up | down
    boot_seconds: float = 0.0
    created: float = 0.0
    version: int = STATE_VERSION

    # -- names of kernel objects, derived from name/index so cleanup needs nothing else --
    @property
    def bridge(self) -> str:
        """The first (or only) bridge: controller, storage and nodes 1-NODES_PER_BRIDGE."""
        return topology.bridge_name(self.name, self.index, 0)

    @property
    def bridge_plan(self) -> topology.BridgePlan:
        return topology.BridgePlan.of(self.name, self.index, len(self.nodes))

    def bridge_of(self, host: str) -> str:
        """The bridge `host` is plugged into (controller and storage: the first one)."""
        j = 0 if host in ("ctl", "storage") else topology.bridge_of_node(topology.node_number(host))
        return topology.bridge_name(self.name, self.index, j)

    def netns(self, host: str) -> str:
        return f"shoal-{self.name}-{host}"

    def host_veth(self, host: str) -> str:
        short = "c" if host == "ctl" else "s" if host == "storage" else "n" + host.removeprefix("node")
        return f"sv{self.index}{short}"

    def all_hosts(self) -> list[str]:
        return ["ctl", *self.nodes]

    def netns_hosts(self) -> list[str]:
        """Hosts with a network namespace: all_hosts() plus the storage host when there is one."""
        return [*self.all_hosts(), *(["storage"] if self.storage == "sshfs" else [])]


class ClusterDir:
    """Paths inside one cluster's state directory."""

    def __init__(self, name: str) -> None:
        # the one gate between a name from the user and a directory shoal may delete
        self.name = names.cluster_name(name)
        self.root = clusters_root() / self.name

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def etc_slurm(self) -> Path:
        return self.root / "etc-slurm"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def pfs(self) -> Path:
        return self.root / "pfs"

    @property
    def ctl(self) -> Path:
        return self.root / "ctl"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def nodes_dir(self) -> Path:
        """Per-node upper layers and work dirs: a tmpfs while the cluster is up (manager.py)."""
        return self.root / "nodes"

    def node(self, node: str) -> Path:
        return self.nodes_dir / node

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> ClusterState:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no virtual cluster named {self.name!r}",
                "see `shoal cluster list`, or start one with `shoal cluster up --name NAME`",
            ) from None
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"cannot read state of cluster {self.name!r}: {exc}",
                f"remove it with `shoal cluster down --name {self.name}`",
            ) from exc
        if not isinstance(data, dict):
            raise ClusterError(f"state of cluster {self.name!r} is not a JSON object",
                               f"remove it with `shoal cluster down --name {self.name}`")
        data.pop("version", None)
        # fields a newer shoal added are ignored: `list` and `down` must work across versions
        known = {f.name for f in fields(ClusterState)}
        try:
            return ClusterState(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a required field missing
            raise ClusterError(f"cannot read state of cluster {self.name!r}: {exc}",
                               f"remove it with `shoal cluster down --name {self.name}`") from None

    def save(self, state: ClusterState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
        os.replace(tmp, self.state_file)


def list_states() -> list[ClusterState]:
    root = clusters_root()
    out: list[ClusterState] = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not names.is_cluster_name(d.name):
            continue  # not ours (shoal never creates such a directory)
        cd = ClusterDir(d.name)
        if cd.exists():
            try:
                out.append(cd.load())
            except ClusterError:
                continue
    return out


def free_index(taken: set[int]) -> int:
    """Lowest cluster index used neither by another cluster nor, as 10.<index>.0.0/16, by the host.

    The index names the cluster's subnet (shoal.cluster.topology), its veths and extra bridges.
    """
    host_tens = _host_ten_nets()
    links = _link_indexes()
    for i in range(1, topology.MAX_INDEX + 1):
        if i not in taken and i not in host_tens and i not in links:
            return i
    raise ClusterError(
        f"no free cluster index (10.1-{topology.MAX_INDEX}.0.0/16) for another cluster",
        "take a cluster down first",
    )


def _link_indexes() -> set[int]:
    """Indexes in the names of host links shaped like a cluster's (sv<i>c, sv<i>n7, sb<i>x1, ...):
    a crashed cluster's veth left behind would make `up` fail with "File exists"."""
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return set()
    return {int(m.group(1)) for n in names if (m := re.fullmatch(r"s[vbt]([0-9]+)[cnsx][0-9a-z]*", n))}


def _host_ten_nets() -> set[int]:
    """Second octets of the 10.x.y.z addresses and routes the host itself has."""
    try:
        text = Path("/proc/net/fib_trie").read_text()
    except OSError:
        return set()
    ten = re.compile(r"(?<![0-9.])10\.([0-9]{1,3})\.[0-9]{1,3}\.[0-9]{1,3}")
    return {int(m.group(1)) for m in ten.finditer(text)}
