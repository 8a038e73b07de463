"""Harness overhead of `shoal study` per experiment, and the quick study's wall time.

Per run, from the results database and the job's own output lines:

    submit -> start     sbatch returned (run.submit_time), or if later the end of the last
                        other job before this one started (until then the nodes were busy: with
                        concurrency > 1 that wait is the queue, not overhead) -> the batch
                        script's first line ran
    end -> collected    the batch script's last line ran -> the harness stored the records
                        (run.collected_at)
    overhead            the two together: what the harness (and Slurm's scheduling) adds
    job                 the job's own run time (first to last line of the batch script)

Target: overhead <= 1 s per experiment. By default boots the quick study's cluster ("bench"),
runs examples/quick.toml into a temporary directory (wall time measured, cluster boot included,
images assumed built), and takes the cluster down; --results DIR only analyses a finished study.

    .venv/bin/python bench/bench_study.py [--spec FILE] [--results DIR] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
console = Console(highlight=False)
LINE = re.compile(r"^# shoal: job (\d+) (start|end) ([0-9.]+)")
TARGET_S = 1.0


@dataclass
class RunTimes:
    method: str
    nodes: int
    submit_to_start: float
    end_to_collected: float
    job: float

    @property
    def overhead(self) -> float:
        return self.submit_to_start + self.end_to_collected


def run_times(results: Path) -> list[RunTimes]:
    conn = sqlite3.connect(f"file:{results / 'study.sqlite'}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT e.method, e.nodes, r.submit_time, r.collected_at, r.output_path "
        "FROM run r JOIN experiment e ON e.id = r.experiment_id WHERE r.state = 'COMPLETED'"
    ).fetchall()
    conn.close()
    runs: list[tuple[str, int, float, float, float, float]] = []
    for method, nodes, submitted, collected, output in rows:
        path = results / "logs" / Path(output).name
        marks: dict[str, float] = {}
        for line in path.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if m:
                marks[m.group(2)] = float(m.group(3))
        if {"start", "end"} <= set(marks) and submitted and collected:
            runs.append((method, nodes, submitted, collected, marks["start"], marks["end"]))
    ends = sorted(r[5] for r in runs)
    out: list[RunTimes] = []
    for method, nodes, submitted, collected, start, end in runs:
        ready = max([submitted, *(e for e in ends if e <= start)])
        out.append(RunTimes(method, nodes, start - ready, collected - end, end - start))
    return out


def describe(values: list[float]) -> tuple[str, str, str]:
    v = sorted(values)
    p90 = v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
    return f"{statistics.median(v):.3f}", f"{p90:.3f}", f"{v[-1]:.3f}"


def report(times: list[RunTimes], wall: float | None, boot: float | None) -> bool:
    table = Table(title=f"harness overhead per experiment ({len(times)} completed runs), seconds")
    for col in ("figure", "median", "p90", "max"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for label, vals in (
        ("submit -> start", [t.submit_to_start for t in times]),
        ("end -> collected", [t.end_to_collected for t in times]),
        ("overhead (both)", [t.overhead for t in times]),
        ("job's own run time", [t.job for t in times]),
        ("overhead / job", [t.overhead / t.job for t in times if t.job > 0]),
    ):
        table.add_row(label, *describe(vals))
    console.print(table)
    by = Table(title="per method: median job time and overhead, seconds")
    for col in ("method", "nodes", "runs", "job", "overhead"):
        by.add_column(col)
    for key in sorted({(t.method, t.nodes) for t in times}):
        sel = [t for t in times if (t.method, t.nodes) == key]
        by.add_row(key[0], str(key[1]), str(len(sel)),
                   f"{statistics.median(t.job for t in sel):.2f}",
                   f"{statistics.median(t.overhead for t in sel):.2f}")
    console.print(by)
    med = statistics.median(t.overhead for t in times)
    ok = med <= TARGET_S
    console.print(f"median overhead {med:.3f} s per experiment: "
                  + ("[green]within[/]" if ok else "[red]over[/]") + f" the {TARGET_S:g} s target")
    if wall is not None:
        console.print(f"quick study wall time: {wall:.1f} s (cluster boot {boot:.1f} s included)")
    return ok


def run_quick(spec_path: Path, keep: Path | None) -> tuple[Path, float, float]:
    from shoal.cli.study import run_study
    from shoal.cluster import manager
    from shoal.cluster.config import validate
    from shoal.cluster.state import ClusterDir
    from shoal.images.catalog import ensure_in_store
    from shoal.study.spec import load_spec

    spec = load_spec(spec_path)
    for image in spec.images:
        ensure_in_store(image)  # outside the timed part: images are "already built"
    name = "bench"
    out = keep or Path(tempfile.mkdtemp(prefix="bench-study-"))
    # the cluster the spec describes (its storage too: the harness refuses a mismatch)
    cfg = validate({"name": name, "nodes": spec.cluster.nodes or 4,
                    "network": spec.cluster.network or "none",
                    "storage": spec.cluster.storage or "bind"})
    if ClusterDir(name).exists():
        manager.down(name)  # not timed: the leftover of a killed earlier run
    t0 = time.monotonic()
    with manager.booted(cfg) as res:
        run_study(spec_path, out, name)
        wall = time.monotonic() - t0
    return out, wall, res.boot_seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=REPO / "examples" / "quick.toml")
    ap.add_argument("--results", type=Path, help="analyse this finished study, run nothing")
    ap.add_argument("--keep", type=Path, help="keep the quick study's results here")
    args = ap.parse_args()
    wall = boot = None
    if args.results:
        results = args.results
    else:
        results, wall, boot = run_quick(args.spec, args.keep)
    try:
        times = run_times(results)
        if not times:
            console.print(f"[red]no completed runs in {results}")
            return 1
        return 0 if report(times, wall, boot) else 1
    finally:
        if not args.results and not args.keep:
            shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
