"""The report's "At your scale" section: measured points and the model's curves at a site.

Given a SITE.toml (and a model.json, or a fit made here from the study's own runs), one plot per
workload with log-scale nodes: the emulator's measured medians as markers (they include the
emulator's CPU contention) and the model's predicted time-to-solution at the site as lines with
their 90 % band, plus the winners and crossovers as a table.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shoal.model import data, fit, predict, store
from shoal.model.site import Site, load_site


@dataclass(frozen=True)
class ScaleSection:
    site: Site
    model_path: Path
    plots: dict[str, Path]  # workload -> PNG
    winners: list[tuple[str, int, str, float]]  # workload, nodes, method, seconds
    crossovers: list[predict.Crossover]
    sensitivity: dict[str, list[str]]  # assumed key -> what changes


def site_nodes(site: Site) -> list[int]:
    pts, n = [], 1
    while n < site.nodes:
        pts.append(n)
        n *= 2
    return [*pts, site.nodes]


def build(out_dir: Path, site_path: Path, model_path: Path | None) -> ScaleSection:
    site = load_site(site_path)
    obs = data.load(out_dir)
    if model_path is None:
        model_path = out_dir / "model.json"
        store.save(fit.fit(obs), model_path, source=str(out_dir))
    groups = store.load(model_path)
    nodes = site_nodes(site)
    preds = predict.at_site(groups, site, predict.node_grid(site.nodes))
    measured: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for o in obs:
        measured[(o.method, o.workload)][o.nodes].append(o.seconds)
    plots: dict[str, Path] = {}
    (out_dir / "plots").mkdir(exist_ok=True)
    colours = plt.get_cmap("tab10")
    for workload in sorted({g.workload for g in groups}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        methods = sorted({g.method for g in groups if g.workload == workload})
        for i, m in enumerate(methods):
            ps = sorted((p for p in preds if (p.method, p.workload) == (m, workload)),
                        key=lambda p: p.nodes)
            xs = [p.nodes for p in ps]
            c = colours(i % 10)
            ax.plot(xs, [p.seconds for p in ps], color=c, label=f"{m} (predicted)")
            ax.fill_between(xs, [p.low for p in ps], [p.high for p in ps], color=c, alpha=0.15)
            pts = sorted(measured[(m, workload)].items())
            ax.plot([n for n, _ in pts], [statistics.median(v) for _, v in pts], "o", color=c,
                    label=f"{m} (measured here)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("time to solution (s)")
        ax.set_title(f"{workload} at {site.name}")
        ax.legend(fontsize=7, ncol=2)
        path = out_dir / "plots" / f"scale-{site.name}-{workload}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        plots[workload] = path
    win = predict.winners(predict.at_site(groups, site, nodes))
    sens = predict.sensitivity(groups, site, nodes)
    changes = {
        key: sorted({f"{w}@{n}: {m} at {v:g}" for v, ws in rows for (w, n), m in ws.items()
                     if (w, n) in win and m != win[(w, n)].method})
        for key, rows in sens.items()
    }
    return ScaleSection(
        site, model_path, plots,
        [(w, n, p.method, p.seconds) for (w, n), p in sorted(win.items())],
        predict.crossovers(groups, site, site.nodes), changes)
