"""Phase accounting on the nodes: one clock, CPU seconds, memory, bytes, and the bound of a run.

STANDARD LIBRARY ONLY, Python 3.6 (it runs in the node agent bundle; no dataclasses, no
``X | Y`` at run time). The job step (shoal.staging.jobstep) and node-side methods call it.

Where the figures come from, and why there:

- CPU seconds and peak memory per node: the node's own cgroups (shoal.cluster.cgroups makes them,
  ``/sys/fs/cgroup/{cpuacct,memory}/shoal/<cluster>/<node>``). A virtual node binds the host's
  cgroup tree, so the batch node reads every node of the allocation at each phase boundary (cheap:
  two small files per node). On a site without those cgroups the figures are None.
- host CPU: /proc/stat (not namespaced): what every process of the machine used, ours and others'.
- bytes over the network: the interface counters of the node's own network namespace
  (/proc/net/dev), read by each agent step on its node.
- bytes from storage: the storage host's link as the host sees it, bound read-only into every node
  at /run/shoal/storage-link (``rx_bytes`` there = what the storage host sent = reads served).
  Counted at the server, so FUSE read-ahead, re-reads and protocol overhead are what they cost.
- the fabric's capacities (link and storage bandwidth, host cores) from /etc/slurm/shoal-fabric.json,
  which the virtual cluster writes at boot.

``Phases`` lets a node-side method time sub-phases of its stage step (a broadcast inside ``stage``
reports ``collective``; a method that copies then mounts reports both): ``with phase(ctx, "mount")``.
"""

import contextlib
import json
import os
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

PHASES = ("collective", "stage", "mount", "workload", "cleanup")
FABRIC_FILE = "/etc/slurm/shoal-fabric.json"
STORAGE_LINK = "/run/shoal/storage-link"
CGROUP_ROOT = "/sys/fs/cgroup"
# the bound rule (docs/ARCHITECTURE.md "Fidelity"): see classify_bound
SATURATED = 0.7  # a link or the storage host carrying this share of its rate is the bottleneck
HOST_BUSY = 0.85  # the machine's cores this busy (by us or anyone): the run waited for CPU
ONE_CORE = 0.9  # cores' worth of CPU the cluster itself used: at least a serial CPU-bound step
OVERHEAD_BELOW = 0.35  # nothing used this much: fixed costs (launches, latency) dominate
BOUNDS = ("cpu", "link", "storage", "overhead")


def read_int(path: str, default: Optional[int] = None) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


# ---- cgroups --------------------------------------------------------------------------------


def own_cgroup(controller: str, proc: str = "/proc/self/cgroup") -> Optional[str]:
    """This process's cgroup path (relative to the hierarchy's root) for CONTROLLER, or None."""
    try:
        with open(proc) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3 and controller in parts[1].split(","):
                    return parts[2]
    except OSError:
        pass
    return None


def cluster_cgroup(controller: str = "cpuacct") -> Optional[str]:
    """Relative path of the cluster's cgroup directory (the parent of this node's), or None.

    Only a shoal virtual node sits at /shoal/<cluster>/<node>; anything else is not ours.
    """
    own = own_cgroup(controller)
    if not own:
        return None
    parts = own.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "shoal":
        return None
    return "/" + "/".join(parts[:2])


def node_usage(node: str, cluster: Optional[str] = None) -> Dict[str, Any]:
    """{cpu_s, memory_bytes, memory_peak_bytes} of NODE's cgroup (None values when unknown)."""
    cluster = cluster if cluster is not None else cluster_cgroup()
    out = {"cpu_s": None, "memory_bytes": None,
           "memory_peak_bytes": None}  # type: Dict[str, Any]
    if not cluster:
        return out
    cpu = read_int(os.path.join(CGROUP_ROOT, "cpuacct", cluster.strip("/"), node, "cpuacct.usage"))
    mem = os.path.join(CGROUP_ROOT, "memory", cluster.strip("/"), node)
    out["cpu_s"] = None if cpu is None else cpu / 1e9
    out["memory_bytes"] = read_int(os.path.join(mem, "memory.usage_in_bytes"))
    out["memory_peak_bytes"] = read_int(os.path.join(mem, "memory.max_usage_in_bytes"))
    return out


def cluster_cpu_s(cluster: Optional[str] = None) -> Optional[float]:
    """CPU seconds of the whole cluster (controller, storage host, every node) so far."""
    cluster = cluster if cluster is not None else cluster_cgroup()
    if not cluster:
        return None
    ns = read_int(os.path.join(CGROUP_ROOT, "cpuacct", cluster.strip("/"), "cpuacct.usage"))
    return None if ns is None else ns / 1e9


def reset_peak(node: str, cluster: Optional[str] = None) -> bool:
    """Start a new memory peak for NODE (needs root; silently skipped otherwise)."""
    cluster = cluster if cluster is not None else cluster_cgroup()
    if not cluster:
        return False
    path = os.path.join(CGROUP_ROOT, "memory", cluster.strip("/"), node, "memory.max_usage_in_bytes")
    try:
        with open(path, "w") as f:
            f.write("0")
        return True
    except OSError:
        return False


