"""`shoal study` commands: run a study spec, show its status, write its report, compare two."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from shoal.cli import jsonout
from shoal.cli.options import LazyConsole, cluster_option, json_option
from shoal.errors import StudyError
from shoal.study import session
from shoal.study.db import StudyDB

if TYPE_CHECKING:
    # report (and stats) pull in numpy and matplotlib (~1 s): imported by the commands that use
    # them, so `shoal --help` and every other command start fast
    from shoal.study.report import Report
    from shoal.study.runner import Summary
    from shoal.study.stats import Interval

console = LazyConsole()


@click.group()
def study() -> None:
    """Run the image distribution study: matrix of experiments, results DB, report."""


@study.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results directory (default: results/<study name>).")
@cluster_option(required_default=False)
@click.option("--keep-cluster", is_flag=True,
              help="Leave up a cluster that this run booted (default: take it down at the end).")
@click.option("--dry-run", "dry", is_flag=True,
              help="Print the experiments and batch scripts only.")
@click.option("--rerun-failed", is_flag=True, help="Run failed runs again (new attempts).")
@json_option
def run_cmd(spec_path: Path, out: Path | None, cluster: str | None, keep_cluster: bool, dry: bool,
            rerun_failed: bool, as_json: bool) -> None:
    """Run the study in SPEC; running it again resumes (completed runs are skipped).

    The virtual cluster the spec describes ([cluster] name, nodes, network, storage; --cluster
    overrides the name) is booted when it is not up, and taken down at the end unless
    --keep-cluster. A cluster that was already up is left as it is."""
    res = session.run_study(spec_path, out, cluster, dry, rerun_failed, console.real(),
                            boot=True, keep_cluster=keep_cluster)
    if res.summary is None or res.counts is None:
        return
    summary, counts = res.summary, res.counts
    if as_json:
        jsonout.emit("study.run", {
            "name": res.study_name, "out": str(res.out_dir), "cluster": res.cluster,
            "cluster_booted": res.booted, "cluster_kept": res.booted and keep_cluster,
            "completed": summary.completed, "failed": summary.failed, "skipped": summary.skipped,
            "reattached": summary.reattached, "states": dict(counts)})
        return
    print_summary(res)


def run_study(spec_path: Path, out: Path | None, cluster_name: str | None = None,
              dry: bool = False, rerun_failed: bool = False) -> Path:
    """`shoal study run` on a cluster that is up, with its summary table (what shoal.demo and
    the benchmarks call); returns the results directory."""
    res = session.run_study(spec_path, out, cluster_name, dry, rerun_failed, console.real())
    print_summary(res)
    return res.out_dir


def print_summary(res: session.RunOutcome) -> None:
    if res.summary is None or res.counts is None:
        return
    summary, counts = res.summary, res.counts
    table = Table(title=f"study {res.study_name}: {res.out_dir}")
    for col in ("completed now", "failed now", "skipped", "re-attached", "in database"):
        table.add_column(col)
    table.add_row(str(summary.completed), str(summary.failed), str(summary.skipped),
                  str(summary.reattached), ", ".join(f"{v} {k.lower()}"
                                                     for k, v in sorted(counts.items())))
    console.print(table)
    check_outcome(summary, res.out_dir)
    console.print(f"report: shoal study report {res.out_dir}")


def check_outcome(summary: Summary, out_dir: Path) -> None:
    """A study invocation whose every run failed is a failure (non-zero exit), not a result."""
    if summary.failed and not summary.completed:
        run, reason = summary.failures[0] if summary.failures else ("?", "no reason recorded")
        reason = " ".join(reason.split())  # one line
        raise StudyError(
            f"all {summary.failed} runs failed; first: {run}: {reason}"[:400],
            f"see `shoal study status {out_dir}`; fix the cause, then run again with --rerun-failed",
        )


@study.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@json_option
def status(out_dir: Path, as_json: bool) -> None:
    """Runs per state, per experiment, and the latest failures of the study in DIR."""
    with StudyDB.in_dir(out_dir, create=False) as db:
        st = db.study()
        exps = {e.id: e for e in db.experiments()}
        latest = db.latest_runs()
        done = db.completed_keys()
        counts = db.state_counts()
        failed = db.failed_runs()
    name = st[1] if st else "?"
    rows = []
    for eid, e in exps.items():
        keys = [k for k in latest if k[0] == eid]
        rows.append({
            "id": eid, "method": e.method, "workload": e.workload, "image": e.image,
            "nodes": int(e.nodes), "done": sum(k in done for k in keys),
            "failed": sum(latest[k].state.value == "FAILED" and k not in done for k in keys),
            "active": sum(latest[k].state.active and k not in done for k in keys)})
    if as_json:
        jsonout.emit("study.status", {
            "name": str(name), "out": str(out_dir), "states": dict(counts), "experiments": rows,
            "failed_runs": [{"experiment": e.id, "rep": r.rep, "attempt": r.attempt,
                             "job": r.job_id, "reason": r.reason or ""} for r, e in failed]})
        return
    console.print(f"study [bold]{name}[/] in {out_dir}: " + (", ".join(
        f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no runs yet"))
    table = Table()
    for col in ("experiment", "method", "workload", "image", "nodes", "done", "failed",
                "active"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("id", "method", "workload", "image", "nodes", "done",
                                            "failed", "active")))
    console.print(table)
    if failed:
        ft = Table(title="failed runs (newest attempt)")
        for col in ("run", "job", "reason"):
            ft.add_column(col)
        for fr, fe in failed[-10:]:
            ft.add_row(f"{fe.label()} r{fr.rep} a{fr.attempt}", str(fr.job_id),
                       (fr.reason or "")[:160])
        console.print(ft)


@study.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--site", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SITE.toml: add the section 'At your scale' with the model's predictions.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="model.json to use with --site (default: fit one from DIR).")
@json_option
def report(out_dir: Path, site: Path | None, model_path: Path | None, as_json: bool) -> None:
    """Write DIR/report.md and DIR/report.html (with plots) and print the answers."""
    from shoal.study.report import write_report

    if model_path is not None and site is None:
        raise click.UsageError("--model needs --site")
    rep = write_report(out_dir, site=site, model=model_path)
    if as_json:
        jsonout.emit("study.report", report_doc(rep))
        return
    print_report(rep, out_dir)


def report_doc(rep: Report) -> dict[str, object]:
    """The `study report --json` document."""
    return {
        "markdown": str(rep.markdown), "html": str(rep.html),
        "plots": [str(p) for p in rep.plots.values()],
        "recommendation": rep.recommendation,
        "answers": [{"number": a.number, "question": a.question,
                     "verdict": a.verdict.replace("**", ""), "cites": list(a.cites)}
                    for a in rep.answers]}


def print_report(rep: Report, out_dir: Path) -> None:
    """The answers table and where the report is."""
    if rep.recommendation:
        console.print(f"[bold]{rep.recommendation}[/]")
    table = Table(title="answers", show_lines=True)
    table.add_column("#")
    table.add_column("question", max_width=40)
    table.add_column("answer")
    for a in rep.answers:
        table.add_row(str(a.number), a.question, a.verdict.replace("**", ""))
    console.print(table)
    console.print(f"report: {rep.markdown}\n        {rep.html}")
    console.print(f"plots:  {len(rep.plots)} in {out_dir / 'plots'}")


@study.command("export")
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True)
@click.option("--out", "dest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: DIR/nodes.csv or DIR/nodes.jsonl).")
def export_cmd(out_dir: Path, fmt: str, dest: Path | None) -> None:
    """One row per node and run, every figure a scale model needs (see shoal.study.export)."""
    from shoal.study.export import export

    text = export(out_dir, fmt)
    dest = dest or out_dir / f"nodes.{fmt}"
    dest.write_text(text)
    console.print(f"{max(0, text.count(chr(10)) - (fmt == 'csv'))} rows: {dest}")


@study.command()
@click.argument("dir_a", metavar="DIR_A", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dir_b", metavar="DIR_B", type=click.Path(file_okay=False, path_type=Path))
@json_option
def compare(dir_a: Path, dir_b: Path, as_json: bool) -> None:
    """Two result sets side by side (e.g. two network profiles), matched by factors."""
    from shoal.study.report import compare_dirs

    rows = compare_dirs(dir_a, dir_b)
    if not rows:
        raise StudyError("neither directory has completed runs",
                         f"check with `shoal study status {dir_a}`")
    if as_json:
        def iv(i: Interval | None) -> dict[str, float] | None:
            if i is None:
                return None
            return {"median": i.estimate, "low": i.low, "high": i.high, "n": i.n}

        jsonout.emit("study.compare", {"a": str(dir_a), "b": str(dir_b), "rows": [
            {"method": r.key.method, "workload": r.key.workload, "image": r.key.image,
             "nodes": int(r.key.nodes), "metric": r.metric, "a": iv(r.a), "b": iv(r.b),
             "ratio": r.ratio, "verdict": r.verdict} for r in rows]})
        return
    table = Table(title=f"A = {dir_a}   B = {dir_b}   (median [95 % interval], seconds)")
    for col in ("method", "workload", "image", "nodes", "metric", "A", "B", "B/A", "verdict"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.key.method, r.key.workload, r.key.image, str(r.key.nodes), r.metric,
                      r.a.fmt() if r.a else "—", r.b.fmt() if r.b else "—",
                      f"{r.ratio:.2f}" if r.ratio is not None else "—", r.verdict)
    console.print(table)
