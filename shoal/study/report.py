"""The study report (report.md + report.html + plots/*.png) and `compare`, derived from the DB.

The report is built once as a list of blocks (heading, paragraph, table, image) and rendered to
Markdown and HTML from that same list, so the two never disagree. Nothing here writes to the
database: results are the source, the report is derived.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.study import stats
from shoal.study.analysis import DEFAULT_METHOD_KINDS, Cell, CellKey, aggregate
from shoal.study.answers import (
    ANSWERS_FORMAT,
    DEFAULT_MARGIN,
    NOT_SUPPORTED,
    Answer,
    answer_all,
)
from shoal.study.db import StudyDB
from shoal.study.plots import all_plots


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report
    alt: str


Block = Heading | Para | Table | Image


@dataclass(frozen=True)
class Report:
    markdown: Path
    html: Path
    plots: dict[str, Path]
    answers: list[Answer]
    recommendation: str | None = None  # one line for people, only when the data support it


def _ci(c: Cell, metric: str, scale: float = 1.0, digits: int = 3) -> str:
    ci = c.ci(metric)
    return "—" if ci is None else ci.fmt(digits, scale)


def _mib(c: Cell, metric: str) -> str:
    return _ci(c, metric, 2**20, 4)


def build_blocks(db: StudyDB, out_dir: Path, kinds: Mapping[str, str] = DEFAULT_METHOD_KINDS,
                 with_plots: bool = True) -> tuple[list[Block], list[Answer], dict[str, Path]]:
    study = db.study()
    name = study[1] if study else "(no study)"
    cells = aggregate(db.results())
    counts = db.state_counts()
    blocks: list[Block] = [
        Heading(1, f"Study {name}: image distribution report"),
        Para(f"Generated {dt.datetime.now().isoformat(timespec='seconds')} from "
             f"`{db.path}`. Runs: " + (", ".join(f"{v} {k.lower()}" for k, v in
                                                 sorted(counts.items())) or "none") +
             f"; experiments with data: {len(cells)}."),
    ]
    envs = db.environments()
    if envs:
        e = envs[-1]
        blocks += [Heading(2, "Environment"), Table(["item", "value"], [
            ["Slurm", str(e["slurm_version"])], ["kernel", str(e["kernel"])],
            ["host", str(e["hostname"])],
            ["cluster", f"{e['cluster_kind']} {e['cluster_name'] or ''}".strip()],
            ["network profile", f"{e['network_profile']} {e['network_params_json']}"],
            ["images", str(e["image_digests_json"])],
            ["shoal", f"{e['shoal_version']} (git {e['git_commit'] or 'unknown'})"],
            *[[str(k), str(v)] for k, v in sorted(json.loads(e.get("extra_json") or "{}")
                                                 .items())],
        ])]

    extra = json.loads(envs[-1].get("extra_json") or "{}") if envs else {}
    margin = float(extra.get("margin") or DEFAULT_MARGIN)
    answers = answer_all(cells, kinds, margin=margin)
    add_caveats(answers, cells, extra)
    blocks += [Heading(2, "Answers"),
               Para("Each answer rests only on comparisons whose intervals exclude “no "
                    f"difference”; where they do not, or runs are missing, it says “{NOT_SUPPORTED}”. "
                    "Every interval is labelled with the coverage it really has for the repetitions "
                    f"run. “Minimal” and “no difference” need an equivalence test against a margin "
                    f"of ±{margin * 100:.0f} % (two one-sided tests). The same answers as structured "
                    "data: answers.json. Experiment ids refer to the tables below.")]
    blocks.append(Table(["#", "question", "answer", "experiments cited"],
                        [[str(a.number), a.question, a.verdict, str(len(a.cites))]
                         for a in answers]))
    for a in answers:
        blocks += [Heading(3, f"{a.number}. {a.question}"), Para(a.verdict)]
        blocks += [Para(f"Caveat: {c}") for c in a.caveats]
        if a.rows:
            blocks.append(Table(a.headers, a.rows))
    blocks += [Heading(2, "What the emulation cannot do"), Para(LIMITS)]

    blocks += [Heading(2, "Times per method, workload and node count"),
               Para("Median [low, high] in seconds over repetitions, with the interval's true "
                    "coverage; staging and workload are the slowest node's, total is the time to "
                    "solution (one clock for every method: the job step's start, before any "
                    "launch, to the last node's workload end). CPU: the nodes' CPU seconds for "
                    "the whole run (their cgroups). bound: what limited the runs (cpu, link, "
                    "storage, overhead; rule in docs/ARCHITECTURE.md). n = completed "
                    "repetitions.")]
    blocks.append(Table(
        ["method", "workload", "image", "nodes", "n", "staging", "workload", "total",
         "coverage", "CPU s", "bound", "experiment"],
        [[k.method, k.workload, k.image, str(k.nodes), str(len(c.runs)), _ci(c, "stage"),
          _ci(c, "workload"), _ci(c, "total"), _coverage(c), _ci(c, "cpu"), _bounds(c),
          c.experiment_id] for k, c in cells.items()]))
    blocks += [Heading(2, "Data moved and memory"),
               Para("MiB, median [interval, coverage as above]; bytes are summed over the "
                    "nodes of a run and counted where they flow: from storage at the storage "
                    "host's connection to each node, over the network at each node's interface, "
                    "for the whole run; peak memory is the largest node's.")]
    blocks.append(Table(
        ["method", "workload", "image", "nodes", "from storage", "over network", "peak memory",
         "experiment"],
        [[k.method, k.workload, k.image, str(k.nodes), _mib(c, "bytes_storage"),
          _mib(c, "bytes_net"), _mib(c, "peak"), c.experiment_id] for k, c in cells.items()]))

    plots: dict[str, Path] = {}
    if with_plots and cells:
        plots = all_plots(cells, out_dir / "plots")
        blocks.append(Heading(2, "Plots"))
        for title, path in plots.items():
            blocks += [Heading(3, title), Image(f"plots/{path.name}", title)]

    failed = db.failed_runs()
    if failed:
        blocks += [Heading(2, "Failed runs"), Table(
            ["experiment", "rep", "attempt", "job", "state", "reason"],
            [[e.label() + f" ({r.experiment_id})", str(r.rep), str(r.attempt), str(r.job_id),
              str(r.job_state), (r.reason or "")[:200]] for r, e in failed])]
    blocks += [Heading(2, "Method"), Para(
        "Intervals for medians are exact order-statistic intervals; with n < 6 repetitions the "
        "widest one, [min, max], covers the median with less than 95 % (75 % for n = 3, "
        "93.75 % for n = 5), and is labelled so. Ratios, interactions and slopes use a "
        f"percentile bootstrap with {stats.N_BOOT} resamples and a fixed seed ({stats.SEED}), "
        "labelled with their nominal level and n: at small n they cover less than nominal. "
        "Runs went in an order shuffled per repetition from the spec's seed, page caches were "
        "dropped before each run unless cache = \"warm\", and each experiment's first (warm-up) "
        "run is discarded.")]
    return blocks, answers, plots


LIMITS = (
    "One machine's cores stand in for every node's own: CPU work (unpacking, decompression, FUSE, "
    "sshfs encryption, the walks) of all nodes competes for the same cores, so a run whose bound "
    "reads cpu measures the emulator as much as the method; the nodes' CPU seconds per phase are "
    "recorded so a scale model can give each node its own cores. Links are rate-limited only "
    "(tbf per node link, HTB on the storage host): the kernel here has no netem, so no added "
    "latency, jitter or loss; per-message latency is what veth and the software stack cost, "
    "far below a real fabric's. The shared file system is one sshfs (SFTP) server, not a "
    "parallel file system: no metadata server of its own, no striping over storage targets; "
    "its bandwidth is its link's. Node memory is a cgroup limit on shared RAM; the host's "
    "page cache of the image store is dropped before cold runs but shared by all nodes.")


def _coverage(c: Cell) -> str:
    ci = c.ci("total")
    return "—" if ci is None else stats.label(ci)


def _bounds(c: Cell) -> str:
    if not c.bounds:
        return "—"
    counts: dict[str, int] = {}
    for b in c.bounds.values():
        counts[b] = counts.get(b, 0) + 1
    return ", ".join(f"{b} {n}/{len(c.bounds)}" for b, n in sorted(counts.items(),
                                                                    key=lambda kv: -kv[1]))


def add_caveats(answers: Sequence[Answer], cells: Mapping[CellKey, Cell],
                extra: Mapping[str, object]) -> None:
    """Say which answers the emulator's shortcuts touch: bind storage, CPU-bound runs."""
    by_id = {c.experiment_id: c for c in cells.values()}
    storage = extra.get("shared_storage")
    nodes, cpus = extra.get("cluster_nodes"), extra.get("cpus_per_node")
    cores = os.cpu_count() or 1
    over = (isinstance(nodes, int) and isinstance(cpus, int) and nodes * cpus > cores)
    for a in answers:
        cited = [by_id[i] for i in a.cites if i in by_id]
        if storage == "bind" and any(not c.key.method.startswith("sbcast") for c in cited):
            a.caveats.append(
                "storage was a bind mount: reads from the shared file system crossed no network "
                "and hit the host's page cache, so every method that reads shared storage looks "
                "cheaper than on a real file system; rerun with storage = \"sshfs\".")
        bounds = [b for c in cited for b in c.bounds.values()]
        cpu = sum(b == "cpu" for b in bounds)
        if cpu:
            a.caveats.append(
                f"{cpu} of the {len(bounds)} runs it rests on were CPU-bound on the emulator's "
                f"shared cores" + (f" ({nodes} nodes x {cpus} CPUs oversubscribe the machine's "
                                   f"{cores} cores)" if over else "")
                + ": their differences can be CPU contention that separate nodes would not "
                "have, not network or storage effects.")


