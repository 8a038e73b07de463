"""Benchmark: virtual cluster boot time to all-IDLE and idle RSS per node, at 4, 16 and 64 nodes.

Run as root: `.venv/bin/python bench/bench_cluster.py [--nodes 4,16,64]`. Prints a table; the
targets are 16 nodes <= 10 s, 64 nodes <= 45 s, <= 64 MB RSS per idle node.
Each size is booted, measured after a short settle, and taken down before the next one.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rich.console import Console
from rich.table import Table

from shoal.cluster import manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.cluster.status import cluster_status
from shoal.images.layer1 import ensure_layer1

TARGET_BOOT = {16: 10.0, 64: 45.0}
TARGET_RSS_MB = 64.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", default="4,16,64")
    ap.add_argument("--name", default="bench")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring RSS")
    args = ap.parse_args()
    console = Console()
    image = ensure_layer1()
    console.print(f"layer1 image: {image.path} {image.size_bytes / 1e6:.0f} MB (target < 362 MB)")
    table = Table(title="virtual cluster: boot to all-IDLE and idle memory")
    for col in ("nodes", "boot s", "target s", "down s", "RSS/node MB (median)", "max MB", "procs/node"):
        table.add_column(col, justify="right")
    for n in [int(x) for x in args.nodes.split(",")]:
        if ClusterDir(args.name).exists():
            manager.down(args.name)
        res = manager.up(ClusterConfig(name=args.name, nodes=n), progress=False)
        try:
            time.sleep(args.settle)
            _, nodes = cluster_status(args.name)
            rss = [x.rss_bytes / 1e6 for x in nodes]
            procs = statistics.median(x.processes for x in nodes)
        finally:
            t0 = time.monotonic()
            manager.down(args.name)
            down_s = time.monotonic() - t0
        target = TARGET_BOOT.get(n)
        table.add_row(
            str(n), f"{res.boot_seconds:.1f}", f"{target:.0f}" if target else "-", f"{down_s:.1f}",
            f"{statistics.median(rss):.1f}", f"{max(rss):.1f}", f"{procs:.0f}",
        )
        console.print(table)
    console.print(f"RSS target per idle node: {TARGET_RSS_MB:.0f} MB")


if __name__ == "__main__":
    main()
