"""What a virtual cluster costs this machine's memory, measured, and what therefore fits.

Every node of every cluster shares the host's memory. An idle node's processes (supervisord,
rsyslogd, munged, slurmd, sshd and the unshare that holds the container) are measured as PSS
from /proc/PID/smaps_rollup: private pages count fully, shared pages (libraries, the layer1
image's page cache) are split among the processes that map them. PSS therefore falls as a
cluster grows, towards the private part (USS). The model for N nodes is

    node cost(N) = USS + (PSS - USS) * n / N  + kernel memory per node
    cluster(N)   = controller + N * node cost(N)

from a measurement taken on n nodes (the latest `up` or `status`, per layer1 build, in
SHOAL_STATE/capacity.json; the benchmark figure below before any measurement). The kernel part
(network namespace, veth pair, overlay and tmpfs mounts, page tables, kernel stacks) is not in any
process's PSS; it was measured once as the drop in MemAvailable minus the PSS
(bench/bench_cluster.py, docs/PERFORMANCE.md).

Node-local copies (untar, sbcast: a copy of the image in each node's tmpfs) also all land in
this machine's memory: `check_copies` refuses copies that cannot fit in total (called with a
method's per-node bytes by shoal.staging.fit).
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal import paths
from shoal.errors import ClusterError, DistError

MB = 1 << 20
# Measured on 256 idle nodes (bench/bench_cluster.py, 2026-11-29, docs/PERFORMANCE.md): used
# until this machine has measured a cluster of its own.
DEFAULT_NODE_PSS_MB = 16.5
DEFAULT_NODE_USS_MB = 16.4
DEFAULT_MEASURED_NODES = 256
# Kernel memory per node (slab, stacks, page tables: 1.4-1.5 MiB measured) and its tmpfs pages
# (upper layer, /run): MemAvailable fell by 17-20 MiB per node against a PSS of 16.5.
KERNEL_MB_PER_NODE = 3.0
# slurmctld, slurmdbd, MariaDB (32 MB buffer pool), munged, supervisord on the controller
CONTROLLER_MB = 400.0
# Memory left to the rest of the machine (other users, jobs' own memory): this share of
# MemTotal, at least RESERVE_MIN_MB.
RESERVE_SHARE = 0.10
RESERVE_MIN_MB = 1024.0
CAPACITY_FILE = "capacity.json"
# Nodes sampled for the measurement at `up` (spread over the cluster): enough for a median,
# cheap at any size (smaps_rollup walks each process's page tables).
SAMPLE_NODES = 24


@dataclass(frozen=True)
class NodeMemory:
    """Memory of one host's processes (bytes): PSS, USS (private), RSS, and how many processes."""

    pss: int = 0
    uss: int = 0
    rss: int = 0
    processes: int = 0


@dataclass(frozen=True)
class NodeCost:
    """Per-node memory of an idle layer1 node, as measured on `nodes` nodes (MiB)."""

    pss_mb: float
    uss_mb: float
    nodes: int
    layer1: str = ""
    measured: float = 0.0  # unix time; 0: the built-in benchmark figure

    def at(self, n: int) -> float:
        """MiB one node costs in a cluster of n nodes (shared pages spread over more nodes)."""
        shared = max(0.0, self.pss_mb - self.uss_mb)
        return self.uss_mb + shared * self.nodes / max(n, 1) + KERNEL_MB_PER_NODE

    def source(self) -> str:
        if not self.measured:
            return f"PSS {self.pss_mb:.1f} MiB per idle node measured by the benchmark on {self.nodes} nodes"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.measured))
        return f"PSS {self.pss_mb:.1f} MiB per idle node measured on {self.nodes} nodes at {when}"


DEFAULT_COST = NodeCost(DEFAULT_NODE_PSS_MB, DEFAULT_NODE_USS_MB, DEFAULT_MEASURED_NODES)


# ------------------------------------------------------------------------------ measurement


def processes_by_netns(inodes: Iterable[int]) -> dict[int, list[int]]:
    """netns inode -> pids of the host processes in it (one pass over /proc for all of them)."""
    want = set(inodes)
    out: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if ino in want:
            out[ino].append(int(entry))
    return out


_ROLLUP = re.compile(r"^(Rss|Pss|Private_Clean|Private_Dirty):\s+(\d+) kB", re.M)


def memory_of(pids: Iterable[int]) -> NodeMemory:
    """Summed PSS/USS/RSS of pids (processes that vanish meanwhile are skipped)."""
    pss = uss = rss = n = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        vals = {k: int(v) * 1024 for k, v in _ROLLUP.findall(text)}
        if not vals:
            continue  # kernel threads have an empty rollup
        pss += vals.get("Pss", 0)
        rss += vals.get("Rss", 0)
        uss += vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)
        n += 1
    return NodeMemory(pss, uss, rss, n)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def cost_from(mems: list[NodeMemory], nodes: int, layer1: str) -> NodeCost | None:
    """Per-node cost from the measured nodes of a cluster of `nodes` nodes (median)."""
    mems = [m for m in mems if m.processes]
    if not mems:
        return None
    return NodeCost(
        round(median([m.pss / MB for m in mems]), 2), round(median([m.uss / MB for m in mems]), 2),
        nodes, layer1, time.time(),
    )


def _file() -> Path:
    return paths.state_root() / CAPACITY_FILE


