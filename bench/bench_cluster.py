"""Benchmark: the virtual cluster at scale. Boot to all-IDLE (with its phases), `srun -N<all>
hostname`, `shoal cluster status`, `down`, memory per idle node (PSS, USS, RSS, and the drop in
MemAvailable), and the host's load, for each cluster size in turn.

Run as root: `.venv/bin/python bench/bench_cluster.py --nodes 4,16,64,128,256 [--json F]`.
Targets: 256 nodes all IDLE <= 90 s, `srun -N256 hostname` <= 10 s, status <= 5 s,
down <= 30 s leaving nothing. Each size is booted, measured after a short settle, and taken down
(also on failure or Ctrl-C) before the next one. Other users of the machine distort the times:
the load average is printed beside every row, and the CPU time the machine spent during the boot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shoal.cluster import capacity, manager, netns
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import enter_prefix
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.cluster.status import cluster_status
from shoal.images.layer1 import ensure_layer1
from shoal.runner import run

TARGETS = {"boot": {256: 90.0, 512: 180.0}, "srun": {256: 10.0}, "status": {256: 5.0}, "down": {256: 30.0}}
SHOAL = [sys.executable, "-m", "shoal.cli.main"]
MiB = 1 << 20


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields]
    idle = vals[3] + vals[4]  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def kernel_mb(info: dict[str, int]) -> int:
    """Kernel memory that grows with namespaces, mounts and processes (MiB)."""
    return info.get("SUnreclaim", 0) + info.get("KernelStack", 0) + info.get("PageTables", 0)


def leftovers(state: ClusterState) -> list[str]:
    """Anything of the cluster still on the host: namespaces, bridges, processes, mounts, state.

    By name only: once `down` has freed them, the cluster's index (in its veth names) and its
    namespaces' inode numbers may already belong to another engineer's new cluster.
    """
    left = [f"netns {ns}" for ns in os.listdir(netns.NETNS_DIR) if ns.startswith(f"shoal-{state.name}-")] \
        if netns.NETNS_DIR.is_dir() else []
    left += [f"bridge {br}" for br in state.bridge_plan.bridges if Path(f"/sys/class/net/{br}").exists()]
    mark = f"/clusters/{state.name}/".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes():
                left.append(f"pid {pid}")
        except OSError:
            continue
    if f"/clusters/{state.name}/" in Path("/proc/self/mountinfo").read_text():
        left.append("mount")
    if ClusterDir(state.name).root.exists():
        left.append("state dir")
    return left


def timed(argv: list[str], timeout: float) -> tuple[float, str]:
    t = time.monotonic()
    out = run(argv, timeout=timeout)
    return time.monotonic() - t, out.stdout


def measure(n: int, name: str, settle: float, sruns: int, console: Console, state_service: bool = True,
            ) -> dict[str, Any]:
    if ClusterDir(name).exists():
        manager.down(name)
    row: dict[str, Any] = {"nodes": n, "state_service": state_service, "load_before": os.getloadavg()[0]}
    mem0 = capacity.meminfo()
    cpu0 = cpu_busy_seconds()
    res = manager.up(ClusterConfig(name=name, nodes=n, state_service=state_service), progress=False)
    state = res.state
    try:
        row.update(boot_s=round(res.boot_seconds, 1), phases=res.phases,
                   boot_cpu_s=round(cpu_busy_seconds() - cpu0, 1), load_after_boot=os.getloadavg()[0])
        console.print(f"{n} nodes idle in {res.boot_seconds:.1f} s: {res.phases}")
        srun = [*enter_prefix(state, "ctl"), "srun", f"-N{n}", "--chdir=/tmp", "hostname"]
        times = []
        for _ in range(sruns):
            t, out = timed(srun, 300)
            assert len(set(out.split())) == n, f"srun answered from {len(set(out.split()))} of {n} nodes"
            times.append(t)
        row.update(srun_first_s=round(times[0], 2), srun_median_s=round(statistics.median(times), 2))
        console.print(f"srun -N{n} hostname: {', '.join(f'{t:.2f}' for t in times)} s")
        time.sleep(settle)
        t = time.monotonic()
        subprocess.run([*SHOAL, "cluster", "status", "--name", name], check=True, capture_output=True,
                       timeout=120)
        row["status_s"] = round(time.monotonic() - t, 2)
        _, nodes = cluster_status(name, record=False)
        idle = [x for x in nodes if x.slurm_state == "idle"]
        mem1 = capacity.meminfo()
        row.update(
            pss_mib=round(statistics.median(x.pss_bytes for x in idle) / MiB, 1),
            pss_max_mib=round(max(x.pss_bytes for x in idle) / MiB, 1),
            uss_mib=round(statistics.median(x.uss_bytes for x in idle) / MiB, 1),
            rss_mib=round(statistics.median(x.rss_bytes for x in idle) / MiB, 1),
            procs=statistics.median(x.processes for x in idle),
            programs=sorted({p.name for x in nodes for p in x.programs}),
            avail_drop_mib_per_node=round((mem0["MemAvailable"] - mem1["MemAvailable"]) / n, 1),
            kernel_mib_per_node=round((kernel_mb(mem1) - kernel_mb(mem0)) / n, 2),
            load_measured=os.getloadavg()[0],
        )
    finally:
        t = time.monotonic()
        left = manager.down(name)
        row["down_s"] = round(time.monotonic() - t, 1)
        left += [x for x in leftovers(state) if x not in left]
        row["left"] = left
        row["load_end"] = os.getloadavg()[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", default="4,16,64,128,256")
    ap.add_argument("--name", default="bench")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring memory")
    ap.add_argument("--sruns", type=int, default=3, help="srun -N<all> hostname repetitions")
    ap.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    ap.add_argument("--no-state-service", action="store_true",
                    help="boot without the node state service (and so without its listener's reports)")
    args = ap.parse_args()
    console = Console()
    image = ensure_layer1()
    console.print(f"layer1 image: {image.path} {image.size_bytes / 1e6:.0f} MB")
    table = Table(title="virtual cluster at scale (load = 1-min load average: before / during / end)")
    for col in ("nodes", "boot s", "boot CPU s", "srun s (1st/med)", "status s", "down s", "PSS MiB/node",
                "USS", "RSS", "avail drop MiB/node", "kernel MiB/node", "load", "left"):
        table.add_column(col, justify="right")
    rows: list[dict[str, Any]] = []
    for n in [int(x) for x in args.nodes.split(",")]:
        row = measure(n, args.name, args.settle, args.sruns, console, not args.no_state_service)
        rows.append(row)
        tb = TARGETS["boot"].get(n)
        table.add_row(
            str(n), f"{row['boot_s']}" + (f" (<= {tb:.0f})" if tb else ""), f"{row['boot_cpu_s']}",
            f"{row['srun_first_s']}/{row['srun_median_s']}", f"{row['status_s']}", f"{row['down_s']}",
            f"{row['pss_mib']} (max {row['pss_max_mib']})", f"{row['uss_mib']}", f"{row['rss_mib']}",
            f"{row['avail_drop_mib_per_node']}", f"{row['kernel_mib_per_node']}",
            f"{row['load_before']:.1f}/{row['load_measured']:.1f}/{row['load_end']:.1f}",
            ", ".join(row["left"]) or "nothing",
        )
        console.print(table)
        if args.json:
            old = json.loads(args.json.read_text()) if args.json.exists() else []
            args.json.write_text(json.dumps([*old, {**row, "time": time.time()}], indent=1))
    console.print(f"node programs: {', '.join(rows[-1]['programs']) if rows else '-'}")


if __name__ == "__main__":
    main()