# ---- host, network, storage counters --------------------------------------------------------


def host_cpu() -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies of every CPU of the machine (/proc/stat is not namespaced)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    vals = [int(x) for x in fields[:8]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals) - idle, sum(vals))


def host_cores() -> int:
    n = os.cpu_count() or 1
    with contextlib.suppress(AttributeError, OSError):
        n = len(os.sched_getaffinity(0))
    return n


def net_counters() -> Tuple[int, int]:
    """(rx, tx) bytes over every interface but lo in this process's network namespace."""
    rx = tx = 0
    try:
        with open("/proc/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return (0, 0)
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = rest.split()
        if len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return (rx, tx)


def storage_link() -> Optional[Tuple[int, int]]:
    """(served, received) bytes of the storage host's link, or None without a storage host."""
    served = read_int(os.path.join(STORAGE_LINK, "rx_bytes"))
    received = read_int(os.path.join(STORAGE_LINK, "tx_bytes"))
    if served is None or received is None:
        return None
    return (served, received)


def tcp_bytes_from(address: str) -> Optional[int]:
    """Bytes this network namespace received over TCP from ADDRESS (``ss`` tcp_info), or None.

    The node's share of what the storage host sent: its sshfs connection(s) to the server.
    """
    try:
        out = subprocess.run(["ss", "-tinH", "dst", address], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    total = 0
    for tok in out.stdout.decode(errors="replace").split():
        if tok.startswith("bytes_received:"):
            with contextlib.suppress(ValueError):
                total += int(tok.split(":", 1)[1])
    return total


def fabric() -> Dict[str, Any]:
    """The cluster's capacities: link_mbit, storage_mbit (None: unshaped), storage, storage_ip."""
    try:
        with open(FABRIC_FILE) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def counters() -> Dict[str, Any]:
    """What an agent step records on its node at its start and end."""
    rx, tx = net_counters()
    out = {"w": time.time(), "net_rx": rx, "net_tx": tx}  # type: Dict[str, Any]
    ip = fabric().get("storage_ip")
    if ip:
        out["storage_rx"] = tcp_bytes_from(ip)
    return out


# ---- phases inside a node-side step -----------------------------------------------------------


def phase(ctx: Any, name: str) -> "_Phase":
    """Context manager: time sub-phase NAME of a stage step on this node into ctx.phases."""
    return _Phase(ctx, name)


class _Phase:
    def __init__(self, ctx: Any, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.t0 = 0.0
        self.w0 = 0.0
        self.c0 = None  # type: Optional[float]

    def _cpu(self) -> Optional[float]:
        own = own_cgroup("cpuacct")
        ns = read_int(os.path.join(CGROUP_ROOT, "cpuacct", own.strip("/"), "cpuacct.usage")) \
            if own else None
        return None if ns is None else ns / 1e9

    def __enter__(self) -> "_Phase":
        self.t0, self.w0, self.c0 = time.monotonic(), time.time(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        c1 = self._cpu()
        phases = getattr(self.ctx, "phases", None)
        if isinstance(phases, dict):
            phases[self.name] = {
                "seconds": round(time.monotonic() - self.t0, 6), "start": self.w0,
                "end": time.time(),
                "cpu_s": None if c1 is None or self.c0 is None else round(c1 - self.c0, 6),
            }


# ---- the job's clock: snapshots of every node at phase boundaries ------------------------------


class Clock:
    """Snapshots of the allocation at phase boundaries, taken on the batch node.

    ``mark(name)`` ends the phase NAME (started at the previous mark): wall time, every node's
    CPU seconds and memory peak (then reset), the cluster's CPU, host CPU and the storage link.
    """

    def __init__(self, nodes: List[str]) -> None:
        self.nodes = list(nodes)
        self.cluster = cluster_cgroup()
        self.marks = []  # type: List[Tuple[str, Dict[str, Any]]]
        self.marks.append(("start", self.snapshot()))

    def snapshot(self) -> Dict[str, Any]:
        nodes = {}  # type: Dict[str, Any]
        snap = {"w": time.time(), "t": time.monotonic(), "host_cpu": host_cpu(),
                "cluster_cpu_s": cluster_cpu_s(self.cluster), "storage": storage_link(),
                "nodes": nodes}  # type: Dict[str, Any]
        for n in self.nodes:
            nodes[n] = node_usage(n, self.cluster)
            reset_peak(n, self.cluster)
        return snap

    def mark(self, name: str) -> None:
        self.marks.append((name, self.snapshot()))

    @property
    def start(self) -> Dict[str, Any]:
        return self.marks[0][1]

    def phase_table(self) -> Dict[str, Any]:
        """{phase: {seconds, start, end, nodes: {node: {cpu_s, memory_peak_bytes}}}}."""
        out = {}  # type: Dict[str, Any]
        for i in range(1, len(self.marks)):  # (no zip(strict=): Python 3.6)
            a, (name, b) = self.marks[i - 1][1], self.marks[i]
            per = {}  # type: Dict[str, Dict[str, Any]]
            for n in self.nodes:
                ua, ub = a["nodes"].get(n) or {}, b["nodes"].get(n) or {}
                cpu = None
                if ua.get("cpu_s") is not None and ub.get("cpu_s") is not None:
                    cpu = round(ub["cpu_s"] - ua["cpu_s"], 6)
                per[n] = {"cpu_s": cpu, "memory_peak_bytes": ub.get("memory_peak_bytes")}
            ent = out.setdefault(name, {"seconds": 0.0, "start": a["w"], "end": b["w"],
                                        "nodes": {}})
            ent["seconds"] = round(ent["seconds"] + b["t"] - a["t"], 6)
            ent["end"] = b["w"]
            for n, v in per.items():
                old = ent["nodes"].get(n)
                if old is None:
                    ent["nodes"][n] = v
                else:  # a phase marked twice (should not happen): add CPU, keep the larger peak
                    if old["cpu_s"] is not None and v["cpu_s"] is not None:
                        old["cpu_s"] = round(old["cpu_s"] + v["cpu_s"], 6)
                    peaks = [p for p in (old["memory_peak_bytes"], v["memory_peak_bytes"])
                             if p is not None]
                    old["memory_peak_bytes"] = max(peaks) if peaks else None
        return out

    def window(self, until: str) -> Dict[str, Any]:
        """Resource use between the start and the mark named UNTIL (the time-to-solution window)."""
        snap = None
        for name, s in self.marks:
            if name == until:
                snap = s
        if snap is None:
            snap = self.marks[-1][1]
        a = self.start
        out = {"seconds": snap["t"] - a["t"], "cluster_cpu_s": None, "host_cpu_util": None,
               "storage_served_bytes": None, "storage_received_bytes": None}
        if a["cluster_cpu_s"] is not None and snap["cluster_cpu_s"] is not None:
            out["cluster_cpu_s"] = snap["cluster_cpu_s"] - a["cluster_cpu_s"]
        if a["host_cpu"] and snap["host_cpu"]:
            busy = snap["host_cpu"][0] - a["host_cpu"][0]
            total = snap["host_cpu"][1] - a["host_cpu"][1]
            out["host_cpu_util"] = busy / total if total > 0 else None
        if a["storage"] and snap["storage"]:
            out["storage_served_bytes"] = snap["storage"][0] - a["storage"][0]
            out["storage_received_bytes"] = snap["storage"][1] - a["storage"][1]
        return out


def utilisation(seconds: Optional[float], cluster_cpu_s: Optional[float], cores: int,
                busiest_link_bytes: Optional[int], link_mbit: Optional[float],
                storage_bytes: Optional[int], storage_mbit: Optional[float]
                ) -> Dict[str, Optional[float]]:
    """Fraction of each resource's capacity the run used over SECONDS (None: not measurable).

    cpu: the cluster's own CPU seconds over the cores of the machine; link: the busiest node
    link's bytes (in its busier direction) over the link rate; storage: bytes the storage host
    served over its bandwidth. An unshaped link or storage has no capacity to saturate: 0.
    """
    out = {"cpu": None, "link": None, "storage": None}  # type: Dict[str, Optional[float]]
    if not seconds or seconds <= 0:
        return out
    if cluster_cpu_s is not None and cores:
        out["cpu"] = cluster_cpu_s / (seconds * cores)
    if busiest_link_bytes is not None:
        out["link"] = 0.0 if not link_mbit else busiest_link_bytes / (seconds * link_mbit * 1e6 / 8)
    if storage_bytes is not None:
        out["storage"] = 0.0 if not storage_mbit else storage_bytes / (
            seconds * storage_mbit * 1e6 / 8)
    return out


def classify_bound(util: Dict[str, Optional[float]], host_busy: Optional[float] = None,
                   cores: int = 2) -> Optional[str]:
    """The bound of a run from its utilisations (``utilisation``) and the host's CPU busy share.

    1. a link or the storage host at >= SATURATED of its rate: that one (the higher of the two);
    2. else the cores were the limit if the machine was >= HOST_BUSY busy (by this cluster or by
       anything else: a run that waits for CPU is CPU-bound, whoever holds it) or the cluster used
       about a core's worth itself (ONE_CORE cores: a serial step such as gunzip): "cpu";
    3. else the most utilised resource if it reached OVERHEAD_BELOW, else "overhead".
    None when nothing was measured."""
    net = [(k, float(v)) for k, v in ((k, util.get(k)) for k in ("link", "storage"))
           if v is not None]
    cpu = util.get("cpu")
    if not net and cpu is None and host_busy is None:
        return None
    if net:
        name, best = max(net, key=lambda kv: kv[1])
        if best >= SATURATED:
            return name
    if (host_busy is not None and host_busy >= HOST_BUSY) or (
            cpu is not None and cpu * cores >= ONE_CORE):
        return "cpu"
    known = net + ([("cpu", float(cpu))] if cpu is not None else [])
    if not known:
        return "overhead"
    name, best = max(known, key=lambda kv: kv[1])
    return name if best >= OVERHEAD_BELOW else "overhead"
