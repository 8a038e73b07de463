"""The cost model's terms: what each node pays on its own cores, and what nodes share.

A run's time-to-solution is the launch cost plus its phases in order; within a phase, CPU work
and the shared transfer overlap, so the phase lasts as long as the slower of the two:

    T(N) = launch(N) + sum over phases of max(cpu_phase, eta * shared_phase(N))

- ``cpu_phase`` is *measured*: the CPU seconds one node spent in the phase (cgroup cpuacct) divided
  by the cores that work can use. On a real cluster each node has its own cores, so this term
  does not grow with N. On the emulator all N nodes share the host's cores, so the fit uses
  ``max(c / p, N * c / host_cores)``: the emulator's contention is part of the fit and never of
  the prediction.
- ``shared_phase(N)`` is the physical floor of the method's transfer in seconds, from first
  principles (docs/MODEL.md): a server of bandwidth B serves N copies of S bytes in at least
  N*S/B; a pipelined chain needs S/B plus a per-hop chunk; sbcast's non-pipelined k-ary tree sends
  k copies per level. ``eta`` (>= 1 in practice) is the fitted factor by which a method misses its
  floor (protocol overhead, small reads, encryption on the emulator's storage path).
- ``launch(N) = l0 + l1 * ceil(log2 N)``: srun/slurmd fan-out and per-step start-up, fitted.

Only eta, l0 and l1 are fitted; everything else is measured (CPU seconds, bytes) or comes from
the site's description (bandwidths, cores, fan-out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# the job step's phases (shoal.staging.accounting.PHASES): the collective copy (sbcast), staging on
# each node (a broadcast or registry pull happens inside it), mounting, the workload, cleanup
PHASES = ("collective", "stage", "mount", "workload", "cleanup")


@dataclass(frozen=True)
class Fabric:
    """Bandwidths and rates a run sees; bytes per second, operations per second."""

    link_bps: float  # per node link
    storage_bps: float  # the shared storage server's aggregate bandwidth
    metadata_ops: float = math.inf  # the storage server's metadata rate (unvalidated here)
    sbcast_fanout: int = 8  # sbcast's maximum fan-out (sbcast --fanout, at most 8)
    bcast_fanout: int = 1  # 1 = chain
    chunk_bytes: float = 4 * 2**20


@dataclass(frozen=True)
class Observation:
    """One measured run reduced to what the model needs (means over the run's nodes)."""

    method: str
    workload: str
    nodes: int
    fabric: Fabric
    image_bytes: float  # S: bytes each node must receive for eager methods
    read_bytes: float  # S_r: bytes one node's workload reads from shared storage (lazy methods)
    files_read: float  # metadata operations one node's workload sends to shared storage
    local_bytes: float = 0.0  # node-local memory the image takes (peak; 0 for lazy methods)
    cpu: dict[str, float] = field(default_factory=dict)  # phase -> CPU seconds per node
    parallelism: dict[str, float] = field(default_factory=dict)  # phase -> cores the work can use
    seconds: float = 0.0  # measured time-to-solution (job step start to last workload end)
    host_cores: float = 2.0  # cores all emulated nodes shared (1 node per core on a real site)
    network: str = ""  # profile name, for leave-one-network-out


def _levels(n: int, k: int) -> int:
    """Levels of a k-ary tree that reaches n nodes (the root holds the data, n >= 1)."""
    return 0 if n <= 1 else math.ceil(math.log(n, max(k, 2)) - 1e-12)


def _server(n: int, s: float, f: Fabric) -> float:
    """N nodes each pull s bytes through their own link from one server of storage_bps."""
    return max(s / f.link_bps, n * s / f.storage_bps)


def shared_floor(method: str, phase: str, o: Observation | None = None, *, nodes: int = 1,
                 fabric: Fabric | None = None, image_bytes: float = 0.0, read_bytes: float = 0.0,
                 files_read: float = 0.0) -> float:
    """Seconds the shared part of `phase` needs at best for `method` (0 if it shares nothing)."""
    if o is not None:
        nodes, fabric = o.nodes, o.fabric
        image_bytes, read_bytes, files_read = o.image_bytes, o.read_bytes, o.files_read
    assert fabric is not None
    n, s, f = nodes, image_bytes, fabric
    if method == "untar" and phase == "stage":
        return _server(n, s, f)  # every node reads the tarball from shared storage
    if method in ("sbcast", "sbcast-squashfs") and phase == "collective":
        k = max(1, min(f.sbcast_fanout, n))
        # one read from storage at the root, then each level of the tree waits for whole blocks
        # and its senders send k copies each
        return s / f.storage_bps + max(1, _levels(n, k)) * k * s / f.link_bps
    if method.startswith("bcast") and phase == "stage":
        k = max(1, f.bcast_fanout)
        hops = n - 1 if k == 1 else _levels(n, k)
        # pipelined: the root's link carries k copies; each further hop adds one chunk
        return s / f.storage_bps + k * s / f.link_bps + hops * f.chunk_bytes / f.link_bps
    if method == "registry" and phase == "stage":
        return _server(n, s, f)  # the registry is one server on the storage host
    if method in ("squashfs-kernel", "squashfuse", "shared-dir") and phase == "workload":
        meta = n * files_read / f.metadata_ops if math.isfinite(f.metadata_ops) else 0.0
        return _server(n, read_bytes, f) + meta
    return 0.0


def cpu_time(o: Observation, phase: str, *, cores_per_node: float | None = None) -> float:
    """Wall seconds of a phase's CPU work.

    With ``cores_per_node`` (a real site) each node has its own cores; without it (the emulator)
    all nodes share ``o.host_cores``.
    """
    c = o.cpu.get(phase, 0.0)
    p = max(1.0, o.parallelism.get(phase, 1.0))
    if cores_per_node is not None:
        return c / min(p, cores_per_node)
    own = c / min(p, o.host_cores)
    return max(own, o.nodes * c / o.host_cores)


@dataclass(frozen=True)
class Params:
    """Fitted parameters of one (method, workload)."""

    eta: float  # factor over the physical floor of the shared transfer
    l0: float  # launch seconds at one node
    l1: float  # launch seconds per doubling of the node count


def launch(p: Params, n: int) -> float:
    return p.l0 + p.l1 * math.ceil(math.log2(max(n, 1)))


def predict_time(p: Params, o: Observation, *, cores_per_node: float | None = None) -> float:
    """The model's time-to-solution for observation-like inputs."""
    total = launch(p, o.nodes)
    for phase in PHASES:
        total += max(cpu_time(o, phase, cores_per_node=cores_per_node),
                     p.eta * shared_floor(o.method, phase, o))
    return total
