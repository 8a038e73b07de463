"""State-service credentials: libmunge through ctypes against forking munge(1)/unmunge(1).

    .venv/bin/python bench/bench_munge.py [--requests 500] [--rounds 4]

Every node event (a heartbeat per node every 5 s, and each program state change) is one POST with
a munge credential: the node's listener encodes it, the state service decodes it. Until
2026-12-07 both sides ran the munge tools per request; now both call libmunge. This benchmark
starts a private munged (its own key, a temporary socket: nothing of a cluster is touched) and
times one request's credential work both ways, side by side in alternating rounds: the caller's
CPU (user+sys, its children included), munged's CPU (from /proc), and the wall time per request.
The tools' figures are for this benchmark's Python process; a node's listener is smaller, so its
fork is somewhat cheaper. At 256 nodes the heartbeats alone are 51.2 requests a second.

    .venv/bin/python bench/bench_munge.py --cluster-nodes 256 [--window 60]

boots a virtual cluster with its state service (root), lets it settle, and measures over the
window the CPU of the state service and of every node's listener (their waited-for children, the
munge tools, included), and the whole machine's busy CPU; then takes the cluster down. Run the
same file from a checkout of older code to compare (it imports shoal from its own checkout).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cluster import cpu_busy_seconds  # this file's directory is on sys.path as a script's

from shoal.runner import run
from shoal.state import auth

console = Console()
HEARTBEATS_PER_S_256 = 256 / 5


def cpu_self() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def cpu_of(pid: int, children: bool = False) -> float:
    """CPU seconds of PID (user+sys), with its waited-for children's when CHILDREN."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cluster_mode(n: int, window: float, settle: float) -> int:
    from shoal.cluster import manager, statebackend
    from shoal.cluster.config import ClusterConfig
    from shoal.cluster.enter import pid1
    from shoal.cluster.state import ClusterDir

    name = "bmunge"
    if ClusterDir(name).exists():
        manager.down(name)
    res = manager.up(ClusterConfig(name=name, nodes=n), progress=False)
    try:
        console.print(f"{n} nodes idle in {res.boot_seconds:.1f} s; settling {settle:.0f} s")
        time.sleep(settle)
        service = int(statebackend.pid_file(name).read_text().split()[0])
        listeners = []  # each node's listener is a child of its supervisord (PID 1)
        for node in res.state.nodes:
            p1 = pid1(res.state, node)
            for child in Path(f"/proc/{p1}/task/{p1}/children").read_text().split():
                if b"shoal-state-listener" in Path(f"/proc/{child}/cmdline").read_bytes():
                    listeners.append(int(child))
        if len(listeners) != n:
            console.print(f"[yellow]found {len(listeners)} listeners for {n} nodes[/]")

        def sample() -> tuple[float, float, float]:
            return (cpu_of(service, True), sum(cpu_of(p, True) for p in listeners), cpu_busy_seconds())

        s0, t0 = sample(), time.monotonic()
        time.sleep(window)
        s1, el = sample(), time.monotonic() - t0
        t = Table(title=f"{n} idle nodes, state service on: CPU over {el:.0f} s (cores = CPU s / s)")
        for col in ("state service", "all listeners", "whole machine", "load average"):
            t.add_column(col, justify="right")
        t.add_row(*(f"{(b - a) / el:.3f}" for a, b in zip(s0, s1, strict=True)), f"{os.getloadavg()[0]:.2f}")
        console.print(t)
    finally:
        manager.down(name)
    return 0


def by_library(sock: str) -> Callable[[str], None]:
    def one(payload: str) -> None:
        _who, got = auth.decode(auth.encode(payload, sock), sock)
        assert got == payload

    return one


def by_tools(sock: str) -> Callable[[str], None]:
    def one(payload: str) -> None:
        cred = run(["munge", "-s", payload, "--socket", sock], what="munge").stdout.strip()
        out = run(["unmunge", "--numeric", "--socket", sock], input=cred + "\n", what="unmunge").stdout
        assert out.partition("\n\n")[2] == payload

    return one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500, help="requests per way per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cluster-nodes", type=int, default=0, help="measure a booted cluster instead")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured (cluster mode)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after boot (cluster mode)")
    args = ap.parse_args()
    if args.cluster_nodes:
        return cluster_mode(args.cluster_nodes, args.window, args.settle)
    from tests.conftest import private_munged

    payload = auth.request_payload("POST", "/dsc/events", b'{"events": [{"kind": "heartbeat"}]}')
    per: dict[str, dict[str, list[float]]] = {
        w: {"cpu": [], "munged": [], "wall": []} for w in ("library", "tools")
    }
    with private_munged() as sock:
        mpid = int(Path(os.path.dirname(sock), "pid").read_text().split()[0])
        ways = {"library": by_library(sock), "tools": by_tools(sock)}
        for w in ways.values():  # warm-up: library loaded, page cache warm
            w(payload)
        for r in range(args.rounds):
            for name in (("library", "tools") if r % 2 == 0 else ("tools", "library")):
                fn = ways[name]
                c0, m0, t0 = cpu_self(), cpu_of(mpid), time.perf_counter()
                for _ in range(args.requests):
                    fn(payload)
                n = args.requests
                per[name]["cpu"].append((cpu_self() - c0) / n * 1e3)
                per[name]["munged"].append((cpu_of(mpid) - m0) / n * 1e3)
                per[name]["wall"].append((time.perf_counter() - t0) / n * 1e3)
    t = Table(title=f"one request's credential (encode + decode), {args.rounds} rounds x {args.requests}")
    for col in ("way", "caller CPU ms", "munged CPU ms", "wall ms", "caller cores at 256 nodes' heartbeats"):
        t.add_column(col, justify="right")
    for name, d in per.items():
        cpu = statistics.median(d["cpu"])
        t.add_row(name, f"{cpu:.3f}", f"{statistics.median(d['munged']):.3f}",
                  f"{statistics.median(d['wall']):.3f}", f"{cpu * HEARTBEATS_PER_S_256 / 1e3:.3f}")
    console.print(t)
    ratio = statistics.median(per["tools"]["cpu"]) / statistics.median(per["library"]["cpu"])
    console.print(f"caller CPU, tools / library: {ratio:.1f}x; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
