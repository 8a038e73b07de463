"""The five questions of the study (docs/STUDY.md), answered from the data.

Each answer is a short verdict, a table of the comparisons it rests on and the experiment ids it
cites. A difference counts only when the confidence intervals do not overlap; otherwise, or when
the needed experiments are missing, the answer says "not supported by the data".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shoal.study import stats
from shoal.study.analysis import DEFAULT_METHOD_KINDS, Cell, CellKey

NOT_SUPPORTED = "not supported by the data"


@dataclass
class Answer:
    number: int
    question: str
    verdict: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    cites: list[str] = field(default_factory=list)


def _fmt(ci: stats.Interval | None, unit: str = "s") -> str:
    return "—" if ci is None else f"{ci.fmt()} {unit}"


def _groups(cells: Mapping[CellKey, Cell]) -> list[tuple[str, str, int]]:
    """(workload, image, nodes) combinations present, in order."""
    seen: dict[tuple[str, str, int], None] = {}
    for k in cells:
        seen[(k.workload, k.image, k.nodes)] = None
    return sorted(seen, key=lambda g: (g[0], g[1], g[2]))


def _fastest(cells: Mapping[CellKey, Cell], methods: list[str], metric: str,
             workload: str, image: str, nodes: int) -> tuple[str | None, str, list[Cell]]:
    """(winner or None, explanation, cells compared) among METHODS in one group."""
    cands = [c for m in methods
             if (c := cells.get(CellKey(image, m, workload, nodes))) and c.values(metric)]
    if len(cands) < 2:
        have = ", ".join(c.key.method for c in cands) or "none"
        return None, f"{NOT_SUPPORTED}: fewer than two methods measured ({have})", cands
    ranked = sorted(cands, key=lambda c: c.ci(metric).estimate)  # type: ignore[union-attr]
    best, second = ranked[0], ranked[1]
    b, s = best.ci(metric), second.ci(metric)
    assert b is not None and s is not None
    if b.overlaps(s):
        return None, (f"{NOT_SUPPORTED}: {best.key.method} and {second.key.method} overlap"), cands
    return best.key.method, f"{best.key.method} ({b.estimate / s.estimate:.2f}x of runner-up " \
                            f"{second.key.method})", cands


def _fastest_answer(number: int, question: str, cells: Mapping[CellKey, Cell],
                    kinds: Mapping[str, str], kind: str) -> Answer:
    methods = sorted({k.method for k in cells if kinds.get(k.method) == kind})
    ans = Answer(number, question, "", ["workload", "image", "nodes", "total time by method "
                                        "(median [CI])", "fastest", "experiments"])
    if len(methods) < 2:
        ans.verdict = (f"{NOT_SUPPORTED}: the study measured {len(methods)} {kind} method(s) "
                       f"({', '.join(methods) or 'none'}); at least two are needed.")
        return ans
    wins: dict[str, int] = {}
    decided = 0
    for workload, image, nodes in _groups(cells):
        winner, why, cands = _fastest(cells, methods, "total", workload, image, nodes)
        if not cands:
            continue
        ids = [c.experiment_id for c in cands]
        ans.cites += ids
        per = "; ".join(f"{c.key.method} {_fmt(c.ci('total'))}" for c in cands)
        ans.rows.append([workload, image, str(nodes), per, why, ", ".join(ids)])
        if winner:
            decided += 1
            wins[winner] = wins.get(winner, 0) + 1
    total = len(ans.rows)
    if not wins:
        ans.verdict = (f"{NOT_SUPPORTED}: in none of the {total} workload/node-count groups do "
                       f"the intervals of the two fastest {kind} methods separate.")
    elif len(wins) == 1:
        (m, n), = wins.items()
        ans.verdict = (f"**{m}**: fastest wherever the data separate the {kind} methods "
                       f"({n} of {total} workload/node-count groups); the other "
                       f"{total - decided} group(s) are {NOT_SUPPORTED} (overlap or missing "
                       f"data).")
    else:
        parts = ", ".join(f"{m} in {n}" for m, n in sorted(wins.items(), key=lambda x: -x[1]))
        ans.verdict = (f"it depends on the workload and scale: fastest is {parts} of {total} "
                       f"groups; {total - decided} group(s) are {NOT_SUPPORTED}.")
    return ans


def q1_network(cells: Mapping[CellKey, Cell], kinds: Mapping[str, str]) -> Answer:
    return _fastest_answer(1, "Which network (shared-storage) method is fastest?", cells, kinds,
                           "network")


def q2_local(cells: Mapping[CellKey, Cell], kinds: Mapping[str, str]) -> Answer:
    return _fastest_answer(2, "Which in-memory (node-local copy) method is fastest?", cells,
                           kinds, "local")


def q3_spread(cells: Mapping[CellKey, Cell], kinds: Mapping[str, str]) -> Answer:
    ans = Answer(3, "How much does the choice of network method change the time, and does that "
                 "depend on the workload's I/O pattern?", "",
                 ["workload", "image", "nodes", "slowest / fastest (median, 95% bootstrap CI)",
                  "fastest", "slowest", "experiments"])
    methods = sorted({k.method for k in cells if kinds.get(k.method) == "network"})
    spreads: dict[str, stats.Interval] = {}
    for workload, image, nodes in _groups(cells):
        cands = [c for m in methods
                 if (c := cells.get(CellKey(image, m, workload, nodes))) and c.values("total")]
        if len(cands) < 2:
            continue
        ranked = sorted(cands, key=lambda c: c.ci("total").estimate)  # type: ignore[union-attr]
        fast, slow = ranked[0], ranked[-1]
        ratio = stats.ratio_ci(slow.values("total"), fast.values("total"))
        ids = [c.experiment_id for c in cands]
        ans.cites += ids
        ans.rows.append([workload, image, str(nodes), ratio.fmt(3), fast.key.method,
                         slow.key.method, ", ".join(ids)])
        # compare workloads at their largest common scale: keep the largest N per workload
        spreads[workload] = ratio
    if not ans.rows:
        ans.verdict = f"{NOT_SUPPORTED}: no group has two network methods measured."
        return ans
    real = {w: r for w, r in spreads.items() if r.low > 1.0}
    parts = []
    if real:
        biggest = max(real.items(), key=lambda kv: kv[1].estimate)
        parts.append(f"the choice matters: at the largest node count the slowest network method "
                     f"takes {biggest[1].estimate:.2f}x the fastest for {biggest[0]}")
    else:
        parts.append(f"that the choice changes the time is {NOT_SUPPORTED} (every slowest/fastest "
                     f"interval includes 1)")
    ws = sorted(spreads)
    differs = [(a, b) for i, a in enumerate(ws) for b in ws[i + 1:]
               if not spreads[a].overlaps(spreads[b])]
    if len(ws) < 2:
        parts.append(f"dependence on the I/O pattern is {NOT_SUPPORTED} (one workload measured)")
    elif differs:
        a, b = differs[0]
        parts.append(f"it depends on the workload: spread {spreads[a].estimate:.2f}x for {a} vs "
                     f"{spreads[b].estimate:.2f}x for {b} (intervals apart)")
    else:
        parts.append(f"a dependence on the workload's I/O pattern is {NOT_SUPPORTED} (the "
                     f"spreads' intervals overlap)")
    ans.verdict = "; ".join(parts) + "."
    return ans


def q4_fuse(cells: Mapping[CellKey, Cell], fuse: str = "squashfuse",
            kernel: str = "squashfs-kernel") -> Answer:
    ans = Answer(4, "What is the runtime overhead of FUSE-mounted SquashFS compared to "
                 "kernel-mounted, per workload?", "",
                 ["workload", "image", "nodes", f"workload time {fuse}", f"workload time {kernel}",
                  "overhead (95% bootstrap CI)", "verdict", "experiments"])
    per_workload: dict[str, str] = {}
    for workload, image, nodes in _groups(cells):
        f = cells.get(CellKey(image, fuse, workload, nodes))
        k = cells.get(CellKey(image, kernel, workload, nodes))
        if not f or not k or not f.values("workload") or not k.values("workload"):
            continue
        try:
            ratio = stats.ratio_ci(f.values("workload"), k.values("workload"))
        except ValueError:
            continue
        pct = (f"{(ratio.estimate - 1) * 100:+.1f} % [{(ratio.low - 1) * 100:+.1f}, "
               f"{(ratio.high - 1) * 100:+.1f}]")
        if ratio.low > 1.0:
            verdict = f"FUSE slower by {(ratio.estimate - 1) * 100:.1f} %"
        elif ratio.high < 1.0:
            verdict = f"FUSE faster by {(1 - ratio.estimate) * 100:.1f} %"
        else:
            verdict = f"{NOT_SUPPORTED} (interval includes 0 %)"
        ids = [f.experiment_id, k.experiment_id]
        ans.cites += ids
        ans.rows.append([workload, image, str(nodes), _fmt(f.ci("workload")),
                         _fmt(k.ci("workload")), pct, verdict, ", ".join(ids)])
        per_workload[workload] = f"{workload}: {verdict} (N={nodes})"  # largest N wins
    if not ans.rows:
        ans.verdict = (f"{NOT_SUPPORTED}: the study has no workload measured with both {fuse} "
                       f"and {kernel}.")
    else:
        ans.verdict = "; ".join(per_workload[w] for w in sorted(per_workload)) + "."
    return ans


def q5_sbcast(cells: Mapping[CellKey, Cell], sbcast: str = "sbcast",
              reference: str = "untar") -> Answer:
    ans = Answer(5, "Does sbcast stay effective as node count grows?", "",
                 ["workload", "image", "nodes", f"staging {sbcast}", f"staging {reference}",
                  "comparison", "experiments"])
    curves: dict[tuple[str, str], list[Cell]] = {}
    last_verdict: dict[tuple[str, str], str] = {}
    for workload, image, nodes in _groups(cells):
        s = cells.get(CellKey(image, sbcast, workload, nodes))
        if not s or not s.values("stage"):
            continue
        curves.setdefault((workload, image), []).append(s)
        r = cells.get(CellKey(image, reference, workload, nodes))
        ids = [s.experiment_id] + ([r.experiment_id] if r else [])
        ans.cites += ids
        cmp = "—"
        if r and r.values("stage"):
            si, ri = s.ci("stage"), r.ci("stage")
            assert si is not None and ri is not None
            if si.overlaps(ri):
                cmp = f"{NOT_SUPPORTED} (overlap)"
            elif si.high < ri.low:
                cmp = f"{sbcast} faster ({si.estimate / ri.estimate:.2f}x)"
            else:
                cmp = f"{sbcast} slower ({si.estimate / ri.estimate:.2f}x)"
            last_verdict[(workload, image)] = f"at N={nodes}: {cmp}"
        ans.rows.append([workload, image, str(nodes), _fmt(s.ci("stage")),
                         _fmt(r.ci("stage") if r else None), cmp, ", ".join(ids)])
    if not curves:
        ans.verdict = f"{NOT_SUPPORTED}: no {sbcast} runs."
        return ans
    parts = []
    for (workload, image), cs in sorted(curves.items()):
        if len(cs) < 2:
            parts.append(f"{workload}: {NOT_SUPPORTED} (one node count)")
            continue
        lo, hi = cs[0], cs[-1]
        growth = stats.ratio_ci(hi.values("stage"), lo.values("stage"))
        scale = hi.key.nodes / lo.key.nodes
        if growth.high < scale:
            trend = (f"staging grows {growth.estimate:.2f}x [{growth.low:.2f}, {growth.high:.2f}]"
                     f" for {scale:g}x the nodes (sub-linear: stays effective)")
        elif growth.low > scale:
            trend = f"staging grows {growth.estimate:.2f}x for {scale:g}x the nodes (worse than " \
                    f"linear)"
        else:
            trend = f"sub-linear growth is {NOT_SUPPORTED} ({growth.fmt(3)} vs {scale:g}x nodes)"
        extra = last_verdict.get((workload, image))
        parts.append(f"{workload}: {trend}" + (f"; vs {reference} {extra}" if extra else ""))
    ans.verdict = "; ".join(parts) + "."
    return ans


def answer_all(cells: Mapping[CellKey, Cell],
               kinds: Mapping[str, str] = DEFAULT_METHOD_KINDS) -> list[Answer]:
    answers = [q1_network(cells, kinds), q2_local(cells, kinds), q3_spread(cells, kinds),
               q4_fuse(cells), q5_sbcast(cells)]
    for a in answers:
        a.cites = sorted(set(a.cites))
    return answers
