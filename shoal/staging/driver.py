"""The submit side of image distribution: allocation, collective steps, the agent on every node.

``distribute`` stages an image on every node of an allocation: it publishes the node agent bundle
to the store, runs ``check`` on every node for methods with a collective step (so a node without
space or privilege fails before anything is copied), runs the collective step (``sbcast`` from the
submit side), then ``stage`` (one task per node, one JSON record each), optionally ``verify``.
A node that reports no record or a failed one is named in a DistError; the other nodes are
cleaned up first. Every Slurm command is bounded by a timeout.

``run_in_image`` is ``shoal run``: allocate (or use the current allocation), distribute, run the
command with ``srun ch-run STAGED -- CMD``, clean up, release the allocation.

Where Slurm is: ``Site`` holds the argv prefix for Slurm commands (empty on a real site; for a
virtual cluster the controller's namespaces, from shoal.cluster.enter.slurm_prefix) and where
the image store is for this process, for the nodes and for the Slurm client commands.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal import names, paths
from shoal.bundle import publish
from shoal.cluster.enter import slurm_prefix
from shoal.errors import DistError, ImageError, SlurmError
from shoal.runner import run
from shoal.slurm.client import Job, JobState, SlurmClient
from shoal.staging.base import EXPORTS, Context, Method
from shoal.staging.jobstep import (
    BCAST_CHUNK as BCAST_CHUNK,  # the default, for callers
)
from shoal.staging.jobstep import (
    BCAST_FANOUT,
    BCAST_GRACE,
    bcast_args,
    bcast_env,
    bcast_failures,
    run_agent,
)
from shoal.staging.jobstep import parse_records as parse_records  # the records format, for callers
from shoal.staging.privileged import stage_comment
from shoal.staging.registry import get_method

DEFAULT_TIMEOUT = 600.0
SUBMIT_TIMEOUT = 60.0
START_TIMEOUT = 300.0
EPILOG_TIMEOUT = 60.0
# sbcast's default fan-out is 8; exposed because question 5 of the study is about it
DEFAULT_FANOUT = 8


@dataclass(frozen=True)
class Site:
    """How to reach Slurm, and the image store as seen from here, the nodes and the submit side."""

    prefix: tuple[str, ...]
    store_local: Path
    store_nodes: str
    store_submit: str
    cluster: str | None = None

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, *args]


def site_for(cluster: str | None) -> Site:
    """The Slurm on PATH (a real site), or virtual cluster NAME (the one place that knows how)."""
    store = paths.store_root()
    if cluster is None:
        return Site((), store, str(store), str(store))
    prefix = slurm_prefix(cluster)
    # the controller and the nodes both see the host's store at /pfs/store
    return Site(tuple(prefix), store, paths.CLUSTER_STORE_PATH, paths.CLUSTER_STORE_PATH, cluster)


@dataclass
class Allocation:
    job: str
    nodes: list[str]
    owned: bool  # created by us: we release it


@dataclass
class DistResult:
    job: str
    method: str
    image: str
    nodes: list[str]
    records: dict[str, dict[str, Any]]  # node -> its stage record (verify merged in)
    failed: dict[str, str]  # node -> why
    seconds: float  # wall time on the submit side, first step to last record
    collective_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def staged_path(self) -> str:
        paths_ = {r.get("staged") for r in self.records.values() if r.get("ok")}
        if len(paths_) != 1:
            raise DistError(f"nodes staged the image at different paths: {sorted(map(str, paths_))}")
        return str(paths_.pop())

    def json_lines(self) -> list[str]:
        out = []
        for node in self.nodes:
            rec = dict(self.records.get(node) or {"node": node, "ok": False})
            rec.setdefault("method", self.method)
            rec.setdefault("image", self.image)
            rec["job"] = self.job
            rec["ok"] = node not in self.failed and bool(rec.get("ok"))
            if node in self.failed:
                rec["error"] = self.failed[node]
            rec["driver_seconds"] = round(self.seconds, 6)
            rec["collective_seconds"] = self.collective_seconds
            rec["nodes"] = len(self.nodes)
            out.append(json.dumps(rec, sort_keys=True))
        return out


# ---- allocation --------------------------------------------------------------------------------


def current_allocation(site: Site, job: str | None = None) -> Allocation | None:
    """The allocation this process runs in ($SLURM_JOB_ID, real sites), or job JOB."""
    if job is None and site.cluster is None:
        job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    return Allocation(job, job_nodes(site, job), owned=False)


def _queued_job(site: Site, job: str) -> Job | None:
    """Job JOB as squeue reports it (None once slurmctld has forgotten it)."""
    jobs = SlurmClient(site.prefix, timeout=SUBMIT_TIMEOUT).queue()
    return next((j for j in jobs if str(j.job_id) == job), None)


def job_nodes(site: Site, job: str) -> list[str]:
    j = _queued_job(site, job)
    if j is None or j.state is not JobState.RUNNING or not j.nodes:
        shown = f"{j.state} {j.node_list}".strip() if j is not None else "not found"
        raise SlurmError(f"job {job} is not running ({shown})",
                         "start shoal inside a running allocation or let it allocate")
    return list(j.nodes)


def allocate(site: Site, nodes: int, *, time_limit: str, before_start: Callable[[str], None]
             | None = None, partition: str | None = None, comment: str | None = None,
             sbatch_args: Sequence[str] = ()) -> Allocation:
    """Submit a placeholder job of NODES nodes held, call before_start(jobid), release, wait.

    COMMENT is the job's request to shoal's Prolog (shoal.staging.privileged.stage_comment):
    slurmctld keeps it in the job record, so the Prolog (root) trusts it as the job user's own
    request. --no-kill keeps the allocation when a node dies, so the driver can still clean up
    the others. sbatch_args are the site's own options (--account, --qos, --constraint,
    --reservation, ...), placed after shoal's so that they win where both set one.
    """
    args = ["--hold", "--no-kill", f"--nodes={nodes}", "--ntasks-per-node=1", f"--time={time_limit}",
            "--job-name=shoal", "--output=/dev/null", "--error=/dev/null"]
    if partition:
        args.append(f"--partition={partition}")
    if comment:
        args.append(f"--comment={comment}")
    args += sbatch_args
    client = SlurmClient(site.prefix, timeout=SUBMIT_TIMEOUT)
    job = str(client.submit_command("exec sleep 2147483647", args))
    try:
        if before_start is not None:
            before_start(job)
        client.release(int(job))
        deadline = time.monotonic() + START_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            j = _queued_job(site, job)
            state = str(j.state) if j is not None else "GONE"
            if j is not None and j.state is JobState.RUNNING and j.nodes:
                return Allocation(job, list(j.nodes), owned=True)
            if j is None or j.state.terminal:
                break
            time.sleep(0.5)
        raise SlurmError(f"job {job} did not start within {START_TIMEOUT:g} s (state {state})",
                         "check sinfo: are enough nodes idle?")
    except BaseException:
        release(site, job)
        raise


def release(site: Site, job: str) -> None:
    SlurmClient(site.prefix, timeout=SUBMIT_TIMEOUT).cancel([int(job)])


def wait_released(site: Site, job: str, timeout: float = EPILOG_TIMEOUT) -> None:
    """Wait until JOB has left the nodes: its Epilog (root) undoes the Prolog's mounts, so a
    `shoal run` that returns leaves no mount or loop device behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(site.argv("squeue", "-h", "-j", job, "-o", "%t"), timeout=SUBMIT_TIMEOUT,
                  check=False)
        if out.returncode != 0 or out.stdout.strip() in ("", "CD", "CA", "F", "TO"):
            return
        time.sleep(0.2)