def record(cost: NodeCost) -> None:
    """Keep the latest measurement per layer1 build (atomic replace; the last writer wins)."""
    f = _file()
    data = _load()
    data[cost.layer1 or "?"] = asdict(cost)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, f)


def _load() -> dict[str, dict[str, float | int | str]]:
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def node_cost(layer1: str | None = None) -> NodeCost:
    """The measurement for this layer1 build, else the latest of any build, else the benchmark's."""
    found: list[NodeCost] = []
    for key, rec in _load().items():
        try:
            cost = NodeCost(float(rec["pss_mb"]), float(rec["uss_mb"]), int(rec["nodes"]),
                            str(rec.get("layer1", key)), float(rec.get("measured", 0.0)))
        except (KeyError, TypeError, ValueError):
            continue
        if cost.pss_mb > 0 and cost.nodes > 0:
            found.append(cost)
    same = [c for c in found if layer1 and c.layer1 == layer1]
    pool = same or found
    return max(pool, key=lambda c: c.measured) if pool else DEFAULT_COST


# --------------------------------------------------------------------------------- capacity


def meminfo() -> dict[str, int]:
    """/proc/meminfo in MiB."""
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) // 1024
    return out


@dataclass(frozen=True)
class Capacity:
    """How many idle nodes this machine can hold now, and why."""

    available_mb: float  # MemAvailable
    usable_mb: float  # what a new cluster may take: available minus the reserve
    controller_mb: float
    cost: NodeCost

    def need_mb(self, nodes: int) -> float:
        return self.controller_mb + nodes * self.cost.at(nodes)

    def max_nodes(self) -> int:
        lo, hi = 0, 1 << 16
        while lo < hi:  # need_mb is increasing in n
            mid = (lo + hi + 1) // 2
            if self.need_mb(mid) <= self.usable_mb:
                lo = mid
            else:
                hi = mid - 1
        return lo


def capacity(layer1: str | None = None, info: dict[str, int] | None = None) -> Capacity:
    info = info if info is not None else meminfo()
    avail = float(info.get("MemAvailable", 0))
    reserve = max(RESERVE_MIN_MB, RESERVE_SHARE * info.get("MemTotal", 0))
    return Capacity(avail, max(0.0, avail - reserve), CONTROLLER_MB, node_cost(layer1))


def check_nodes(nodes: int, layer1: str | None = None) -> Capacity:
    """Refuse a cluster of `nodes` idle nodes that this machine's free memory cannot hold."""
    cap = capacity(layer1)
    if cap.need_mb(nodes) > cap.usable_mb:
        most = cap.max_nodes()
        raise ClusterError(
            f"{nodes} nodes need about {cap.need_mb(nodes) / 1024:.1f} GiB "
            f"({cap.cost.at(nodes):.1f} MiB per idle node: {cap.cost.source()}, "
            f"+ {KERNEL_MB_PER_NODE:.0f} MiB kernel; controller {cap.controller_mb:.0f} MiB), but only "
            f"{cap.usable_mb / 1024:.1f} GiB of the {cap.available_mb / 1024:.1f} GiB available may be used",
            f"at most {most} nodes fit now: use --nodes {most} or fewer, or free memory "
            "(`shoal cluster list` shows the clusters running here)",
        )
    return cap


# ------------------------------------------------------------------- node-local copies (staging)


def usable_mb(info: dict[str, int] | None = None) -> float:
    """MemAvailable minus the reserve left to the rest of the machine (MiB)."""
    info = info if info is not None else meminfo()
    reserve = max(RESERVE_MIN_MB, RESERVE_SHARE * info.get("MemTotal", 0))
    return max(0.0, info.get("MemAvailable", 0) - reserve)


def check_copies(what: str, per_node: int, nodes: int, tmpfs_size: str | None, alternative: str,
                 available_mb: float | None = None) -> None:
    """Refuse `nodes` node-local copies of `per_node` bytes each that cannot fit: one larger than
    a node's tmpfs, or all of them together larger than this machine's usable memory (on a
    virtual cluster every node's tmpfs is this machine's memory: untar of a 191 MB image on 256
    nodes wants 49 GB). `what` names the staging, `alternative` is the way out for the hint."""
    if per_node <= 0:
        return
    tmpfs = size_bytes(tmpfs_size) if tmpfs_size else 0
    if tmpfs and per_node > tmpfs:
        raise DistError(
            f"{what} needs {per_node / MB:.0f} MiB on each node, but each node's /tmp (tmpfs) holds "
            f"{tmpfs_size}",
            f"{alternative}, or boot the cluster with a larger --tmpfs-size",
        )
    avail = usable_mb() if available_mb is None else available_mb
    total_mb = nodes * per_node / MB
    if total_mb > avail:
        most = int(avail * MB // per_node)
        raise DistError(
            f"{what} on {nodes} nodes needs {total_mb / 1024:.1f} GiB of node-local memory in total "
            f"({per_node / MB:.0f} MiB per node, every node's tmpfs is this machine's memory), but "
            f"only {avail / 1024:.1f} GiB can be used",
            f"at most {most} nodes; or {alternative}",
        )


def size_bytes(text: str) -> int:
    """A tmpfs size (bytes, or K/M/G in powers of 1024) in bytes; 0 when it is not one."""
    m = re.fullmatch(r"([0-9]+)([KMG]?)", text)
    if not m:
        return 0
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