def write_answers_json(path: Path, answers: Sequence[Answer], study: str, margin: float) -> None:
    """answers.json: the answers as structured data (shoal.study.answer_schema.Answer.to_dict)."""
    doc = {"format": ANSWERS_FORMAT, "study": study, "margin": margin,
           "answers": [a.to_dict() for a in answers]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path})")
        else:
            cells = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in b.rows]
            out.append("| " + " | ".join(b.headers) + " |")
            out[-1] += "\n|" + "|".join("---" for _ in b.headers) + "|"
            for row in cells:
                out[-1] += "\n| " + " | ".join(row) + " |"
        out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    """HTML for our small Markdown subset: **bold** and `code`."""
    esc = html.escape(text)
    parts = esc.split("**")
    esc = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = esc.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Image):
            body.append(f'<img src="{html.escape(b.path)}" alt="{html.escape(b.alt)}">')
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                           for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
             "th{background:#eee}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) +
            "\n</body></html>\n")


def scale_blocks(out: Path, site: Path, model: Path | None) -> list[Block]:
    """The "At your scale" section (shoal.study.scale; docs/MODEL.md)."""
    from shoal.study.scale import build

    sec = build(out, site, model)
    blocks: list[Block] = [
        Heading(2, f"At your scale: {sec.site.name}"),
        Para(f"Predicted by the cost model in `{sec.model_path.name}` (docs/MODEL.md) for "
             f"{sec.site.nodes} nodes with {sec.site.cores_per_node:g} cores each, "
             f"{sec.site.link_gbit:g} Gbit/s links and {sec.site.storage_gbyte:g} GB/s of "
             "storage. Markers are this study's measured medians (on the emulator, where every "
             "node shares the host's cores); lines are the site's predictions with their 90 % "
             "bootstrap band. Assumed site values: "
             + (", ".join(f"{k} = {a.value:g} (range {a.low:g}-{a.high:g})"
                          for k, a in sec.site.assumed.items()) or "none") + "."),
        Table(["workload", "nodes", "fastest (predicted)", "seconds"],
              [[w, str(n), m, f"{t:.2f}"] for w, n, m, t in sec.winners]),
    ]
    if sec.crossovers:
        blocks.append(Para("Crossovers: " + "; ".join(
            f"{c.workload}: **{c.winner}** overtakes {c.loser} beyond {c.nodes - 1} nodes"
            for c in sec.crossovers) + "."))
    for key, changes in sec.sensitivity.items():
        blocks.append(Para(f"Across the range of assumed `{key}`: " + (
            "; ".join(changes[:8]) + (" ..." if len(changes) > 8 else "") if changes
            else "no winner changes.")))
    for workload, path in sec.plots.items():
        blocks += [Heading(3, f"{workload} at {sec.site.name}"),
                   Image(f"plots/{path.name}", f"{workload} at {sec.site.name}")]
    return blocks


