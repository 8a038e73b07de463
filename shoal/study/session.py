"""Running a study spec end to end: the orchestration behind `shoal study run` and the demo.

Load and validate the spec, expand the matrix, connect to the spec's cluster (a virtual cluster
made by `shoal cluster up`, or an existing site reached through its Slurm clients), put every image
into the store, publish the node agent bundle, then hand the experiments to the StudyRunner. The
CLI only parses its options, calls ``run_study`` and prints the outcome.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from shoal import paths
from shoal.errors import StudyError
from shoal.fsutil import makedirs_nofollow
from shoal.slurm.client import SlurmClient
from shoal.study.db import DB_NAME, StudyDB
from shoal.study.jobscript import JobContext
from shoal.study.matrix import Experiment, expand
from shoal.study.runner import StudyRunner, Summary, collect_environment, dry_run
from shoal.study.spec import StudySpec, load_spec


@dataclasses.dataclass
class ClusterLink:
    """How this process reaches the spec's cluster and where the jobs' files are."""

    client: SlurmClient
    ctx: JobContext
    host_logs: Path
    network_params: dict[str, object]
    store_local: Path  # the image store as this process sees it
    extra_env: dict[str, object] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What `run_study` did: the results directory, this call's summary and the database's counts
    (both None for a dry run)."""

    study_name: str
    out_dir: Path
    summary: Summary | None = None
    counts: dict[str, int] | None = None
    cluster: str | None = None  # the virtual cluster's name (None: an existing site)
    booted: bool = False  # this call booted the spec's cluster


def method_names() -> tuple[str, ...]:
    """Names of the registered distribution methods (what a spec may ask for)."""
    from shoal.staging.registry import method_names as registered

    return tuple(registered())


