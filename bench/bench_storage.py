"""Shared-storage read benchmark: /pfs as a bind mount vs sshfs from the storage host, on eth10g.

    .venv/bin/python bench/bench_storage.py [--size-mb 200] [--nodes 1,2,4] [--reps 3]
                                            [--modes bind,sshfs] [--json FILE]

For each storage mode a 4-node cluster `sfs2` (network eth10g: 1 Gbit/s per link) is booted, a
file of --size-mb MB (random bytes) is written into its pfs directory on the host, and N nodes
read it at once with dd (N in --nodes, --reps times each). Per node: bytes / dd's own time.
Aggregate: all bytes / (last end - first start), from timestamps taken on the host clock that
every node shares. The physical limit beside it: with sshfs every byte leaves the storage host
through one link of rate B and enters a node through its own link of rate B, so per node
<= min(B, B/N) and aggregate <= B; with bind no link is on the path (memory speed), and the link
rate is shown only for reference. The cluster is taken down at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shoal.cluster import cgroups, enter, manager
from shoal.cluster.config import NETWORK_PROFILES, ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.runner import run

NAME = "sfs2"
NETWORK = "eth10g"
CLUSTER_NODES = 4
MB = 1_000_000
# Wide enough for the table when the output goes to a file or a report (rich assumes 80).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 130)


@dataclass(frozen=True)
class Read:
    node: str
    nbytes: int
    seconds: float  # dd's own elapsed time
    start: float  # host clock (CLOCK_REALTIME), shared by every node
    end: float


@dataclass(frozen=True)
class Sample:
    mode: str
    nodes: int
    rep: int
    reads: list[Read]
    # CPU seconds of the whole cluster (storage host, nodes' sshfs/ssh, dd) while it read: what
    # the storage path costs the shared cores (shoal/cluster/cgroups.py)
    cpu_s: float | None = None

    @property
    def per_node(self) -> list[float]:
        return [r.nbytes / r.seconds / MB for r in self.reads]

    @property
    def aggregate(self) -> float:
        span = max(r.end for r in self.reads) - min(r.start for r in self.reads)
        return sum(r.nbytes for r in self.reads) / span / MB


def read_on(node: str, path: str) -> Read:
    prefix = enter.enter_prefix(ClusterDir(NAME).load(), node)
    out = run([*prefix, "sh", "-c", f"date +%s.%N; dd if={path} of=/dev/null bs=1M; date +%s.%N"],
              timeout=600)
    stamps = out.stdout.split()
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.e-]+) s", out.stderr, re.M)
    if m is None or len(stamps) != 2:
        raise RuntimeError(f"unexpected dd output on {node}: {out.stdout!r} {out.stderr!r}")
    return Read(node, int(m.group(1)), float(m.group(2)), float(stamps[0]), float(stamps[1]))


def bench_mode(mode: str, size_mb: int, counts: list[int], reps: int, progress: Progress) -> list[Sample]:
    task = progress.add_task(f"{mode}: booting {CLUSTER_NODES} nodes", total=len(counts) * reps)
    samples: list[Sample] = []
    with manager.booted(ClusterConfig(name=NAME, nodes=CLUSTER_NODES, network=NETWORK, storage=mode,
                                      accounting=False)):
        state = ClusterDir(NAME).load()
        data = ClusterDir(NAME).pfs / f"bench-{size_mb}.bin"
        with open(data, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(MB))
        for rep in range(reps):
            for n in counts:
                progress.update(task, description=f"{mode}: {n} node(s), rep {rep + 1}/{reps}")
                nodes = state.nodes[:n]
                c0 = cgroups.usage(NAME).get("cpu_ns")
                with ThreadPoolExecutor(n) as pool:
                    reads = list(pool.map(lambda nd: read_on(nd, f"/pfs/{data.name}"), nodes))
                c1 = cgroups.usage(NAME).get("cpu_ns")
                cpu = (c1 - c0) / 1e9 if c0 is not None and c1 is not None else None
                samples.append(Sample(mode, n, rep, reads, cpu))
                progress.advance(task)
    return samples


def table(samples: list[Sample], size_mb: int, reps: int) -> Table:
    link = (NETWORK_PROFILES[NETWORK].rate_mbit or 0) / 8  # MB/s
    store = (NETWORK_PROFILES[NETWORK].storage_mbit or 0) / 8  # MB/s: the storage host's HTB
    t = Table(title=f"/pfs read of a {size_mb} MB file on N nodes at once, {NETWORK} "
                    f"({link:.0f} MB/s per link, storage host {store:.0f} MB/s), {reps} reps: "
                    "mean (min-max)")
    for col in ("storage", "N", "per node MB/s", "aggregate MB/s", "limit per node", "limit aggregate",
                "% of limit", "CPU s per 100 MB"):
        t.add_column(col, justify="right" if col not in ("storage",) else "left")
    keys = sorted({(s.mode, s.nodes) for s in samples}, key=lambda k: (k[0] != "bind", k[1]))
    for mode, n in keys:
        group = [s for s in samples if s.mode == mode and s.nodes == n]
        per = [v for s in group for v in s.per_node]
        agg = [s.aggregate for s in group]
        if mode == "sshfs":
            # every byte leaves through the storage host's link (HTB) and enters a node's link
            lim_agg = min(store or link, link * n)
            lim_node = min(link, lim_agg / n)
            pct = f"{100 * statistics.mean(agg) / lim_agg:.0f}%"
            lims = (f"{lim_node:.1f}", f"{lim_agg:.1f}")
        else:
            pct = "-"
            lims = (f"none ({link:.0f} link)", "none (memory)")
        cpus = [s.cpu_s / (n * size_mb / 100) for s in group if s.cpu_s is not None]
        t.add_row(mode, str(n), f"{statistics.mean(per):.1f} ({min(per):.1f}-{max(per):.1f})",
                  f"{statistics.mean(agg):.1f} ({min(agg):.1f}-{max(agg):.1f})", *lims, pct,
                  f"{statistics.mean(cpus):.2f}" if cpus else "-")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--nodes", default="1,2,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", default="bind,sshfs")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--name", default="sfs2", help="cluster name (default %(default)s)")
    args = ap.parse_args()
    global NAME
    NAME = args.name
    counts = [int(x) for x in args.nodes.split(",")]
    if max(counts) > CLUSTER_NODES:
        ap.error(f"at most {CLUSTER_NODES} nodes")
    samples: list[Sample] = []
    with Progress(console=console, transient=True) as progress:
        for mode in args.modes.split(","):
            samples += bench_mode(mode, args.size_mb, counts, args.reps, progress)
    console.print(table(samples, args.size_mb, args.reps))
    if args.json:
        doc = {"format": 1, "network": NETWORK_PROFILES[NETWORK].as_dict(), "size_mb": args.size_mb,
               "samples": [{**asdict(s), "per_node_mb_s": s.per_node, "aggregate_mb_s": s.aggregate}
                           for s in samples]}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
