"""The one-line recommendation at the top of the report, for people who read only that line.

"At N nodes on this cluster, use X for data-heavy and Y for start-up-heavy workloads", made only
from what the data support: at the largest node count measured, a method is named for a class of
workload only if its 95 % interval of the total time lies entirely below every other method's (for
every image measured). A class without such a winner is left out; with neither, there is no line.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.study.analysis import Cell, CellKey

# workload classes by I/O pattern (docs: study.md, question 3)
DATA_HEAVY = ("catwalk", "lammps")
STARTUP_HEAVY = ("pynamic", "statwalk", "mpihello")


def _winner(cells: Mapping[CellKey, Cell], workload: str, nodes: int) -> str | None:
    by_image: dict[str, dict[str, tuple[float, float, float]]] = {}
    for k, c in cells.items():
        if k.workload != workload or k.nodes != nodes:
            continue
        ci = c.ci("total")
        if ci is not None:
            by_image.setdefault(k.image, {})[k.method] = (ci.estimate, ci.low, ci.high)
    winners = set()
    for methods in by_image.values():
        if len(methods) < 2:
            return None  # nothing to choose between
        best = min(methods, key=lambda m: methods[m][0])
        high = methods[best][2]
        if not all(high < lo for m, (_, lo, _) in methods.items() if m != best):
            return None  # intervals overlap: the data do not single one out
        winners.add(best)
    return winners.pop() if len(winners) == 1 else None


def recommendation(cells: Mapping[CellKey, Cell], cluster: str = "this cluster") -> str | None:
    """The line, or None when the data support no winner for either class."""
    if not cells:
        return None
    nodes = max(k.nodes for k in cells)
    parts: list[str] = []
    for label, workloads in (("data-heavy", DATA_HEAVY), ("start-up-heavy", STARTUP_HEAVY)):
        for w in workloads:
            win = _winner(cells, w, nodes)
            if win is not None:
                parts.append(f"**{win}** for {label} workloads ({w})")
                break
    if not parts:
        return None
    return f"At N = {nodes} nodes on {cluster}, use " + " and ".join(parts) + "."