def write_report(out_dir: str | Path, kinds: Mapping[str, str] = DEFAULT_METHOD_KINDS, *,
                 site: Path | None = None, model: Path | None = None) -> Report:
    out = Path(out_dir)
    with StudyDB.in_dir(out, create=False) as db:
        blocks, answers, plots = build_blocks(db, out, kinds)
        study = db.study()
        rec, notation = top_lines(db)
    # for people who read one line: first, right under the title; N and n explained once
    blocks[1:1] = ([Para(f"**Recommendation:** {rec}")] if rec else []) + [Para(notation)]
    if site is not None:
        blocks += scale_blocks(out, site, model)
    title = f"shoal study {study[1] if study else ''}".strip()
    md = out / "report.md"
    hp = out / "report.html"
    md.write_text(to_markdown(blocks))
    hp.write_text(to_html(blocks, title))
    with StudyDB.in_dir(out, create=False) as db:
        envs = db.environments()
    extra = json.loads(envs[-1].get("extra_json") or "{}") if envs else {}
    write_answers_json(out / "answers.json", answers, study[1] if study else "",
                       float(extra.get("margin") or DEFAULT_MARGIN))
    return Report(md, hp, plots, answers, rec.replace("**", "") if rec else None)


def top_lines(db: StudyDB) -> tuple[str | None, str]:
    """The recommendation (None unless the data support one) and the notation line."""
    from shoal.study.recommend import recommendation

    envs = db.environments()
    where = "this cluster"
    if envs:
        e = envs[-1]
        what = [str(v) for v in (e["cluster_kind"], e["cluster_name"]) if v]
        where = f"this cluster ({' '.join([*what, ''])}network {e['network_profile']})"
        where = where.replace(" network", ", network") if what else where
    rec = recommendation(aggregate(db.results()), where)
    notation = ("Notation: **N** is the number of nodes of a job (the `nodes` columns); **n** is "
                "the number of completed repetitions behind a figure (the `n` column). Times are "
                "seconds, median [95 % interval] over the n repetitions.")
    return rec, notation


