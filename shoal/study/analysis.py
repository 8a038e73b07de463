"""From node records to per-experiment figures: what the report, plots and `compare` share.

A run's figure is what decides when the job can go on: times are the MAXIMUM over its nodes
(the slowest node holds everyone up), bytes are the SUM over its nodes (what the storage and the
network carried), peak memory the maximum. A cell is one experiment (image, method, workload,
node count); its figures are the run figures of its completed repetitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shoal.study import stats
from shoal.study.db import ResultRow

METRICS = ("stage", "workload", "total", "bytes_storage", "bytes_net", "peak", "cpu")

# Which methods leave the image on the shared storage ("network") and which copy it into each
# node first ("local"); passed in explicitly once shoal.staging's registry can say.
DEFAULT_METHOD_KINDS: dict[str, str] = {
    "squashfs-kernel": "network",
    "squashfuse": "network",
    "shared-dir": "network",
    "untar": "local",
    "sbcast": "local",
    "sbcast-squashfs": "local",
    "bcast": "local",
    "bcast-squashfs": "local",
    "registry": "local",
}


@dataclass(frozen=True)
class CellKey:
    image: str
    method: str
    workload: str
    nodes: int


@dataclass
class Cell:
    key: CellKey
    experiment_id: str
    runs: dict[int, dict[str, float]] = field(default_factory=dict)  # run id -> metric -> value
    failed_nodes: int = 0
    # run id -> what bound the run (cpu, link, storage, overhead; shoal.staging.accounting)
    bounds: dict[int, str] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        return [m[metric] for m in self.runs.values() if metric in m]

    def ci(self, metric: str) -> stats.Interval | None:
        vals = self.values(metric)
        return stats.median_ci(vals) if vals else None


def _run_figures(rows: Sequence[ResultRow]) -> dict[str, float]:
    recs = [r.record for r in rows]
    out: dict[str, float] = {}

    def put_max(name: str, vals: Iterable[float | int | None]) -> None:
        got = [float(v) for v in vals if v is not None]
        if got and len(got) == len(recs):
            out[name] = max(got)

    def put_sum(name: str, vals: Iterable[float | int | None]) -> None:
        got = [float(v) for v in vals if v is not None]
        if got and len(got) == len(recs):
            out[name] = sum(got)

    put_max("stage", (r.stage_seconds for r in recs))
    put_max("workload", (r.workload_seconds for r in recs))
    put_max("total", (r.total_seconds for r in recs))
    put_sum("bytes_storage", (r.bytes_from_storage for r in recs))
    put_sum("bytes_net", (r.bytes_net_rx for r in recs))
    put_max("peak", (r.peak_bytes for r in recs))
    # CPU seconds of all the run's nodes (their cgroups, every phase): what the run cost the cores
    put_sum("cpu", (r.extra.get("cpu_s") for r in recs))
    return out


def aggregate(results: Iterable[ResultRow]) -> dict[CellKey, Cell]:
    by_run: dict[int, list[ResultRow]] = {}
    for row in results:
        by_run.setdefault(row.run_id, []).append(row)
    cells: dict[CellKey, Cell] = {}
    for run_id, rows in by_run.items():
        first = rows[0]
        key = CellKey(first.image, first.method, first.workload, first.nodes)
        cell = cells.setdefault(key, Cell(key, first.experiment_id))
        cell.failed_nodes += sum(not r.record.ok for r in rows)
        cell.runs[run_id] = _run_figures(rows)
        bound = first.record.extra.get("bound")
        if isinstance(bound, str):
            cell.bounds[run_id] = bound
    return dict(sorted(cells.items(), key=lambda kv: (kv[0].workload, kv[0].image, kv[0].method,
                                                      kv[0].nodes)))


def select(cells: dict[CellKey, Cell], *, method: str | None = None, workload: str | None = None,
           nodes: int | None = None) -> list[Cell]:
    return [c for k, c in cells.items()
            if (method is None or k.method == method)
            and (workload is None or k.workload == workload)
            and (nodes is None or k.nodes == nodes)]
