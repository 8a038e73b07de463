"""PNG plots of a study (matplotlib, Agg backend: no display needed).

Each function draws one figure from the aggregated cells and returns the file it wrote, or None
when the data for that figure are missing. Markers are medians, bars the intervals (their true
coverage is in the report tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shoal.study import stats
from shoal.study.analysis import Cell, CellKey


def _err(cis: list[stats.Interval]) -> tuple[list[float], list[list[float]]]:
    meds = [c.estimate for c in cis]
    return meds, [[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]]


def _lines_vs_nodes(cells: Mapping[CellKey, Cell], metric: str, path: Path, title: str,
                    ylabel: str, methods: list[str] | None = None, scale: float = 1.0) -> Path | None:
    series: dict[tuple[str, str], list[tuple[int, stats.Interval]]] = {}
    for k, c in cells.items():
        if methods is not None and k.method not in methods:
            continue
        ci = c.ci(metric)
        if ci is None:
            continue
        label = (k.method, k.workload)
        series.setdefault(label, []).append((k.nodes, ci))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # One colour per method, one line style and marker per workload: 6 methods x 5 workloads
    # would otherwise cycle through the 10 default colours and repeat.
    method_names = sorted({m for m, _ in series})
    workload_names = sorted({w for _, w in series})
    colours = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (5, 1))]
    markers = ["o", "s", "^", "D", "v"]
    for (method, workload), pts in sorted(series.items()):
        pts.sort(key=lambda p: p[0])
        xs = [p[0] for p in pts]
        scaled = [stats.Interval(p[1].estimate / scale, p[1].low / scale, p[1].high / scale,
                                 p[1].n, p[1].coverage, p[1].method) for p in pts]
        meds, err = _err(scaled)
        wi = workload_names.index(workload) % len(styles)
        ax.errorbar(xs, meds, yerr=err, capsize=3, label=f"{method} / {workload}",
                    color=colours(method_names.index(method) % 10), linestyle=styles[wi],
                    marker=markers[wi])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def staging_vs_nodes(cells: Mapping[CellKey, Cell], out: Path) -> Path | None:
    return _lines_vs_nodes(cells, "stage", out / "staging_vs_nodes.png",
                           "Staging time vs node count", "staging time [s] (slowest node)")


def sbcast_scaling(cells: Mapping[CellKey, Cell], out: Path) -> Path | None:
    if not any(k.method == "sbcast" for k in cells):
        return None
    return _lines_vs_nodes(cells, "stage", out / "sbcast_scaling.png",
                           "sbcast scaling (direct untar for reference)",
                           "staging time [s] (slowest node)", methods=["sbcast", "untar"])


def bytes_vs_nodes(cells: Mapping[CellKey, Cell], out: Path) -> Path | None:
    return _lines_vs_nodes(cells, "bytes_storage", out / "bytes_storage_vs_nodes.png",
                           "Bytes read from shared storage vs node count",
                           "bytes from storage [MiB] (all nodes)", scale=2**20)


def total_by_workload(cells: Mapping[CellKey, Cell], out: Path) -> Path | None:
    """Grouped bars: per workload, one bar per method, at each workload's largest node count."""
    largest: dict[str, int] = {}
    for k, c in cells.items():
        if c.values("total"):
            largest[k.workload] = max(largest.get(k.workload, 0), k.nodes)
    if not largest:
        return None
    workloads = sorted(largest)
    methods = sorted({k.method for k in cells})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(workloads) + 2), 4.5))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs, meds, lo, hi = [], [], [], []
        for j, w in enumerate(workloads):
            cs = [c for k, c in cells.items()
                  if k.method == m and k.workload == w and k.nodes == largest[w]]
            ci = cs[0].ci("total") if cs else None
            if ci is None:
                continue
            xs.append(j + i * width)
            meds.append(ci.estimate)
            lo.append(ci.estimate - ci.low)
            hi.append(ci.high - ci.estimate)
        if xs:
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))])
    ax.set_xticklabels([f"{w}\n(N={largest[w]})" for w in workloads])
    ax.set_ylabel("total time [s] (staging + workload, slowest node)")
    ax.set_title("Total time per workload and method")
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "total_by_workload.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fuse_overhead(cells: Mapping[CellKey, Cell], out: Path, fuse: str = "squashfuse",
                  kernel: str = "squashfs-kernel") -> Path | None:
    labels: list[str] = []
    ratios: list[stats.Interval] = []
    for k, c in sorted(cells.items(), key=lambda kv: (kv[0].workload, kv[0].nodes)):
        if k.method != fuse:
            continue
        kc = cells.get(CellKey(k.image, kernel, k.workload, k.nodes))
        if kc is None or not c.values("workload") or not kc.values("workload"):
            continue
        try:
            ratios.append(stats.ratio_ci(c.values("workload"), kc.values("workload")))
        except ValueError:
            continue
        labels.append(f"{k.workload}\nN={k.nodes}")
    if not ratios:
        return None
    pct = [stats.Interval((r.estimate - 1) * 100, (r.low - 1) * 100, (r.high - 1) * 100, r.n,
                          r.coverage, r.method) for r in ratios]
    meds, err = _err(pct)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5))
    ax.bar(range(len(labels)), meds, yerr=err, capsize=3, color="tab:orange")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(f"workload time overhead of {fuse} vs {kernel} [%]")
    ax.set_title("FUSE vs kernel SquashFS")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "fuse_overhead.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_plots(cells: Mapping[CellKey, Cell], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    for name, fn in (("Staging time vs node count", staging_vs_nodes),
                     ("Total time per workload and method", total_by_workload),
                     ("FUSE vs kernel SquashFS overhead", fuse_overhead),
                     ("sbcast scaling", sbcast_scaling),
                     ("Bytes from storage vs node count", bytes_vs_nodes)):
        path = fn(cells, out)
        if path is not None:
            made[name] = path
    return made