# ---- steps -------------------------------------------------------------------------------------


def srun_argv(site: Site, alloc: Allocation, nodes: Sequence[str], *cmd: str) -> list[str]:
    # --mpi=none: shoal's own steps are not MPI, whatever the caller's SLURM_MPI_TYPE says (the
    # login environment sets pmix for users' MPI; a PMIx server per step costs 2.4x the CPU)
    return site.argv(
        "srun", f"--jobid={alloc.job}", "--overlap", f"--nodes={len(nodes)}",
        f"--ntasks={len(nodes)}", "--ntasks-per-node=1", f"--nodelist={','.join(nodes)}",
        "--kill-on-bad-exit=0", "--mpi=none", *cmd,
    )


def agent_step(site: Site, alloc: Allocation, nodes: Sequence[str], agent: str, *args: str,
               timeout: float, env: dict[str, str] | None = None
               ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run the agent once per node; return (records by node, failures by node)."""
    # --label: records longer than srun's 1 KiB messages can be put together again (unlabel)
    argv = srun_argv(site, alloc, nodes, "--label", "python3", agent, "--store",
                     site.store_nodes, *args)
    if env and site.prefix:
        # the virtual cluster's prefix starts the command with a clean environment (`env -`):
        # hand the variables to srun through `env`; srun passes them on to every task
        n = len(site.prefix)
        argv = [*argv[:n], "env", *[f"{k}={v}" for k, v in env.items()], *argv[n:]]
        env = None
    records, failed, _ = run_agent(argv, list(nodes), timeout, f"node agent {args[0]}", env=env)
    return records, failed


def sbcast(site: Site, alloc: Allocation, src: str, dest: str, *, fanout: int, compress: bool,
           timeout: float) -> float:
    argv = ["sbcast", f"--jobid={alloc.job}", "-f", f"--fanout={fanout}"]
    if compress:
        argv.append("--compress")
    t0 = time.monotonic()
    run(site.argv(*argv, src, dest), timeout=timeout, what="sbcast",
        hint="is the file readable on the submit side and /tmp writable on the nodes?")
    return time.monotonic() - t0


def check_image(site: Site, image: str, method: Method | None = None) -> None:
    """IMAGE is in the store and, for a method that stages one of its files, that file is what
    the manifest says: a corrupted SquashFS mounts fine and a job would run in it."""
    names.image_name(image)
    if not (site.store_local / image / "manifest.json").is_file():
        known = sorted(p.parent.name for p in site.store_local.glob("*/manifest.json"))
        raise DistError(f"image {image!r} is not in the store {site.store_local}",
                        f"known: {', '.join(known) or 'none'}; export it: shoal image export")
    if method is not None and method.artifact in ("tar", "sqfs"):
        from shoal.images.store import ExportFormat, checked_export

        try:
            checked_export(image, ExportFormat(EXPORTS[method.artifact]), site.store_local)
        except ImageError as exc:
            raise DistError(f"{method.name} will not stage {image!r}: {exc.message}", exc.hint) from None


def prepare(cluster: str | None, method: Method, image: str, store: Path) -> dict[str, Any] | None:
    """The method's declared preparation, before anything is timed: `registry-push` fills the
    virtual cluster's registry with the store's image (idempotent; on a real site the site's
    registry is filled by its admin, and a node missing the image says so)."""
    if method.prepare != "registry-push" or cluster is None:
        return None
    from shoal.cluster import storage
    from shoal.cluster.state import ClusterDir

    state = ClusterDir(cluster).load()
    if state.storage != "sshfs":
        raise DistError(f"method {method.name} needs the storage host's registry, and cluster "
                        f"{cluster!r} has none (storage = {state.storage!r})",
                        f"boot it with: shoal cluster up --name {cluster} --storage sshfs")
    agent = store / ".shoal" / publish(store)
    return dict(storage.push_image(state.netns("storage"), store, agent, image))


def distribute(
    site: Site,
    alloc: Allocation,
    method_name: str,
    image: str,
    *,
    verify: bool = False,
    fanout: int | None = None,
    compress: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    chunk: int = BCAST_CHUNK,
    rate: float = 0.0,
) -> DistResult:
    """Stage IMAGE with METHOD on every node of ALLOC; clean up everywhere if a node fails.

    fanout: sbcast's (default 8) or bcast's (default 1, a chain); chunk and rate: bcast's chunk
    size and a pacing of the root's reads (bytes/s, 0 = none; tests use it to catch a broadcast
    in the middle).
    """
    method = get_method(method_name)
    check_image(site, image, method)
    nodes = list(alloc.nodes)
    if site.cluster is not None:
        # a virtual cluster's nodes keep their copies in this one machine's memory
        from shoal.cluster.state import ClusterDir
        from shoal.staging.fit import check_node_local_copies

        tmpfs = ClusterDir(site.cluster).load().config.get("tmpfs_size")
        check_node_local_copies(method.name, image, len(nodes), site.store_local,
                                tmpfs if isinstance(tmpfs, str) else None)
    agent = f"{site.store_nodes}/.shoal/{publish(site.store_local)}"
    common = ("--job", alloc.job, "--image", image)
    collective_s: float | None = None
    failed: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    pushed = prepare(site.cluster, method, image, site.store_local)
    if pushed is not None:
        extra["registry_push"] = pushed
    t0 = time.monotonic()  # preparation is not staging
    if method.collective:
        records, failed = agent_step(site, alloc, nodes, agent, "check", *common, "--method",
                                     method.name, timeout=timeout)
        if not failed and method.collective == "bcast":
            t_b = time.monotonic()
            brecs, failed = agent_step(
                site, alloc, nodes, agent,
                *bcast_args(alloc.job, image, method.name, nodes,
                            fanout=fanout or BCAST_FANOUT, chunk=chunk,
                            timeout=max(10.0, timeout - BCAST_GRACE), rate=rate),
                timeout=timeout, env=bcast_env())
            collective_s = time.monotonic() - t_b
            failed = bcast_failures(brecs, failed)
            extra["bcast"] = brecs
            if failed:
                records = {n: brecs.get(n) or records.get(n) or {"node": n} for n in nodes}
        elif not failed:
            collective_s = _collective(site, alloc, method, image, fanout or DEFAULT_FANOUT,
                                       compress, timeout)
    if not failed:
        records, failed = agent_step(site, alloc, nodes, agent, "stage", *common, "--method",
                                     method.name, timeout=timeout)
    if verify and not failed:
        vrecs, vfailed = agent_step(site, alloc, nodes, agent, "verify", *common, timeout=timeout)
        for node, vrec in vrecs.items():
            if node in records:
                records[node]["verify"] = {k: vrec.get(k) for k in ("ok", "digest", "seconds")}
        failed.update({n: f"verify: {why}" for n, why in vfailed.items()})
    seconds = time.monotonic() - t0
    result = DistResult(alloc.job, method.name, image, nodes, records, failed, seconds,
                        collective_s, extra)
    if failed:
        # clean the nodes that answer; a dead node is the Epilog's (or its reboot's) business.
        # A broadcast whose agent was killed on a node left a partial copy there: every node
        # that answered `check` is cleaned.
        alive = [n for n in nodes if n in records] or nodes
        cleanup(site, alloc, image, nodes=alive, timeout=timeout, raise_on_left=False)
    return result


def _collective(site: Site, alloc: Allocation, method: Method, image: str, fanout: int,
                compress: bool, timeout: float) -> float:
    if method.collective != "sbcast":
        raise DistError(f"method {method.name} asks for unknown collective {method.collective!r}")
    ctx_submit = Context(alloc.job, image, site.store_submit)
    ctx_local = Context(alloc.job, image, str(site.store_local))
    # the file name comes from the manifest read here; the path is the submit side's view
    name = ctx_local.artifact_name(method.artifact)
    src = os.path.join(ctx_submit.image_store, name)
    dest = ctx_submit.local_artifact(method.artifact)
    return sbcast(site, alloc, src, dest, fanout=fanout, compress=compress, timeout=timeout)


def cleanup(site: Site, alloc: Allocation, image: str | None = None, *,
            nodes: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
            raise_on_left: bool = True) -> dict[str, dict[str, Any]]:
    """Undo staging on the nodes (one image, or everything of the job); name what is left."""
    agent = f"{site.store_nodes}/.shoal/{publish(site.store_local)}"
    targets = list(nodes or alloc.nodes)
    args = ["cleanup", "--job", alloc.job] + (["--image", image] if image else [])
    records, failed = agent_step(site, alloc, targets, agent, *args, timeout=timeout)
    if failed and raise_on_left:
        raise DistError(
            "cleanup failed on " + "; ".join(f"{n}: {why}" for n, why in sorted(failed.items())),
            "the job's Epilog removes what is left when the job ends",
        )
    return records


def raise_if_failed(result: DistResult) -> None:
    if result.failed:
        names = ", ".join(sorted(result.failed))
        first = next(iter(sorted(result.failed.items())))
        raise DistError(
            f"staging {result.image} with {result.method} failed on {len(result.failed)} of "
            f"{len(result.nodes)} nodes ({names}): {first[0]}: {first[1]}",
            "the other nodes were cleaned up; see the per-node table above",
        )


@dataclass
class RunResult:
    dist: DistResult
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cleanup: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> cleanup record


def run_in_image(
    site: Site,
    image: str,
    method_name: str,
    command: Sequence[str],
    *,
    nodes: int | None = None,
    ntasks_per_node: int = 1,
    srun_args: Sequence[str] = (),
    time_limit: str = "60",
    verify: bool = False,
    fanout: int | None = None,
    compress: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    on_staged: Callable[[DistResult], None] | None = None,
    sbatch_args: Sequence[str] = (),
    partition: str | None = None,
    chunk: int = BCAST_CHUNK,
) -> RunResult:
    """`shoal run`: allocate or reuse, stage, srun ch-run STAGED -- CMD on every node, clean up."""
    method = get_method(method_name)
    check_image(site, image, method)
    alloc = current_allocation(site) if nodes is None else None
    if alloc is None:
        # mounts are the Prolog's (root) job, asked for in the job's comment
        comment = stage_comment(method.name, image) if method.prolog or method.privileged else None
        alloc = allocate(site, nodes or 1, time_limit=time_limit, partition=partition,
                         comment=comment, sbatch_args=sbatch_args)
    staged_ok = False
    try:
        result = distribute(site, alloc, method.name, image, verify=verify, fanout=fanout,
                            compress=compress, timeout=timeout, chunk=chunk)
        if on_staged is not None:
            on_staged(result)
        raise_if_failed(result)
        staged_ok = True
        staged = result.staged_path()
        n = len(alloc.nodes)
        # a virtual cluster's MpiDefault is none (shoal/cluster/slurmconf.py): the command may
        # be an MPI program, so it gets PMIx unless the caller chose
        mpi = ["--mpi=pmix"] if site.cluster is not None and not any(
            a == "--mpi" or a.startswith("--mpi=") for a in srun_args) else []
        argv = site.argv(
            "srun", f"--jobid={alloc.job}", "--overlap", f"--nodes={n}",
            f"--ntasks={n * ntasks_per_node}", f"--ntasks-per-node={ntasks_per_node}",
            *mpi, *srun_args, "ch-run", staged, "--", *command,
        )
        t0 = time.monotonic()
        # ch-run refuses to start without $USER (daemons and CI may not set it)
        env = None if "USER" in os.environ else {"USER": "root" if os.geteuid() == 0 else "user"}
        done = run(argv, timeout=timeout, check=False, what="srun ch-run", env=env)
        ran = RunResult(result, done.returncode, done.stdout, done.stderr,
                        time.monotonic() - t0)
        staged_ok = False
        # our own allocation: everything of the job goes; someone else's: only this image
        ran.cleanup = cleanup(site, alloc, None if alloc.owned else image, timeout=timeout)
        return ran
    finally:
        if staged_ok:  # the command failed or timed out: still undo the staging
            cleanup(site, alloc, image, timeout=timeout, raise_on_left=False)
        if alloc.owned:
            release(site, alloc.job)
            wait_released(site, alloc.job)
