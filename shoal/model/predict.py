"""Carry a fitted model to a site: predictions, winners, crossovers, sensitivity to assumptions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from shoal.model.fit import Group, Prediction, predict
from shoal.model.site import Site


@dataclass(frozen=True)
class Crossover:
    workload: str
    winner: str  # method that wins beyond `nodes`
    loser: str  # method that won just below
    nodes: int  # first node count at which `winner` is faster


def at_site(groups: Sequence[Group], site: Site, nodes: Sequence[int]) -> list[Prediction]:
    out = []
    fab = site.fabric()
    for g in groups:
        for n in nodes:
            at = replace(g.template, nodes=n, fabric=fab)
            out.append(predict(g, at, cores_per_node=site.cores_per_node,
                               node_memory_bytes=site.node_memory_bytes))
    return out


def winners(preds: Sequence[Prediction]) -> dict[tuple[str, int], Prediction]:
    """(workload, nodes) -> the fastest feasible method's prediction."""
    best: dict[tuple[str, int], Prediction] = {}
    for p in preds:
        if not p.feasible:
            continue
        cur = best.get((p.workload, p.nodes))
        if cur is None or p.seconds < cur.seconds:
            best[(p.workload, p.nodes)] = p
    return best


def node_grid(top: int) -> list[int]:
    """Every node count up to 64, then about 32 per doubling: crossovers to within ~2 %."""
    pts = set(range(1, min(top, 64) + 1))
    n = 64.0
    while n < top:
        n *= 2 ** (1 / 32)
        pts.add(min(top, round(n)))
    return sorted(pts)


def crossovers(groups: Sequence[Group], site: Site, top: int) -> list[Crossover]:
    grid = node_grid(top)
    by_workload: dict[str, list[Prediction]] = defaultdict(list)
    for p in at_site(groups, site, grid):
        by_workload[p.workload].append(p)
    out = []
    for workload, preds in sorted(by_workload.items()):
        win = winners(preds)
        prev: str | None = None
        for n in grid:
            w = win.get((workload, n))
            if w is None:
                continue
            if prev is not None and w.method != prev:
                out.append(Crossover(workload, w.method, prev, n))
            prev = w.method
    return out


def sensitivity(groups: Sequence[Group], site: Site, nodes: Sequence[int],
                steps: int = 5) -> dict[str, list[tuple[float, dict[tuple[str, int], str]]]]:
    """For each assumed value: across its range (geometric steps), the winner per (workload, N)."""
    out: dict[str, list[tuple[float, dict[tuple[str, int], str]]]] = {}
    for key, a in site.assumed.items():
        rows = []
        for i in range(steps):
            v = a.low * (a.high / a.low) ** (i / (steps - 1)) if a.low > 0 else a.low
            s = site.with_value(key, v)
            win = winners(at_site(groups, s, nodes))
            rows.append((v, {k: p.method for k, p in win.items()}))
        out[key] = rows
    return out