def spec_kind(spec_path: Path) -> str:
    """The spec's cluster kind ("virtual" or "existing"), read before full validation."""
    try:
        doc = tomllib.loads(spec_path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not TOML
        return "virtual"  # load_spec reports the real problem
    cluster = doc.get("cluster")
    return str(cluster.get("kind", "virtual")) if isinstance(cluster, dict) else "virtual"


def load_run_spec(spec_path: Path, cluster_name: str | None = None) -> StudySpec:
    """The validated spec (methods and, for a virtual cluster, network profiles checked)."""
    from shoal.cluster.config import NETWORK_PROFILES

    networks = set(NETWORK_PROFILES) if spec_kind(spec_path) == "virtual" else None
    spec = load_spec(spec_path, methods=method_names(), networks=networks)
    if cluster_name:
        spec = dataclasses.replace(spec, cluster=dataclasses.replace(spec.cluster, name=cluster_name))
    return spec


def _sbatch_args(spec: StudySpec) -> tuple[str, ...]:
    """The site's sbatch options (/etc/shoal/shoal.toml), then the spec's (which win)."""
    from shoal import siteconfig

    return (*siteconfig.load().sbatch_args, *spec.sbatch_args)


class ClusterNotUp(StudyError):
    """The spec's virtual cluster is not running (`shoal study run` boots it)."""


def boot_spec_cluster(spec: StudySpec, console: Console) -> None:
    """Boot the virtual cluster the spec describes (name, nodes, network, storage)."""
    from shoal.cluster import manager
    from shoal.cluster.config import validate
    from shoal.cluster.state import ClusterDir

    c = spec.cluster
    cfg = validate({"name": c.name, "nodes": c.nodes or 4, "network": c.network or "none",
                    **({"storage": c.storage} if c.storage else {})}, f"{spec.path} [cluster]")
    if ClusterDir(c.name).exists():
        manager.down(c.name)  # what a crashed or stopped cluster of this name left behind
    with console.status(f"cluster {c.name!r} is not up: booting it ({cfg.nodes} nodes, network "
                        f"{cfg.network}, storage {cfg.storage}) ..."):
        res = manager.up(cfg)
    console.print(f"booted cluster {c.name!r} for this study: {len(res.state.nodes)} nodes idle "
                  f"in {res.boot_seconds:.1f} s")


def link_cluster(spec: StudySpec, out: Path, *, connect: bool) -> ClusterLink:
    """The Slurm client and job paths for the spec's cluster. With connect=False (dry run) the
    cluster is not asked anything."""
    if spec.cluster.kind == "existing":
        # a site: the results directory and the store must be on file systems the nodes share,
        # at the same paths as here
        store = Path(spec.cluster.store or paths.store_root())
        logs = out.resolve() / "logs"
        ctx = JobContext(logs_dir=str(logs), agent=f"{store}/.shoal/agent.pyz",
                         store_dir=str(store), partition=spec.partition,
                         time_limit_s=spec.timeout, extra_sbatch=_sbatch_args(spec))
        return ClusterLink(SlurmClient(), ctx, logs, {}, store)
    from shoal.cluster.enter import slurm_prefix
    from shoal.cluster.state import ClusterDir

    cdir = ClusterDir(spec.cluster.name)
    # nodes see the cluster's pfs directory as /pfs; one log directory per results directory
    tag = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    rel = f"shoal-study/{spec.name}-{tag}"
    ctx = JobContext(logs_dir=f"/pfs/{rel}", agent=f"{paths.CLUSTER_STORE_PATH}/.shoal/agent.pyz",
                     store_dir=paths.CLUSTER_STORE_PATH, partition=spec.partition,
                     time_limit_s=spec.timeout, extra_sbatch=_sbatch_args(spec))
    if not connect:
        return ClusterLink(SlurmClient(), ctx, cdir.pfs / rel, {}, paths.store_root())
    if not cdir.exists() or cdir.load().phase != "up":
        raise ClusterNotUp(
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
    # root writes there, below the world-writable /pfs: made without following a user's symlink
    host_logs = makedirs_nofollow(cdir.pfs, rel)
    return ClusterLink(client, ctx, host_logs, dict(state.network), paths.store_root(), extra)


def prepare_images(spec: StudySpec, store: Path, console: Console) -> dict[str, str]:
    """Every image of the spec in the store (built and exported for a virtual cluster, only
    checked on an existing one); returns image -> tree digest."""
    from shoal.images.catalog import ensure_in_store

    digests: dict[str, str] = {}
    for name in spec.images:
        manifest = store / name / "manifest.json"
        if spec.cluster.kind == "virtual":
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
        _check_exports(spec, name, store, console)
    return digests


def _check_exports(spec: StudySpec, image: str, store: Path, console: Console) -> None:
    """The files the spec's methods stage are what the manifest says: every job of a corrupted
    SquashFS would otherwise mount it and run (shoal.images.store.checked_export, cached)."""
    from shoal.errors import ImageError
    from shoal.images.store import ExportFormat, checked_export
    from shoal.staging.base import EXPORTS
    from shoal.staging.registry import get_method

    kinds = sorted({get_method(m).artifact for m in spec.methods} & {"tar", "sqfs"})
    for kind in kinds:
        try:
            with console.status(f"image {image}: checking its {EXPORTS[kind]} export"):
                checked_export(image, ExportFormat(EXPORTS[kind]), store)
        except ImageError as exc:
            raise StudyError(exc.message, exc.hint) from None


def via_prolog(spec: StudySpec) -> bool:
    """Whether mounts go through shoal's Prolog (job comment) rather than the job's own steps.

    Always on a virtual cluster: its node root may not mount (docs/SECURITY.md)."""
    return (spec.cluster.kind == "virtual" or spec.privileged == "prolog"
            or (spec.privileged == "auto" and os.geteuid() != 0))


def check_memory(exps: Sequence[Experiment], store: Path, tmpfs_size: object) -> None:
    """Refuse, before anything is submitted, an experiment whose node-local copies (untar,
    sbcast) cannot fit: every node of a virtual cluster keeps its copy in this machine's memory."""
    from shoal.staging.fit import check_node_local_copies

    biggest: dict[tuple[str, str], int] = {}
    for e in exps:
        biggest[(e.method, e.image)] = max(e.nodes, biggest.get((e.method, e.image), 0))
    for (method, image), nodes in sorted(biggest.items()):
        check_node_local_copies(method, image, nodes, store,
                                tmpfs_size if isinstance(tmpfs_size, str) else None)


def run_study(spec_path: Path, out: Path | None, cluster_name: str | None = None,
              dry: bool = False, rerun_failed: bool = False,
              console: Console | None = None, *, boot: bool = False,
              keep_cluster: bool = True) -> RunOutcome:
    """`shoal study run`: run (or resume) the study in spec_path; see the module doc.

    boot: a virtual cluster that is not up is booted from the spec's [cluster] table, and taken
    down at the end (also on failure or Ctrl-C) unless keep_cluster."""
    console = console or Console(highlight=False)
    spec = load_run_spec(spec_path, cluster_name)
    booted = False
    try:
        link = link_cluster(spec, out or Path("results") / spec.name, connect=not dry)
    except ClusterNotUp:
        if not boot:
            raise
        boot_spec_cluster(spec, console)
        booted = True
        link = link_cluster(spec, out or Path("results") / spec.name, connect=True)
    try:
        res = _run_linked(spec, link, out, dry, rerun_failed, console)
    finally:
        if booted and not keep_cluster:
            from shoal.cluster import manager

            with console.status(f"taking cluster {spec.cluster.name!r} down (booted for this "
                                "study; --keep-cluster keeps it) ..."):
                left = manager.down(spec.cluster.name)
            console.print(f"cluster {spec.cluster.name!r} is down" if not left else
                          f"[red]cluster {spec.cluster.name!r}: could not remove {left}[/]")
    return dataclasses.replace(
        res, cluster=spec.cluster.name if spec.cluster.kind == "virtual" else None, booted=booted)


def _run_linked(spec: StudySpec, link: ClusterLink, out: Path | None, dry: bool,
                rerun_failed: bool, console: Console) -> RunOutcome:
    from shoal.bundle import publish

    exps = expand(spec)
    for msg in spec.adjustments():
        console.print(f"[yellow]note:[/] {msg}")
    out_dir = out or Path("results") / spec.name
    if dry:
        db = StudyDB.in_dir(out_dir, create=False) if (out_dir / DB_NAME).exists() else None
        try:
            dry_run(spec, exps, db, link.ctx, out_dir, console, rerun_failed)
        finally:
            if db is not None:
                db.close()
        return RunOutcome(spec.name, out_dir)
    digests = prepare_images(spec, link.store_local, console)
    if spec.cluster.kind == "virtual":
        check_memory(exps, link.store_local, link.extra_env.get("tmpfs_size"))
    # the bundle's name carries its hash: jobs of an older shoal keep running their own copy
    agent = f"{link.ctx.store_dir}/.shoal/{publish(link.store_local)}"
    ctx = dataclasses.replace(link.ctx, agent=agent)
    if spec.cluster.kind == "virtual":
        from shoal.staging.driver import prepare
        from shoal.staging.registry import get_method

        # methods' preparation (the registry filled with the images) before any job is timed
        for method, image in sorted({(e.method, e.image) for e in exps}):
            prepare(spec.cluster.name, get_method(method), image, link.store_local)
    with StudyDB.in_dir(out_dir) as db:
        runner = StudyRunner(spec, exps, db, link.client, out_dir, ctx,
                             host_logs=link.host_logs, console=console,
                             rerun_failed=rerun_failed,
                             via_prolog=via_prolog(spec))
        env = collect_environment(link.client, spec, network_params=link.network_params,
                                  image_digests=digests)
        env = dataclasses.replace(
            env, extra={**link.extra_env, "agent": agent, "privileged": spec.privileged,
                        "seed": spec.seed, "cache": spec.cache, "warmup": spec.warmup,
                        "concurrency": spec.effective_concurrency, "margin": spec.margin},
            # what the cluster runs, not only what the spec asked for
            network_profile=str(link.network_params.get("name") or spec.cluster.network))
        summary = runner.execute(env)
        counts = db.state_counts()
    return RunOutcome(spec.name, out_dir, summary, counts)
