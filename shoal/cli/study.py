"""`shoal study` commands: run a study spec, show its status, write its report, compare two."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from shoal.errors import StudyError
from shoal.study import session
from shoal.study.db import StudyDB
from shoal.study.report import Report, compare_dirs, write_report

console = Console(highlight=False)


@click.group()
def study() -> None:
    """Run the image distribution study: matrix of experiments, results DB, report."""


@study.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results directory (default: results/<study name>).")
@click.option("--cluster", "cluster_name", default=None,
              help="Virtual cluster name (overrides [cluster] name in the spec).")
@click.option("--dry-run", "dry", is_flag=True,
              help="Print the experiments and batch scripts only.")
@click.option("--rerun-failed", is_flag=True, help="Run failed runs again (new attempts).")
def run_cmd(spec_path: Path, out: Path | None, cluster_name: str | None, dry: bool,
            rerun_failed: bool) -> None:
    """Run the study in SPEC; running it again resumes (completed runs are skipped)."""
    run_study(spec_path, out, cluster_name, dry, rerun_failed)


def run_study(spec_path: Path, out: Path | None, cluster_name: str | None = None,
              dry: bool = False, rerun_failed: bool = False) -> Path:
    """`shoal study run` with its summary table (also what shoal.demo calls); returns the
    results directory."""
    res = session.run_study(spec_path, out, cluster_name, dry, rerun_failed, console)
    if res.summary is None or res.counts is None:
        return res.out_dir
    summary, counts = res.summary, res.counts
    table = Table(title=f"study {res.study_name}: {res.out_dir}")
    for col in ("completed now", "failed now", "skipped", "re-attached", "in database"):
        table.add_column(col)
    table.add_row(str(summary.completed), str(summary.failed), str(summary.skipped),
                  str(summary.reattached), ", ".join(f"{v} {k.lower()}"
                                                     for k, v in sorted(counts.items())))
    console.print(table)
    console.print(f"report: shoal study report {res.out_dir}")
    return res.out_dir


@study.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
def status(out_dir: Path) -> None:
    """Runs per state, per experiment, and the latest failures of the study in DIR."""
    with StudyDB.in_dir(out_dir, create=False) as db:
        st = db.study()
        exps = {e.id: e for e in db.experiments()}
        latest = db.latest_runs()
        done = db.completed_keys()
        counts = db.state_counts()
        failed = db.failed_runs()
    name = st[1] if st else "?"
    console.print(f"study [bold]{name}[/] in {out_dir}: " + (", ".join(
        f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no runs yet"))
    table = Table()
    for col in ("experiment", "method", "workload", "image", "nodes", "done", "failed",
                "active"):
        table.add_column(col)
    for eid, e in exps.items():
        keys = [k for k in latest if k[0] == eid]
        n_done = sum(k in done for k in keys)
        n_failed = sum(latest[k].state.value == "FAILED" and k not in done for k in keys)
        n_active = sum(latest[k].state.active and k not in done for k in keys)
        table.add_row(eid, e.method, e.workload, e.image, str(e.nodes), str(n_done),
                      str(n_failed), str(n_active))
    console.print(table)
    if failed:
        ft = Table(title="failed runs (newest attempt)")
        for col in ("run", "job", "reason"):
            ft.add_column(col)
        for r, e in failed[-10:]:
            ft.add_row(f"{e.label()} r{r.rep} a{r.attempt}", str(r.job_id), (r.reason or "")[:160])
        console.print(ft)


@study.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--site", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SITE.toml: add the section 'At your scale' with the model's predictions.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="model.json to use with --site (default: fit one from DIR).")
def report(out_dir: Path, site: Path | None, model_path: Path | None) -> None:
    """Write DIR/report.md and DIR/report.html (with plots) and print the answers."""
    if model_path is not None and site is None:
        raise click.UsageError("--model needs --site")
    print_report(write_report(out_dir, site=site, model=model_path), out_dir)


def print_report(rep: Report, out_dir: Path) -> None:
    """The answers table and where the report is."""
    table = Table(title="answers", show_lines=True)
    table.add_column("#")
    table.add_column("question", max_width=40)
    table.add_column("answer")
    for a in rep.answers:
        table.add_row(str(a.number), a.question, a.verdict.replace("**", ""))
    console.print(table)
    console.print(f"report: {rep.markdown}\n        {rep.html}")
    console.print(f"plots:  {len(rep.plots)} in {out_dir / 'plots'}")


@study.command()
@click.argument("dir_a", metavar="DIR_A", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dir_b", metavar="DIR_B", type=click.Path(file_okay=False, path_type=Path))
def compare(dir_a: Path, dir_b: Path) -> None:
    """Two result sets side by side (e.g. two network profiles), matched by factors."""
    rows = compare_dirs(dir_a, dir_b)
    if not rows:
        raise StudyError("neither directory has completed runs",
                         f"check with `shoal study status {dir_a}`")
    table = Table(title=f"A = {dir_a}   B = {dir_b}   (median [95 % interval], seconds)")
    for col in ("method", "workload", "image", "nodes", "metric", "A", "B", "B/A", "verdict"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.key.method, r.key.workload, r.key.image, str(r.key.nodes), r.metric,
                      r.a.fmt() if r.a else "—", r.b.fmt() if r.b else "—",
                      f"{r.ratio:.2f}" if r.ratio is not None else "—", r.verdict)
    console.print(table)
