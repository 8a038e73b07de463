"""Per-host cgroups of a virtual cluster (cgroup v1): accounting and limits for every container.

All emulated nodes share this machine's cores and memory. To tell what each node costs (CPU
seconds per phase, peak memory with its tmpfs pages) and to give it the memory a real node has,
every host of a cluster (controller, storage host, each node) runs in its own cgroup, one per
controller, named

    /sys/fs/cgroup/<controller>/shoal/<cluster>/<host>

The cluster's directory is their common parent, so its counters are the whole cluster's. The
init script of each host (shoal/cluster/scripts.py, storage.py) writes ``0`` into the
``cgroup.procs`` files listed in ``$SHOAL_CGROUP_PROCS`` before it starts anything, which moves
PID 1 of the container (and so every process it will ever start: slurmd, job steps, sshfs,
squashfuse) into the host's cgroups without a race.

This module is the one place that makes, configures and removes them: a further controller (the
per-node ``devices`` allow-list of node hardening) is one more entry in CONTROLLERS plus its settings in
``configure``. Node-side readers of the same files live in shoal.staging.accounting.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ClusterError

ROOT = Path("/sys/fs/cgroup")
PARENT = "shoal"
# cpu: equal cpu.shares per host, so one busy node cannot starve the others of the 2 cores;
# cpuacct: CPU seconds per host; memory: the node's memory limit (tmpfs pages are charged to the
# cgroup of the process that wrote them) and its peak.
CONTROLLERS: tuple[str, ...] = ("cpu", "cpuacct", "memory")


def available(controllers: Sequence[str] = CONTROLLERS) -> bool:
    """Whether every controller is mounted as a v1 hierarchy of its own here."""
    return all((ROOT / c / "cgroup.procs").is_file() for c in controllers)


@dataclass(frozen=True)
class HostCgroup:
    """The cgroups of one host of one cluster."""

    cluster: str
    host: str

    def path(self, controller: str) -> Path:
        return ROOT / controller / PARENT / self.cluster / self.host

    def procs_files(self, controllers: Sequence[str] = CONTROLLERS) -> list[str]:
        return [str(self.path(c) / "cgroup.procs") for c in controllers]

    def env(self) -> dict[str, str]:
        """The init script's environment entry that moves its PID 1 in."""
        return {"SHOAL_CGROUP_PROCS": " ".join(self.procs_files())}


def cluster_path(cluster: str, controller: str) -> Path:
    return ROOT / controller / PARENT / cluster


# cpu.shares of one host; the controller gets more: it is the critical path of a boot with
# hundreds of nodes (a real one has its own machine). The groups above weigh what they hold, or
# a cluster of 256 busy nodes would get the CPU of one process beside the host's own processes
# (cgroup v1 weighs a child group like one task of its parent).
HOST_SHARES = 1024
CONTROLLER_SHARES = 10 * HOST_SHARES
MAX_SHARES = 262144  # the kernel's upper bound


def weigh(cluster: str, hosts: int) -> None:
    """Give the cluster's cpu group the weight of its hosts (and the parent the most it can
    have: it holds every cluster), so nodes compete with the host's processes as processes."""
    for path, shares in ((ROOT / "cpu" / PARENT, MAX_SHARES),
                         (cluster_path(cluster, "cpu"), min(MAX_SHARES, HOST_SHARES * hosts))):
        path.mkdir(parents=True, exist_ok=True)
        _write(path / "cpu.shares", str(shares))


def create(cluster: str, host: str, memory_mb: int | None = None,
           cpu_shares: int | None = None) -> HostCgroup:
    """Make (or reuse) the host's cgroups and apply its limits."""
    cg = HostCgroup(cluster, host)
    for c in CONTROLLERS:
        p = cg.path(c)
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClusterError(f"cannot create cgroup {p}: {exc.strerror}",
                               "per-node accounting needs cgroup v1 cpu, cpuacct and memory "
                               "mounted under /sys/fs/cgroup, and root") from None
    configure(cg, memory_mb)
    if cpu_shares is not None:
        _write(cg.path("cpu") / "cpu.shares", str(cpu_shares))
    return cg


def configure(cg: HostCgroup, memory_mb: int | None) -> None:
    """Limits of one host: memory (RAM, and RAM+swap where the kernel accounts swap)."""
    if memory_mb is None:
        return
    limit = str(memory_mb * 2**20)
    mem = cg.path("memory")
    _write(mem / "memory.limit_in_bytes", limit)
    # with swap accounting, a tmpfs could otherwise swap out instead of hitting the limit
    memsw = mem / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        with contextlib.suppress(OSError):
            _write(memsw, limit)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise ClusterError(f"cannot write {value} to {path}: {exc.strerror}",
                           "is the memory cgroup controller mounted (cgroup v1)?") from None


def remove(cluster: str) -> list[str]:
    """Remove the cluster's cgroups (after its processes are gone); returns what is left."""
    left: list[str] = []
    for c in CONTROLLERS:
        top = cluster_path(cluster, c)
        if not top.is_dir():
            continue
        for child in sorted(p for p in top.iterdir() if p.is_dir()):
            with contextlib.suppress(OSError):
                os.rmdir(child)
        with contextlib.suppress(OSError):
            os.rmdir(top)
        if top.exists():
            left.append(f"cgroup {top}")
    return left


def usage(cluster: str, host: str | None = None) -> dict[str, int]:
    """CPU nanoseconds, memory now and peak of a host (or the whole cluster with host=None)."""
    base = {c: cluster_path(cluster, c) / host if host else cluster_path(cluster, c)
            for c in ("cpuacct", "memory")}
    out: dict[str, int] = {}
    for key, path in (("cpu_ns", base["cpuacct"] / "cpuacct.usage"),
                      ("memory_bytes", base["memory"] / "memory.usage_in_bytes"),
                      ("memory_peak_bytes", base["memory"] / "memory.max_usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            out[key] = int(path.read_text())
    return out
