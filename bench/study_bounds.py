"""What bound each method, per node count: the table of docs/PERFORMANCE.md ("Host CPU utilisation
and bound per method"), from a study's per-node export (`shoal study export DIR`).

    .venv/bin/python bench/study_bounds.py docs/results/standard/nodes.csv [--workload catwalk]

One cell per method and N: median time to solution (s) / host CPU busy (all processes) / the
cluster's own CPU share (its cgroups' CPU seconds over the run, per host core) / busiest node
link's utilisation / storage host's utilisation / bound (most frequent over the runs) / median
CPU seconds per node (n = measured runs). Warm-up runs (rep < 0) and failed nodes are left out.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import Counter, defaultdict
from pathlib import Path


def cell(rows: list[dict[str, str]]) -> str:
    runs: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        runs[r["run_id"]].append(r)
    first = [v[0] for v in runs.values()]  # run-wide figures are the same on every node's row

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in first)

    own = statistics.median(float(r["cluster_cpu_s"]) / float(r["time_to_solution"])
                            / float(r["host_cores"]) for r in first)
    bound = Counter(r["bound"] for r in first).most_common(1)[0][0]
    cpu = statistics.median(float(r["cpu_s"]) for r in rows)
    return (f"{med('time_to_solution'):.2f} / {med('host_cpu_util'):.2f} / {own:.2f} / "
            f"{med('util_link'):.2f} / {med('util_storage'):.2f} / {bound} / {cpu:.1f} (n={len(runs)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+", type=Path, help="nodes.csv export(s) of a study")
    ap.add_argument("--workload", default="catwalk")
    args = ap.parse_args()
    by: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for path in args.csv:
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if r["workload"] == args.workload and r["ok"] in ("1", "True", "true") and int(r["rep"]) >= 0:
                    by[(r["method"], int(r["nodes"]))].append(r)
    counts = sorted({n for _, n in by})
    print("| method | " + " | ".join(f"N={n}" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for method in sorted({m for m, _ in by}):
        cells = [cell(by[(method, n)]) if (method, n) in by else "-" for n in counts]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
