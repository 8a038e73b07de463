"""The five questions of the study (docs/STUDY.md), answered from the data, as prose AND as structured data.

Each ``Answer`` carries a verdict in prose (for report.md), a machine-readable ``code``, the
``effect`` with its interval where one number answers the question, one ``Finding`` per comparison
it rests on (group, verdict, effect, interval with its true coverage, experiment ids), and the
``caveats`` that touch it (bind storage, CPU-bound runs on oversubscribed nodes). ``to_dict`` is the
JSON schema written beside report.md (answers.json, ``ANSWERS_FORMAT``).

Decision rules (docs/ARCHITECTURE.md "Verdicts"):
- Q1/Q2 fastest: the best method's interval must not overlap the runner-up's; Q2 is answered with
  and without sbcast-squashfs (a copy that is then mounted, not an unpacked tree in memory).
- Q3: the method x workload interaction on log time: for two network methods and two workloads at
  one node count, exp([log a1 - log b1] - [log a2 - log b2]) with a bootstrap interval; an
  interval excluding 1 says the methods' ratio depends on the workload's I/O pattern.
- Q4: FUSE vs kernel SquashFS workload time by two one-sided tests against the margin (spec
  ``margin``, default 10 %): equivalent, beyond the margin, different but not settled, inconclusive.
- Q5: sbcast vs every other method at each node count (time to solution, ratio interval), and its
  per-node slope against theirs (least squares over node counts, bootstrap interval).
A difference counts only when its interval excludes "no difference"; otherwise, or when the needed
experiments are missing, the answer says "not supported by the data".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from shoal.study import stats
from shoal.study.analysis import DEFAULT_METHOD_KINDS, Cell, CellKey
from shoal.study.answer_schema import ANSWERS_FORMAT, NOT_SUPPORTED, Answer, Finding

__all__ = ["ANSWERS_FORMAT", "DEFAULT_MARGIN", "NOT_SUPPORTED", "Answer", "Finding", "answer_all"]

DEFAULT_MARGIN = 0.10


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
        ans.findings.append(Finding({"workload": workload, "image": image, "nodes": nodes,
                                     "methods": [c.key.method for c in cands]},
                                    winner or "overlap", None,
                                    None, ids))
        if winner:
            decided += 1
            wins[winner] = wins.get(winner, 0) + 1
    total = len(ans.rows)
    if not wins:
        ans.verdict = (f"{NOT_SUPPORTED}: in none of the {total} workload/node-count groups do "
                       f"the intervals of the two fastest {kind} methods separate.")
    elif len(wins) == 1:
        (m, n), = wins.items()
        ans.code = f"fastest:{m}"
        ans.verdict = (f"**{m}**: fastest wherever the data separate the {kind} methods "
                       f"({n} of {total} workload/node-count groups); the other "
                       f"{total - decided} group(s) are {NOT_SUPPORTED} (overlap or missing "
                       f"data).")
    else:
        parts = ", ".join(f"{m} in {n}" for m, n in sorted(wins.items(), key=lambda x: -x[1]))
        ans.code = "depends"
        ans.verdict = (f"it depends on the workload and scale: fastest is {parts} of {total} "
                       f"groups; {total - decided} group(s) are {NOT_SUPPORTED}.")
    return ans


def q1_network(cells: Mapping[CellKey, Cell], kinds: Mapping[str, str]) -> Answer:
    return _fastest_answer(1, "Which network (shared-storage) method is fastest?", cells, kinds,
                           "network")


COPY_THEN_MOUNT = ("sbcast-squashfs", "bcast-squashfs")


def q2_local(cells: Mapping[CellKey, Cell], kinds: Mapping[str, str]) -> Answer:
    """Answered with every node-local method, and again without the SquashFS-after-copy ones
    (they copy a compressed file and mount it: not an unpacked tree in memory)."""
    q = "Which in-memory (node-local copy) method is fastest?"
    ans = _fastest_answer(2, q, cells, kinds, "local")
    present = sorted({k.method for k in cells} & set(COPY_THEN_MOUNT))
    if present:
        names = " and ".join(present)
        without = {k: c for k, c in cells.items() if k.method not in COPY_THEN_MOUNT}
        alt = _fastest_answer(2, q, without, kinds, "local")
        ans.variants[f"without {names}"] = {"verdict": alt.verdict, "code": alt.code}
        ans.verdict = (f"with {names}: {ans.verdict} Without (unpacked trees only): "
                       f"{alt.verdict}")
    return ans


def q3_interaction(cells: Mapping[CellKey, Cell], kinds: Mapping[str, str]) -> Answer:
    ans = Answer(3, "How much does the choice of network method change the time, and does that "
                 "depend on the workload's I/O pattern?", "",
                 ["nodes", "methods a / b", "workloads 1 / 2", "ratio a/b under 1", "ratio a/b "
                  "under 2", "interaction (ratio of ratios, 95 % bootstrap)", "verdict",
                  "experiments"])
    methods = sorted({k.method for k in cells if kinds.get(k.method) == "network"})
    # how much: slowest / fastest network method per workload, at each node count
    spread: dict[str, stats.Interval] = {}
    for workload, image, nodes in _groups(cells):
        cands = [c for m in methods
                 if (c := cells.get(CellKey(image, m, workload, nodes))) and c.values("total")]
        if len(cands) < 2:
            continue
        ranked = sorted(cands, key=lambda c: c.ci("total").estimate)  # type: ignore[union-attr]
        with_ratio = stats.ratio_ci(ranked[-1].values("total"), ranked[0].values("total"))
        spread[workload] = with_ratio  # the largest node count of each workload wins
        ans.findings.append(Finding({"workload": workload, "image": image, "nodes": nodes,
                                     "kind": "spread", "fastest": ranked[0].key.method,
                                     "slowest": ranked[-1].key.method},
                                    "spread", with_ratio.estimate, with_ratio,
                                    [c.experiment_id for c in cands]))
        ans.cites += [c.experiment_id for c in cands]
    # does it depend on the workload: interaction on log time, per node count
    by_nodes: dict[int, dict[tuple[str, str], Cell]] = {}
    for k, c in cells.items():
        if kinds.get(k.method) == "network" and c.values("total"):
            by_nodes.setdefault(k.nodes, {})[(k.method, k.workload)] = c
    tested = 0
    found: list[tuple[float, str]] = []
    for nodes, tab in sorted(by_nodes.items()):
        wls = sorted({w for _, w in tab})
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                for j, w1 in enumerate(wls):
                    for w2 in wls[j + 1:]:
                        quad = [tab.get((a, w1)), tab.get((b, w1)), tab.get((a, w2)),
                                tab.get((b, w2))]
                        if any(q is None for q in quad):
                            continue
                        qs = [q for q in quad if q is not None]
                        try:
                            ci = stats.log_contrast_ci(qs[0].values("total"), qs[1].values("total"),
                                                       qs[2].values("total"), qs[3].values("total"))
                        except ValueError:
                            continue
                        tested += 1
                        r1 = qs[0].ci("total").estimate / qs[1].ci("total").estimate  # type: ignore[union-attr]
                        r2 = qs[2].ci("total").estimate / qs[3].ci("total").estimate  # type: ignore[union-attr]
                        real = ci.low > 1.0 or ci.high < 1.0
                        flip = (r1 - 1) * (r2 - 1) < 0 and real
                        verdict = ("ranking flips" if flip else "interaction") if real else "overlap"
                        ids = [q.experiment_id for q in qs]
                        ans.cites += ids
                        ans.rows.append([str(nodes), f"{a} / {b}", f"{w1} / {w2}", f"{r1:.2f}",
                                         f"{r2:.2f}", f"{ci.fmt(3)} ({stats.label(ci)})",
                                         verdict if real else f"{NOT_SUPPORTED} (includes 1)",
                                         ", ".join(ids)])
                        ans.findings.append(Finding(
                            {"nodes": nodes, "methods": [a, b], "workloads": [w1, w2],
                             "kind": "interaction"}, verdict, ci.estimate, ci, ids))
                        if real:
                            found.append((abs(math.log(ci.estimate)),
                                          f"{a} vs {b} differs {r1:.2f}x under {w1} and "
                                          f"{r2:.2f}x under {w2} at N={nodes}"
                                          + (" (the ranking flips)" if flip else "")))
    parts = []
    real_spread = {w: r for w, r in spread.items() if r.low > 1.0}
    if real_spread:
        w, r = max(real_spread.items(), key=lambda kv: kv[1].estimate)
        parts.append(f"the choice matters: the slowest network method takes {r.estimate:.2f}x "
                     f"[{r.low:.2f}, {r.high:.2f}] the fastest for {w}")
        ans.effect, ans.interval = r.estimate, r
    elif spread:
        parts.append(f"that the choice changes the time is {NOT_SUPPORTED} (every slowest/"
                     f"fastest interval includes 1)")
    else:
        parts.append(f"{NOT_SUPPORTED}: no group has two network methods measured")
    if not tested:
        parts.append(f"whether it depends on the I/O pattern is {NOT_SUPPORTED} (no two network "
                     f"methods measured under two workloads at one node count)")
        ans.code = "spread_only" if real_spread else "not_supported"
    elif found:
        found.sort(reverse=True)
        parts.append(f"it depends on the workload's I/O pattern (method x workload interaction "
                     f"on log time in {len(found)} of {tested} tests): strongest, {found[0][1]}")
        ans.code = "interaction"
    else:
        parts.append(f"a dependence on the I/O pattern is {NOT_SUPPORTED} (no interaction "
                     f"interval of {tested} excludes 1)")
        ans.code = "no_interaction_shown"
    ans.verdict = "; ".join(parts) + "."
    return ans


def q4_fuse(cells: Mapping[CellKey, Cell], fuse: str = "squashfuse",
            kernel: str = "squashfs-kernel", margin: float = DEFAULT_MARGIN) -> Answer:
    ans = Answer(4, "What is the runtime overhead of FUSE-mounted SquashFS compared to "
                 "kernel-mounted, per workload?", "",
                 ["workload", "image", "nodes", f"workload time {fuse}", f"workload time {kernel}",
                  "overhead (90 % bootstrap, two one-sided tests)", "verdict", "experiments"])
    per_workload: dict[str, str] = {}
    codes: dict[str, str] = {}
    pct = f"{margin * 100:.0f} %"
    for workload, image, nodes in _groups(cells):
        f = cells.get(CellKey(image, fuse, workload, nodes))
        k = cells.get(CellKey(image, kernel, workload, nodes))
        if not f or not k or not f.values("workload") or not k.values("workload"):
            continue
        try:
            outcome, ratio = stats.equivalence(f.values("workload"), k.values("workload"),
                                               margin)
        except ValueError:
            continue
        over = (ratio.estimate - 1) * 100
        shown = (f"{over:+.1f} % [{(ratio.low - 1) * 100:+.1f}, {(ratio.high - 1) * 100:+.1f}]"
                 f" ({stats.label(ratio)})")
        if outcome == stats.EQUIVALENT:
            verdict = f"minimal: equivalent within ±{pct}"
        elif outcome == stats.DIFFERENT_BEYOND_MARGIN:
            verdict = (f"FUSE {'slower' if over > 0 else 'faster'} by {abs(over):.1f} %, "
                       f"beyond the ±{pct} margin (not minimal)")
        elif outcome == stats.DIFFERENT_WITHIN_MARGIN:
            verdict = (f"FUSE {'slower' if over > 0 else 'faster'} by {abs(over):.1f} %; whether "
                       f"beyond ±{pct} is {NOT_SUPPORTED}")
        else:
            verdict = f"{NOT_SUPPORTED}: neither a difference nor equivalence within ±{pct}"
        ids = [f.experiment_id, k.experiment_id]
        ans.cites += ids
        ans.rows.append([workload, image, str(nodes), _fmt(f.ci("workload")),
                         _fmt(k.ci("workload")), shown, verdict, ", ".join(ids)])
        ans.findings.append(Finding({"workload": workload, "image": image, "nodes": nodes,
                                     "margin": margin}, outcome, ratio.estimate, ratio, ids))
        per_workload[workload] = f"{workload}: {verdict} (N={nodes})"  # largest N wins
        codes[workload] = outcome
    if not ans.rows:
        ans.verdict = (f"{NOT_SUPPORTED}: the study has no workload measured with both {fuse} "
                       f"and {kernel}.")
    else:
        ans.verdict = "; ".join(per_workload[w] for w in sorted(per_workload)) + "."
        ans.code = ",".join(f"{w}:{c}" for w, c in sorted(codes.items()))
    return ans


def q5_sbcast(cells: Mapping[CellKey, Cell], sbcast: str = "sbcast",
              alternatives: Sequence[str] | None = None) -> Answer:
    ans = Answer(5, "Does sbcast stay effective as node count grows?", "",
                 ["workload", "image", "nodes", "compared with", "time to solution "
                  f"{sbcast} / other (95 % bootstrap)", "verdict", "experiments"])
    series: dict[tuple[str, str, str], list[Cell]] = {}
    for k, c in cells.items():
        if c.values("total"):
            series.setdefault((k.workload, k.image, k.method), []).append(c)
    others_all = sorted({m for (_, _, m) in series if m != sbcast})
    others = [m for m in (alternatives or others_all) if m in others_all]
    per_wl: dict[tuple[str, str], list[str]] = {}
    for (workload, image, method), cs in sorted(series.items()):
        if method != sbcast:
            continue
        cs.sort(key=lambda c: c.key.nodes)
        for s in cs:
            for m in others:
                o = cells.get(CellKey(image, m, workload, s.key.nodes))
                if not o or not o.values("total"):
                    continue
                r = stats.ratio_ci(s.values("total"), o.values("total"))
                v = "faster" if r.high < 1 else "slower" if r.low > 1 else "overlap"
                ids = [s.experiment_id, o.experiment_id]
                ans.cites += ids
                ans.rows.append([workload, image, str(s.key.nodes), m,
                                 f"{r.fmt(3)} ({stats.label(r)})",
                                 f"{sbcast} {v}" if v != "overlap" else
                                 f"{NOT_SUPPORTED} (includes 1)", ", ".join(ids)])
                ans.findings.append(Finding({"workload": workload, "image": image,
                                             "nodes": s.key.nodes, "kind": "at_n",
                                             "other": m}, v, r.estimate, r, ids))
        # per-node slope of time to solution, against every alternative with >= 2 node counts
        if len({c.key.nodes for c in cs}) < 2:
            per_wl.setdefault((workload, image), []).append(
                f"slope {NOT_SUPPORTED} (one node count)")
            continue
        sl = stats.slope_ci([(c.key.nodes, c.values("total")) for c in cs])
        ans.findings.append(Finding({"workload": workload, "image": image, "kind": "slope",
                                     "method": sbcast}, "slope", sl.estimate, sl,
                                    [c.experiment_id for c in cs]))
        notes = [f"{sbcast} adds {sl.estimate:.3f} s/node [{sl.low:.3f}, {sl.high:.3f}]"]
        for m in others:
            ocs = sorted(series.get((workload, image, m), []), key=lambda c: c.key.nodes)
            if len({c.key.nodes for c in ocs}) < 2:
                continue
            osl = stats.slope_ci([(c.key.nodes, c.values("total")) for c in ocs])
            ans.findings.append(Finding({"workload": workload, "image": image, "kind": "slope",
                                         "method": m}, "slope", osl.estimate, osl,
                                        [c.experiment_id for c in ocs]))
            if sl.high < osl.low:
                notes.append(f"flatter than {m} ({osl.estimate:.3f} s/node)")
            elif sl.low > osl.high:
                notes.append(f"steeper than {m} ({osl.estimate:.3f} s/node)")
            else:
                notes.append(f"not separable from {m}")
        per_wl.setdefault((workload, image), []).append(", ".join(notes))
    if not per_wl:
        ans.verdict = f"{NOT_SUPPORTED}: no {sbcast} runs."
        return ans
    parts = []
    steeper = flatter = 0
    for (workload, image), notes in sorted(per_wl.items()):
        text = "; ".join(notes)
        steeper += text.count("steeper than")
        flatter += text.count("flatter than")
        largest = [f for f in ans.findings if f.group.get("kind") == "at_n"
                   and f.group["workload"] == workload and f.group["image"] == image]
        if largest:
            n = max(int(f.group["nodes"]) for f in largest)
            wins = [str(f.group["other"]) for f in largest
                    if f.group["nodes"] == n and f.verdict == "faster"]
            loses = [str(f.group["other"]) for f in largest
                     if f.group["nodes"] == n and f.verdict == "slower"]
            text += (f"; at N={n} faster than {', '.join(wins) or 'none'}, slower than "
                     f"{', '.join(loses) or 'none'}")
        parts.append(f"{workload}: {text}")
    ans.code = ("stays_effective" if flatter and not steeper else
                "loses_ground" if steeper and not flatter else "mixed" if steeper else
                "not_supported")
    ans.verdict = "; ".join(parts) + "."
    return ans


# A cell needs this many completed runs to enter any comparison: one run has no interval (an
# interval of zero width would "separate" from everything and decide verdicts on noise).
MIN_RUNS = 2


def answer_all(cells: Mapping[CellKey, Cell],
               kinds: Mapping[str, str] = DEFAULT_METHOD_KINDS,
               margin: float = DEFAULT_MARGIN) -> list[Answer]:
    usable = {k: c for k, c in cells.items() if len(c.runs) >= MIN_RUNS}
    left_out = len(cells) - len(usable)
    answers = [q1_network(usable, kinds), q2_local(usable, kinds), q3_interaction(usable, kinds),
               q4_fuse(usable, margin=margin), q5_sbcast(usable)]
    for a in answers:
        a.cites = sorted(set(a.cites))
        if left_out:
            a.caveats.append(f"{left_out} experiment(s) with fewer than {MIN_RUNS} completed runs "
                             "were left out of every comparison: a single run has no interval.")
    return answers
