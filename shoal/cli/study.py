"""`shoal study` commands: run a study spec, show its status, write its report, compare two."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from shoal.errors import StudyError
from shoal.slurm.client import SlurmClient
from shoal.study.db import DB_NAME, StudyDB
from shoal.study.jobscript import JobContext
from shoal.study.matrix import expand
from shoal.study.runner import StudyRunner, Summary, collect_environment, dry_run
from shoal.study.spec import DEFAULT_METHODS, StudySpec, load_spec

if TYPE_CHECKING:
    # report pulls in numpy and matplotlib (~1 s): imported by the commands that write reports,
    # so `shoal --help` and every other command start fast
    from shoal.study.report import Report

console = Console(highlight=False)


@click.group()
def study() -> None:
    """Run the image distribution study: matrix of experiments, results DB, report."""


@dataclasses.dataclass
class _Link:
    client: SlurmClient
    ctx: JobContext
    host_logs: Path
    network_params: dict[str, object]
    store_local: Path  # the image store as this process sees it
    extra_env: dict[str, object] = dataclasses.field(default_factory=dict)


def _method_names() -> tuple[str, ...]:
    try:
        from shoal.staging.base import method_names
    except ImportError:  # the distribution package is optional for reading specs
        return DEFAULT_METHODS
    return tuple(method_names())


def _link(spec: StudySpec, out: Path, *, connect: bool) -> _Link:
    """The Slurm client and job paths for the spec's cluster. With connect=False (dry run) the
    cluster is not asked anything."""
    from shoal import paths

    if spec.cluster.kind == "existing":
        # a site: the results directory and the store must be on file systems the nodes share,
        # at the same paths as here
        store = Path(spec.cluster.store or paths.store_root())
        logs = out.resolve() / "logs"
        ctx = JobContext(logs_dir=str(logs), agent=f"{store}/.shoal/agent.pyz",
                         store_dir=str(store), partition=spec.partition,
                         time_limit_s=spec.timeout)
        return _Link(SlurmClient(), ctx, logs, {}, store)
    from shoal.cluster.state import ClusterDir

    cdir = ClusterDir(spec.cluster.name)
    # nodes see the cluster's pfs directory as /pfs; one log directory per results directory
    tag = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    rel = f"shoal-study/{spec.name}-{tag}"
    ctx = JobContext(logs_dir=f"/pfs/{rel}", agent=f"{paths.CLUSTER_STORE_PATH}/.shoal/agent.pyz",
                     store_dir=paths.CLUSTER_STORE_PATH, partition=spec.partition,
                     time_limit_s=spec.timeout)
    if not connect:
        return _Link(SlurmClient(), ctx, cdir.pfs / rel, {}, paths.store_root())
    from shoal.cluster.manager import slurm_prefix

    if not cdir.exists() or cdir.load().phase != "up":
        raise StudyError(
            f"virtual cluster {spec.cluster.name!r} is not up",
            f"shoal cluster up --name {spec.cluster.name} --nodes {spec.cluster.nodes}"
            + (f" --network {spec.cluster.network}" if spec.cluster.network else ""))
    state = cdir.load()
    if spec.cluster.nodes is not None and len(state.nodes) < spec.cluster.nodes:
        raise StudyError(
            f"cluster {state.name!r} has {len(state.nodes)} nodes, the spec asks for "
            f"{spec.cluster.nodes}",
            f"shoal cluster down --name {state.name}; shoal cluster up --name {state.name} "
            f"--nodes {spec.cluster.nodes}")
    have = str(state.network.get("name"))
    if spec.cluster.network is not None and have != spec.cluster.network:
        raise StudyError(
            f"cluster {state.name!r} runs network profile {have!r}, the spec asks for "
            f"{spec.cluster.network!r}",
            f"boot it with `shoal cluster up --name {state.name} --network "
            f"{spec.cluster.network}` (results would otherwise be labelled wrongly)")
    storage = state.storage
    if spec.cluster.storage is not None and storage != spec.cluster.storage:
        raise StudyError(
            f"cluster {state.name!r} shares /pfs by {storage!r}, the spec asks for "
            f"{spec.cluster.storage!r}",
            f"boot it with `shoal cluster up --name {state.name} --storage "
            f"{spec.cluster.storage}`")
    client = SlurmClient(prefix=slurm_prefix(spec.cluster.name))
    cfg = state.config
    extra: dict[str, object] = {
        "cluster_nodes": len(state.nodes),
        **{k: cfg.get(k) for k in ("cpus_per_node", "memory_mb_per_node", "tmpfs_size")},
        "shared_storage": storage,
    }
    return _Link(client, ctx, cdir.pfs / rel, dict(state.network), paths.store_root(), extra)


def prepare_images(spec: StudySpec, store: Path) -> dict[str, str]:
    """Every image of the spec in the store (built and exported for a virtual cluster, only
    checked on an existing one); returns image -> tree digest."""
    import json

    digests: dict[str, str] = {}
    for name in spec.images:
        manifest = store / name / "manifest.json"
        if spec.cluster.kind == "virtual":
            from shoal.images.catalog import ensure_in_store

            with console.status(f"image {name}: building/exporting into the store if needed"):
                ensure_in_store(name)
        elif not manifest.is_file():
            raise StudyError(f"image {name!r} is not in the store {store}",
                             f"export it there first: shoal image export {name}")
        try:
            d = json.loads(manifest.read_text()).get("tree_digest")
        except (OSError, ValueError) as exc:
            raise StudyError(f"cannot read {manifest}: {exc}", "re-export the image") from None
        if isinstance(d, str):
            digests[name] = d
    return digests


def _prolog_store(spec: StudySpec, store: Path) -> Path | None:
    if spec.privileged == "prolog" or (spec.privileged == "auto" and os.geteuid() != 0):
        return store
    return None


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
    """`shoal study run` (also what shoal.demo calls); returns the results directory."""
    try:
        from shoal.cluster.config import NETWORK_PROFILES
        networks: set[str] | None = set(NETWORK_PROFILES)
    except ImportError:
        networks = None
    spec = load_spec(spec_path, methods=_method_names(),
                     networks=networks if _kind(spec_path) == "virtual" else None)
    if cluster_name:
        spec = dataclasses.replace(spec, cluster=dataclasses.replace(spec.cluster,
                                                                     name=cluster_name))
    exps = expand(spec)
    out_dir = out or Path("results") / spec.name
    link = _link(spec, out_dir, connect=not dry)
    if dry:
        db = StudyDB.in_dir(out_dir, create=False) if (out_dir / DB_NAME).exists() else None
        try:
            dry_run(spec, exps, db, link.ctx, out_dir, console, rerun_failed)
        finally:
            if db is not None:
                db.close()
        return out_dir
    digests = prepare_images(spec, link.store_local)
    from shoal.staging.bundle import publish

    # the bundle's name carries its hash: jobs of an older shoal keep running their own copy
    agent = f"{link.ctx.store_dir}/.shoal/{publish(link.store_local)}"
    ctx = dataclasses.replace(link.ctx, agent=agent)
    with StudyDB.in_dir(out_dir) as db:
        runner = StudyRunner(spec, exps, db, link.client, out_dir, ctx,
                             host_logs=link.host_logs, console=console,
                             rerun_failed=rerun_failed,
                             prolog_requests=_prolog_store(spec, link.store_local))
        env = collect_environment(link.client, spec, network_params=link.network_params,
                                  image_digests=digests)
        env = dataclasses.replace(
            env, extra={**link.extra_env, "agent": agent, "privileged": spec.privileged},
            # what the cluster runs, not only what the spec asked for
            network_profile=str(link.network_params.get("name") or spec.cluster.network))
        summary = runner.execute(env)
        counts = db.state_counts()
    table = Table(title=f"study {spec.name}: {out_dir}")
    for col in ("completed now", "failed now", "skipped", "re-attached", "in database"):
        table.add_column(col)
    table.add_row(str(summary.completed), str(summary.failed), str(summary.skipped),
                  str(summary.reattached), ", ".join(f"{v} {k.lower()}"
                                                     for k, v in sorted(counts.items())))
    console.print(table)
    check_outcome(summary, out_dir)
    console.print(f"report: shoal study report {out_dir}")
    return out_dir


def check_outcome(summary: Summary, out_dir: Path) -> None:
    """A study invocation whose every run failed is a failure (non-zero exit), not a result."""
    if summary.failed and not summary.completed:
        run, reason = summary.failures[0] if summary.failures else ("?", "no reason recorded")
        reason = " ".join(reason.split())  # one line
        raise StudyError(
            f"all {summary.failed} runs failed; first: {run}: {reason}"[:400],
            f"see `shoal study status {out_dir}`; fix the cause, then run again with --rerun-failed",
        )


def _kind(spec_path: Path) -> str:
    import tomllib

    try:
        doc = tomllib.loads(spec_path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not TOML
        return "virtual"  # load_spec reports the real problem
    cluster = doc.get("cluster")
    return str(cluster.get("kind", "virtual")) if isinstance(cluster, dict) else "virtual"


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
def report(out_dir: Path) -> None:
    """Write DIR/report.md and DIR/report.html (with plots) and print the answers."""
    from shoal.study.report import write_report

    print_report(write_report(out_dir), out_dir)


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
    from shoal.study.report import compare_dirs

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