# -- compare ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompareRow:
    key: CellKey
    metric: str
    a: stats.Interval | None
    b: stats.Interval | None

    @property
    def verdict(self) -> str:
        if self.a is None or self.b is None:
            return "only in " + ("B" if self.a is None else "A")
        if self.a.overlaps(self.b):
            return NOT_SUPPORTED.replace("not supported", "no difference supported")
        return "B faster" if self.b.high < self.a.low else "B slower"

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or not self.a.estimate:
            return None
        return self.b.estimate / self.a.estimate


def compare_dirs(dir_a: str | Path, dir_b: str | Path,
                 metrics: Sequence[str] = ("stage", "total")) -> list[CompareRow]:
    """Two result sets side by side, matched by factors (not by id, so two studies may differ
    in name and spec and still be compared cell by cell)."""
    with StudyDB.in_dir(dir_a, create=False) as da, StudyDB.in_dir(dir_b, create=False) as db_:
        ca, cb = aggregate(da.results()), aggregate(db_.results())
    rows: list[CompareRow] = []
    for key in sorted(set(ca) | set(cb), key=lambda k: (k.workload, k.image, k.method, k.nodes)):
        for m in metrics:
            a = ca[key].ci(m) if key in ca else None
            b = cb[key].ci(m) if key in cb else None
            if a is None and b is None:
                continue
            rows.append(CompareRow(key, m, a, b))
    return rows
