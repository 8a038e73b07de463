"""Benchmark: N `cluster up` / `down` cycles leave zero namespaces, interfaces, mounts,
loop devices, processes or state behind.

Run as root: `.venv/bin/python bench/bench_updown.py [--cycles 100] [--name updown]`.
Small clusters (alternately 1 and 2 nodes, accounting on, so mariadb-install-db and slurmdbd run
every cycle). After every `down` the cluster's footprint (shoal.cluster.audit) must be empty;
the run stops at the first leftover and names it. Prints a table with boot and down times and
the host's load average (other engineers share this machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal.cluster import audit, manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.errors import ShoalError


def _netns_of(name: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(f"shoal-{name}-"))
    except OSError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--name", default="updown")
    args = ap.parse_args()
    console = Console()
    if ClusterDir(args.name).exists():
        manager.down(args.name)
    loops_before = len(audit.loop_devices())
    ups: list[float] = []
    downs: list[float] = []
    loads: list[float] = []
    failures: list[str] = []
    boot_failures: list[str] = []
    t_start = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as prog:
        task = prog.add_task("up/down cycles", total=args.cycles)
        for i in range(args.cycles):
            nodes = 1 + i % 2
            t0 = time.monotonic()
            try:
                res = manager.up(ClusterConfig(name=args.name, nodes=nodes), progress=False)
            except ShoalError as exc:
                # a boot that fails (here: a loaded machine) must clean up after itself too
                boot_failures.append(f"cycle {i + 1}: {exc.message}")
                left = audit.leftovers(audit.Footprint.named(args.name, nodes))
                left += [f"netns {n}" for n in _netns_of(args.name)]
                if left:
                    failures.append(f"cycle {i + 1} (failed boot): {', '.join(left)}")
                    break
                prog.advance(task)
                print(f"cycle {i + 1}/{args.cycles}: boot failed ({exc.message}), nothing left",
                      flush=True)
                continue
            ups.append(time.monotonic() - t0)
            fp = audit.Footprint.of(res.state)
            t0 = time.monotonic()
            left = manager.down(args.name)
            downs.append(time.monotonic() - t0)
            loads.append(os.getloadavg()[0])
            left += audit.leftovers(fp) + [f"netns {n}" for n in _netns_of(args.name)]
            if left:
                failures.append(f"cycle {i + 1} ({nodes} nodes): {', '.join(left)}")
                break
            prog.advance(task)
            if not console.is_terminal:  # a log file: one line per cycle instead of a bar
                print(f"cycle {i + 1}/{args.cycles}: {nodes} nodes, up {ups[-1]:.1f} s, "
                      f"down {downs[-1]:.1f} s, load {loads[-1]:.1f}, nothing left", flush=True)
    wall = time.monotonic() - t_start
    done = len(downs) + len(boot_failures) - len(failures)
    table = Table(title=f"{done} up/down cycles of {args.name!r} (1-2 nodes), leftovers after each")
    for col in ("cycles clean", "failed boots (clean)", "leftovers", "up s median", "up s max",
                "down s median", "down s max", "wall s", "load avg (1 min) median",
                "loop devices before/after"):
        table.add_column(col, justify="right")
    table.add_row(str(done), str(len(boot_failures)), str(len(failures)),
                  f"{statistics.median(ups):.1f}", f"{max(ups):.1f}",
                  f"{statistics.median(downs):.1f}", f"{max(downs):.1f}", f"{wall:.0f}",
                  f"{statistics.median(loads):.1f}",
                  f"{loops_before}/{len(audit.loop_devices())} (all of the machine)")
    console.print(table)
    for f in boot_failures:
        console.print(f"failed boot: {f}")
    for f in failures:
        console.print(f"[red]leftover[/]: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
