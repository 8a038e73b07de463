"""The execution phase of a study: plan, submit, monitor, collect, in that order, resumable.

``plan`` compares the expanded runs with the database: completed runs are skipped, failed ones
too unless ``rerun_failed``, runs a killed harness left queued or running are re-attached (their
jobs are monitored, not submitted again). ``StudyRunner.execute`` then keeps at most
``concurrency`` jobs in Slurm: for each run it writes the batch script into OUT/scripts, writes
the run row (state SUBMITTING) before sbatch so no job goes unrecorded, submits, polls with
squeue/sacct and backoff, and when the job ends reads the per-node records from its output file
and stores state + records in one transaction. A failed job is recorded with its reason and the
study goes on. Ctrl-C cancels the study's jobs (scancel), marks their runs INTERRUPTED, and
re-raises. ``dry_run`` is a branch here: it plans and renders scripts but writes nothing.

Mount methods (kernel and FUSE SquashFS) need root on the nodes, which neither a site's user nor
a virtual cluster's confined node root has: with ``via_prolog`` a run of such a method is submitted
with the job comment ``shoal-stage=METHOD:IMAGE`` (shoal.staging.privileged); shoal's Prolog
(root) mounts before the job starts and the job's stage step reports the Prolog's record.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import platform
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shoal import runner as cmd
from shoal.errors import CommandError, ShoalError, StudyError
from shoal.paths import REPO_ROOT
from shoal.slurm.client import Backoff, Job, JobState, SlurmVersion
from shoal.staging.record import END_MARK
from shoal.study.db import Environment, RunRow, RunState, StudyDB
from shoal.study.jobscript import JobContext, job_name, output_name, parse_output, render_script
from shoal.study.matrix import Experiment, RunKey, runs
from shoal.study.spec import StudySpec

# Pending reasons that will not clear by waiting: the job can never start as asked.
HOPELESS_PENDING = (
    "PartitionNodeLimit", "PartitionConfig", "BadConstraints", "InvalidQOS", "InvalidAccount",
    "PartitionDown", "PartitionInactive",
)
# Other pending reasons (ReqNodeNotAvail: drained or down nodes) may clear; a job pending this
# long while none of ours runs is given up, so a broken node cannot hang the study.
PENDING_LIMIT_MIN_S = 300.0
MAX_SUBMIT_FAILURES = 3  # in a row: the cluster, not the experiment, is broken
MISSING_POLLS = 3  # polls a job may be absent from squeue and sacct before we stop waiting
RUN_GRACE_S = 60.0  # beyond the Slurm time limit before the harness cancels a job itself
# Between polls the harness watches the jobs' output files (shared storage, a stat per slice):
# the batch script's last line means the job is ending, so the next poll comes at once instead
# of after the backoff; collection then lags the job's end by a fraction of a second.
WAKE_SLICE_S = 0.1
END_REPOLL_S = 0.2
DROP_CACHES = "/proc/sys/vm/drop_caches"


class SlurmLike(Protocol):
    """What the runner needs from shoal.slurm.SlurmClient (tests pass a fake)."""

    def submit(self, script: str | Path, args: Sequence[str] = ()) -> int: ...
    def job_states(self, job_ids: Iterable[int]) -> dict[int, Job]: ...
    def cancel(self, job_ids: Iterable[int], *, signal: str | None = None) -> None: ...
    def cancel_name(self, name: str) -> None: ...
    def release(self, job_id: int) -> None: ...
    def version(self) -> SlurmVersion: ...


@dataclass
class Plan:
    todo: list[RunKey]
    reattach: list[RunRow]
    completed: int
    skipped_failed: int
    total: int


@dataclass
class _Active:
    row: RunRow
    key: RunKey
    host_output: Path
    job_id: int
    seen_state: str | None = None
    started: float | None = None  # monotonic time the job was first seen running
    pending_since: float | None = None
    missing: int = 0
    output_size: int = -1
    end_seen: bool = False  # the batch script's last line is in the output file
    concurrency: int = 1  # most jobs of the study in Slurm at once during this run's life
    cache: str = "warm"  # "cold" when the page caches were dropped just before submission
    drop_seconds: float | None = None  # how long dropping them took (harness time)


@dataclass
class Summary:
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    reattached: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run name, reason)


def plan(spec: StudySpec, experiments: Sequence[Experiment], db: StudyDB | None,
         rerun_failed: bool = False) -> Plan:
    keys = runs(experiments, lambda e: spec.repetitions_of(e.factors), spec.seed, spec.warmup)
    if db is None:
        return Plan(keys, [], 0, 0, len(keys))
    done = db.completed_keys()
    failed = db.failed_keys()
    active = {(r.experiment_id, r.rep): r for r in db.active_runs()}
    reattach = [r for r in active.values() if r.job_id is not None]
    todo: list[RunKey] = []
    skipped_failed = 0
    for k in keys:
        kk = (k.experiment.id, k.rep)
        if kk in done:
            continue
        if kk in failed and not rerun_failed:
            skipped_failed += 1
            continue
        if kk in active and active[kk].job_id is not None:
            continue
        todo.append(k)
    completed = sum((k.experiment.id, k.rep) in done for k in keys)
    return Plan(todo, reattach, completed, skipped_failed, len(keys))


def script_name(key: RunKey, attempt: int) -> str:
    return f"{key.name}.sh" if attempt == 0 else f"{key.name}-a{attempt}.sh"


def collect_environment(client: SlurmLike, spec: StudySpec, *,
                        network_params: dict[str, object] | None = None,
                        image_digests: dict[str, str] | None = None) -> Environment:
    try:
        slurm: str | None = client.version().release
    except ShoalError:
        slurm = None
    commit: str | None = None
    try:
        git = cmd.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], check=False,
                      timeout=10)
        if git.returncode == 0 and git.stdout.strip():
            commit = git.stdout.strip()
    except ShoalError:
        pass  # no git: the commit stays unknown
    return Environment(
        slurm_version=slurm,
        kernel=platform.release(),
        hostname=socket.gethostname(),
        cluster_kind=spec.cluster.kind,
        cluster_name=spec.cluster.name,
        network_profile=spec.cluster.network,
        network_params=network_params or {},
        image_digests=image_digests or {},
        git_commit=commit,
    )


class StudyRunner:
    def __init__(
        self,
        spec: StudySpec,
        experiments: Sequence[Experiment],
        db: StudyDB,
        client: SlurmLike,
        out_dir: Path,
        ctx: JobContext,
        *,
        host_logs: Path | None = None,
        console: Console | None = None,
        rerun_failed: bool = False,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        via_prolog: bool = False,
    ) -> None:
        self.spec = spec
        self.experiments = list(experiments)
        self.db = db
        self.client = client
        self.out = Path(out_dir)
        self.ctx = ctx
        # ctx.logs_dir as this process sees it (differs when the nodes see it under /pfs)
        self.host_logs = Path(host_logs) if host_logs is not None else self.out / "logs"
        self.console = console or Console()
        self.rerun_failed = rerun_failed
        self.backoff = backoff or Backoff(initial=0.5, factor=1.5, maximum=5.0)
        self.sleep = sleep
        self.clock = clock
        self.active: dict[int, _Active] = {}  # run id -> active run
        self.summary = Summary()
        self._submit_failures = 0
        self._drop_warned = False
        self._drop_seconds: float | None = None
        # mounts by shoal's Prolog (root), asked for in the job comment; else the job mounts
        self.via_prolog = via_prolog

    # -- phases ---------------------------------------------------------------------------------
    def execute(self, environment: Environment | None = None) -> Summary:
        study_id = self.db.ensure_study(self.spec, self.experiments)
        if environment is not None:
            self.db.record_environment(study_id, environment)
        self._forget_unsubmitted()
        p = plan(self.spec, self.experiments, self.db, self.rerun_failed)
        self.summary.skipped = p.completed + p.skipped_failed
        for d in (self.out / "scripts", self.out / "logs", self.host_logs):
            d.mkdir(parents=True, exist_ok=True)
        todo = collections.deque(p.todo)
        work = len(p.todo) + len(p.reattach)
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        task = progress.add_task(f"study {self.spec.name}", total=work, status="")
        try:
            with progress:
                for row in p.reattach:
                    self._reattach(row)
                while todo or self.active:
                    while todo and len(self.active) < self.spec.effective_concurrency:
                        self._submit(todo.popleft())
                    changed = self._poll()
                    s = self.summary
                    progress.update(
                        task, completed=s.completed + s.failed,
                        status=f"done {s.completed}  running {len(self.active)}  failed "
                               f"{s.failed}  skipped {s.skipped}")
                    if not self.active:
                        continue
                    if changed:
                        self.backoff.reset()
                    if any(a.end_seen for a in self.active.values()):
                        # a job printed its last line: Slurm reports it done within moments
                        self._wait(END_REPOLL_S)
                    else:
                        self._wait(self.backoff.next())
        except KeyboardInterrupt:
            self._interrupt()
            raise
        return self.summary

    def _forget_unsubmitted(self) -> None:
        """Rows a killed harness left in SUBMITTING have no job id we can follow: cancel any job
        by its name and mark them INTERRUPTED so plan() runs them again."""
        for row in self.db.active_runs():
            if row.job_id is None:
                key = self._key(row)
                if key is not None:
                    self.client.cancel_name(job_name(key, row.attempt))
                self.db.finish_run(row.id, RunState.INTERRUPTED,
                                   reason="harness stopped before sbatch answered")

    # -- submission -----------------------------------------------------------------------------
    def _drop_caches(self) -> str:
        """Cold run: drop the host's clean page cache, dentries and inodes (host-wide, so cold
        runs go one at a time); "warm" when it cannot (not root, not this host's nodes)."""
        if self.spec.cache != "cold":
            return "warm"
        t0 = time.monotonic()
        try:
            with open(DROP_CACHES, "w") as f:
                f.write("3\n")
            # harness time before the job: seconds when the machine had much cached since
            self._drop_seconds = round(time.monotonic() - t0, 3)
        except OSError as exc:
            if not self._drop_warned:
                self.console.log(f"[yellow]cannot drop the page caches ({exc.strerror}): runs "
                                 "are recorded as warm")
                self._drop_warned = True
            return "warm"
        return "cold"

    def _submit(self, key: RunKey) -> None:
        cache = self._drop_caches()
        attempt = self.db.next_attempt(key)
        script = self.out / "scripts" / script_name(key, attempt)
        script.write_text(render_script(key, self.ctx, attempt))
        host_output = self.host_logs / output_name(key, attempt)
        row = self.db.begin_run(key, script_path=str(script), output_path=str(host_output),
                                attempt=attempt)
        comment = self._prolog_comment(key)
        try:
            job_id = self.client.submit(script, [f"--comment={comment}"] if comment else [])
        except (CommandError, ShoalError) as exc:
            self._submit_failures += 1
            self._fail(row, key, f"sbatch: {exc.message}")
            if self._submit_failures >= MAX_SUBMIT_FAILURES:
                raise StudyError(
                    f"sbatch failed {self._submit_failures} times in a row: {exc.message}",
                    exc.hint or "check the cluster with `shoal cluster status`; the study "
                    "resumes where it stopped when run again") from None
            return
        self._submit_failures = 0
        self.db.update_run(row.id, state=RunState.SUBMITTED, job_id=job_id,
                           submit_time=time.time())
        self.active[row.id] = _Active(self.db.run(row.id), key, host_output, job_id,
                                      cache=cache,
                                      drop_seconds=self._drop_seconds if cache == "cold" else None)
        for act in self.active.values():
            act.concurrency = max(act.concurrency, len(self.active))

    def _prolog_comment(self, key: RunKey) -> str | None:
        """The job comment asking shoal's Prolog to mount the run's image, if it should."""
        if not self.via_prolog:
            return None
        from shoal.staging.privileged import stage_comment
        from shoal.staging.registry import get_method

        m = get_method(key.experiment.method)
        return stage_comment(m.name, key.experiment.image) if m.prolog or m.privileged else None

    def _reattach(self, row: RunRow) -> None:
        key = self._key(row)
        if key is None or row.job_id is None:
            return
        host_output = Path(row.output_path or self.host_logs / output_name(key, row.attempt))
        self.active[row.id] = _Active(row, key, host_output, row.job_id, row.state.value)
        self.summary.reattached += 1

    def _key(self, row: RunRow) -> RunKey | None:
        for e in self.experiments:
            if e.id == row.experiment_id:
                return RunKey(e, row.rep)
        return None

    # -- monitoring -----------------------------------------------------------------------------
    def _wait(self, seconds: float) -> None:
        """Sleep up to SECONDS, returning early when a job's output shows its end line."""
        if seconds <= 0:
            self.sleep(seconds)
            return
        waited = 0.0
        while waited < seconds:
            step = min(WAKE_SLICE_S, seconds - waited)
            self.sleep(step)
            waited += step
            if self._new_end_line():
                return

    def _new_end_line(self) -> bool:
        found = False
        for act in self.active.values():
            if act.end_seen:
                continue
            try:
                size = act.host_output.stat().st_size
            except OSError:
                continue
            if size == act.output_size:
                continue
            act.output_size = size
            with contextlib.suppress(OSError), open(act.host_output, "rb") as f:
                f.seek(max(0, size - 4096))
                if END_MARK.search(f.read().decode(errors="replace")):
                    act.end_seen = found = True
        return found

    def _poll(self) -> bool:
        if not self.active:
            return False
        try:
            states = self.client.job_states(a.job_id for a in self.active.values())
        except ShoalError as exc:
            # a slow or briefly unreachable controller is not a failed experiment: wait and retry
            self.console.log(f"[yellow]poll failed, retrying: {exc.message}")
            return False
        changed = False
        now = self.clock()
        for run_id, act in list(self.active.items()):
            job = states.get(act.job_id)
            if job is None:
                act.missing += 1
                if act.missing >= MISSING_POLLS:
                    self._finish(act, None)
                    changed = True
                continue
            act.missing = 0
            if job.state.terminal:
                self._finish(act, job)
                changed = True
                continue
            if job.state.value != act.seen_state:
                changed = True
                act.seen_state = job.state.value
                state = RunState.RUNNING if job.state is JobState.RUNNING else RunState.PENDING
                self.db.update_run(run_id, state=state, job_state=job.state.value,
                                   reason=job.reason or None, node_list=job.node_list or None,
                                   start_time=job.start_time)
            if job.state is JobState.RUNNING and act.started is None:
                act.started = now
            if job.state is JobState.PENDING and act.pending_since is None:
                act.pending_since = now
            limit = max(self.spec.timeout, PENDING_LIMIT_MIN_S)
            if job.state is JobState.PENDING and job.reason.startswith(HOPELESS_PENDING):
                self.client.cancel([act.job_id])
                self._finish(act, job, override=f"cannot start: pending for {job.reason}")
                changed = True
            elif (job.state is JobState.PENDING and act.pending_since is not None
                  and now - act.pending_since > limit
                  and not any(a.started for a in self.active.values())):
                self.client.cancel([act.job_id])
                self._finish(act, job, override=f"pending {now - act.pending_since:.0f} s "
                                                f"({job.reason}) with nothing of the study running")
                changed = True
            elif act.started is not None and now - act.started > self.spec.timeout + RUN_GRACE_S:
                self.client.cancel([act.job_id])
                self._finish(act, job, override=f"harness timeout after {self.spec.timeout:g} s")
                changed = True
        return changed

    def _finish(self, act: _Active, job: Job | None, override: str | None = None) -> None:
        """Collect the records of a finished (or given-up) job and store the run's final state."""
        del self.active[act.row.id]
        text = ""
        with contextlib.suppress(OSError):  # no file: reported below as a problem
            text = act.host_output.read_text(errors="replace")
            kept = self.out / "logs" / act.host_output.name
            if act.host_output.resolve() != kept.resolve():
                kept.write_text(text)  # the results directory keeps every job's output
        parsed = parse_output(text)
        # how the run was made, beside its figures: other jobs of the study at the same time,
        # cold or warm caches, warm-up (discarded by the report)
        how = {"concurrency": act.concurrency, "cache": act.cache,
               "warmup": act.key.rep < 0, "cache_drop_s": act.drop_seconds}
        parsed = dataclasses.replace(parsed, records=[
            dataclasses.replace(r, extra={**r.extra, **how}) for r in parsed.records])
        nodes = act.key.experiment.nodes
        bad = [r for r in parsed.records if not r.ok]
        problems: list[str] = []
        notes: list[str] = []
        records_ok = len(parsed.records) == nodes and not bad
        if override:
            problems.append(override)
        if job is None:
            # without accounting a finished job drops out of squeue after MinJobAge; a full set
            # of good records then shows it completed
            vanished = f"job {act.job_id} left squeue and sacct before its end was seen"
            (notes if records_ok and not override else problems).append(vanished)
        elif not job.state.ok:
            desc = job.state.value
            if job.exit_code:
                desc += f" exit {job.exit_code}"
            if job.signal:
                desc += f" signal {job.signal}"
            if job.reason and job.reason != "None":
                desc += f" ({job.reason})"
            problems.append(desc)
        if len(parsed.records) != nodes:
            problems.append(f"{len(parsed.records)} of {nodes} node records")
        problems += [f"{r.node}: {r.error or 'not ok'}" for r in bad[:3]]
        if not text:
            problems.append(f"no output file {act.host_output}")
        failed = bool(problems)
        if failed and parsed.other_lines:
            problems.append("output: " + " | ".join(parsed.other_lines[-2:]))
        if parsed.problems:
            problems.append("records: " + "; ".join(parsed.problems[:3]))
        state = RunState.FAILED if failed else RunState.COMPLETED
        self.db.finish_run(
            act.row.id, state, reason="; ".join(problems + notes) or None, records=parsed.records,
            job_state=job.state.value if job else None,
            exit_code=job.exit_code if job else None,
            node_list=(job.node_list or None) if job else None,
            start_time=job.start_time if job else None,
            end_time=job.end_time if job else None,
        )
        if failed:
            self.summary.failed += 1
            self.summary.failures.append((act.key.name, "; ".join(problems)))
            self.console.log(f"[red]failed[/] {act.key.experiment.label()} rep {act.key.rep}: "
                             f"{'; '.join(problems)[:300]}")
        else:
            self.summary.completed += 1

    def _fail(self, row: RunRow, key: RunKey, reason: str) -> None:
        self.db.finish_run(row.id, RunState.FAILED, reason=reason)
        self.summary.failed += 1
        self.summary.failures.append((key.name, reason))
        self.console.log(f"[red]failed[/] {key.experiment.label()} rep {key.rep}: {reason}")

    def _interrupt(self) -> None:
        """Ctrl-C: cancel our jobs, then mark their runs INTERRUPTED (one transaction)."""
        ids = [a.job_id for a in self.active.values()]
        try:
            self.client.cancel(ids)
        finally:
            with self.db.transaction():
                for act in self.active.values():
                    self.db.finish_run(act.row.id, RunState.INTERRUPTED,
                                       reason="cancelled: study interrupted (Ctrl-C)")
                for row in self.db.active_runs():  # SUBMITTING rows: sbatch was interrupted
                    self.db.finish_run(row.id, RunState.INTERRUPTED,
                                       reason="interrupted while submitting")
            self.active.clear()


# -- dry run ------------------------------------------------------------------------------------
def dry_run(spec: StudySpec, experiments: Sequence[Experiment], db: StudyDB | None,
            ctx: JobContext, out_dir: Path, console: Console, rerun_failed: bool = False) -> Plan:
    """Print the experiments and the scripts that would be submitted; write nothing."""
    p = plan(spec, experiments, db, rerun_failed)
    table = Table(title=f"study {spec.name}: {len(experiments)} experiments x "
                        f"{spec.repetitions} repetitions")
    for col in ("id", "image", "method", "workload", "nodes", "to run"):
        table.add_column(col)
    pending = collections.Counter(k.experiment.id for k in p.todo)
    for e in experiments:
        table.add_row(e.id, e.image, e.method, e.workload, str(e.nodes), str(pending[e.id]))
    console.print(table)
    console.print(f"{len(p.todo)} runs to submit, {p.completed} completed, "
                  f"{p.skipped_failed} failed and skipped, {len(p.reattach)} to re-attach")
    shown: set[str] = set()
    for k in p.todo:
        if k.experiment.id in shown:
            continue
        shown.add(k.experiment.id)
        attempt = db.next_attempt(k) if db is not None else 0
        path = out_dir / "scripts" / script_name(k, attempt)
        console.rule(str(path))
        console.print(render_script(k, ctx, attempt), markup=False, highlight=False,
                      soft_wrap=True)
    if len(p.todo) > len(shown):
        console.print(f"(the other {len(p.todo) - len(shown)} scripts differ only in the "
                      "repetition, attempt and output file)")
    return p
