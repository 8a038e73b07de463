"""The study runner's submit / monitor / collect loop against a fake Slurm (our own logic only).

FakeSlurm plays the cluster: each submitted script becomes a job that is PENDING for one poll,
RUNNING for one, then ends and "prints" one JSON record per node into the script's --output file,
as the job contract in shoal.study.jobscript says a real job does.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from rich.console import Console

from shoal.errors import CommandError, StudyError
from shoal.slurm.client import Backoff, Job, JobState, SlurmVersion
from shoal.study.db import RunState, StudyDB
from shoal.study.jobscript import JobContext
from shoal.study.matrix import expand
from shoal.study.runner import StudyRunner, dry_run, plan
from shoal.study.spec import parse_spec

SPEC = parse_spec(
    '[study]\nname="rt"\nrepetitions=2\nconcurrency=2\ntimeout="1m"\nwarmup=false\ncache="warm"\n'
    '[cluster]\nkind="virtual"\nnodes=2\n'
    '[matrix]\nimages=["hello"]\nmethods=["untar","squashfuse"]\nworkloads=["catwalk"]\n'
    'node_counts=[1,2]\n', "rt.toml")
EXPS = expand(SPEC)
N_RUNS = len(EXPS) * SPEC.repetitions  # 8


class FakeSlurm:
    def __init__(self, fail_method: str | None = None, lifetime: int = 2) -> None:
        self.jobs: dict[int, dict[str, object]] = {}
        self.next_id = 100
        self.submitted: list[str] = []
        self.cancelled: list[int] = []
        self.cancelled_names: list[str] = []
        self.released: list[int] = []
        self.args: dict[int, list[str]] = {}
        self.fail_method = fail_method
        self.lifetime = lifetime
        self.max_live = 0
        self.submit_errors = 0
        self.vanish: set[int] = set()

    def submit(self, script: str | Path, args: Sequence[str] = ()) -> int:
        if self.submit_errors:
            self.submit_errors -= 1
            raise CommandError(["sbatch", str(script)], 1, "", "sbatch: error: Batch job "
                               "submission failed: Unable to contact slurm controller")
        text = Path(script).read_text()
        job_id = self.next_id
        self.next_id += 1
        self.args[job_id] = list(args)
        self.jobs[job_id] = {
            "polls": 0,
            "nodes": int(re.search(r"--nodes=(\d+)", text).group(1)),  # type: ignore[union-attr]
            "output": re.search(r"--output=(\S+)", text).group(1),  # type: ignore[union-attr]
            "method": re.search(r"--method (\S+)", text).group(1),  # type: ignore[union-attr]
            "state": JobState.PENDING,
        }
        self.submitted.append(Path(script).name)
        live = sum(not j["state"].terminal for j in self.jobs.values())  # type: ignore[attr-defined]
        self.max_live = max(self.max_live, live)
        return job_id

    def _advance(self, job_id: int) -> None:
        j = self.jobs[job_id]
        if j["state"].terminal:  # type: ignore[attr-defined]
            return
        j["polls"] = int(j["polls"]) + 1  # type: ignore[call-overload]
        if j["polls"] == 1:
            j["state"] = JobState.RUNNING
        elif int(j["polls"]) > self.lifetime:  # type: ignore[call-overload]
            bad = j["method"] == self.fail_method
            lines = []
            for i in range(int(j["nodes"])):  # type: ignore[call-overload]
                rec = {"node": f"n{i + 1}", "ok": not bad, "method": j["method"],
                       "stage_seconds": 1.0 + i, "workload": "catwalk", "workload_seconds": 2.0,
                       "bytes_from_storage": 10, "fom": {"files": 4}}
                if bad:
                    rec["error"] = "mount: permission denied"
                lines.append(json.dumps(rec))
            Path(str(j["output"])).write_text("# shoal: job start\n" + "\n".join(lines) + "\n")
            j["state"] = JobState.FAILED if bad else JobState.COMPLETED

    def job_states(self, job_ids: Iterable[int]) -> dict[int, Job]:
        out = {}
        for i in job_ids:
            if i not in self.jobs:
                continue
            self._advance(i)
            if i in self.vanish and self.jobs[i]["state"].terminal:  # type: ignore[attr-defined]
                continue
            j = self.jobs[i]
            st: JobState = j["state"]  # type: ignore[assignment]
            out[i] = Job(i, "x", st, "None" if st is not JobState.PENDING else "Resources",
                         1 if st is JobState.FAILED else 0, None, 1, 2 if st.terminal else None,
                         3 if st.terminal else None, "n[1-2]", ("n1", "n2"))
        return out

    def cancel(self, job_ids: Iterable[int], *, signal: str | None = None) -> None:
        for i in job_ids:
            self.cancelled.append(i)
            if i in self.jobs:
                self.jobs[i]["state"] = JobState.CANCELLED

    def cancel_name(self, name: str) -> None:
        self.cancelled_names.append(name)

    def release(self, job_id: int) -> None:
        self.released.append(job_id)

    def version(self) -> SlurmVersion:
        return SlurmVersion("22.05.8")


def make_runner(out: Path, slurm: FakeSlurm, db: StudyDB, *, rerun_failed: bool = False,
                sleep: object = None) -> StudyRunner:
    ctx = JobContext(logs_dir=str(out / "logs"), time_limit_s=SPEC.timeout)
    return StudyRunner(SPEC, EXPS, db, slurm, out, ctx,
                       console=Console(file=io.StringIO(), width=120),
                       rerun_failed=rerun_failed, backoff=Backoff(0.0, 1.0, 0.0),
                       sleep=sleep or (lambda s: None))  # type: ignore[arg-type]


def test_full_run_collects_records_under_the_concurrency_limit(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, slurm, db).execute()
        assert (summary.completed, summary.failed) == (N_RUNS, 0)
        assert slurm.max_live <= SPEC.concurrency
        assert db.state_counts() == {"COMPLETED": N_RUNS}
        res = db.results()
        assert len(res) == len(EXPS) // 2 * 3 * 2  # per rep: 1 + 2 node records per method
        assert {r.record.fom["files"] for r in res} == {4}
        runs = db.runs()
        assert all(r.job_id and r.job_state == "COMPLETED" for r in runs)
    scripts = sorted(p.name for p in (tmp_path / "scripts").iterdir())
    assert len(scripts) == N_RUNS and scripts[0].endswith("-r0.sh")
    body = (tmp_path / "scripts" / scripts[0]).read_text()
    assert "#SBATCH --time=1" in body and " job " in body and "--workload catwalk" in body


def test_failed_job_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    slurm = FakeSlurm(fail_method="squashfuse")
    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, slurm, db).execute()
        assert (summary.completed, summary.failed) == (N_RUNS // 2, N_RUNS // 2)
        failed = db.failed_runs()
        assert len(failed) == N_RUNS // 2
        row, exp = failed[0]
        assert exp.method == "squashfuse"
        assert row.reason and "FAILED exit 1" in row.reason
        assert "mount: permission denied" in row.reason
        # failed runs keep their node records for diagnosis, outside the results
        assert db.conn.execute("SELECT count(*) FROM node_record WHERE ok=0").fetchone()[0] > 0
        assert all(r.method == "untar" for r in db.results())


def test_resume_skips_completed_and_rerun_failed_retries_only_failures(tmp_path: Path) -> None:
    slurm = FakeSlurm(fail_method="squashfuse")
    with StudyDB.in_dir(tmp_path) as db:
        make_runner(tmp_path, slurm, db).execute()
        first = len(slurm.submitted)
        again = make_runner(tmp_path, slurm, db).execute()
        assert len(slurm.submitted) == first and again.skipped == N_RUNS
        slurm.fail_method = None
        retry = make_runner(tmp_path, slurm, db, rerun_failed=True).execute()
        assert retry.completed == N_RUNS // 2
        assert len(slurm.submitted) == first + N_RUNS // 2
        assert all(name.endswith("-a1.sh") for name in slurm.submitted[first:])
        assert db.state_counts() == {"COMPLETED": N_RUNS} and db.failed_keys() == set()


def test_ctrl_c_cancels_jobs_and_leaves_consistent_rows(tmp_path: Path) -> None:
    slurm = FakeSlurm(lifetime=50)
    calls = {"n": 0}

    def sleep(_: float) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with StudyDB.in_dir(tmp_path) as db:
        with pytest.raises(KeyboardInterrupt):
            make_runner(tmp_path, slurm, db, sleep=sleep).execute()
        assert sorted(slurm.cancelled) == [100, 101]
        states = {r.state for r in db.runs()}
        assert states == {RunState.INTERRUPTED}
        assert db.active_runs() == [] and not db.conn.in_transaction
        # interrupted runs are simply run again
        slurm.lifetime = 2
        summary = make_runner(tmp_path, slurm, db).execute()
        assert summary.completed == N_RUNS


def test_killed_harness_reattaches_instead_of_resubmitting(tmp_path: Path) -> None:
    slurm = FakeSlurm(lifetime=4)
    calls = {"n": 0}

    def killed(_: float) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("harness killed")  # nothing of ours runs after a SIGKILL either

    with StudyDB.in_dir(tmp_path) as db:
        with pytest.raises(SystemExit):
            make_runner(tmp_path, slurm, db, sleep=killed).execute()
        left = db.active_runs()
        assert len(left) == 2 and all(r.job_id for r in left)
    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, slurm, db).execute()
        assert summary.reattached == 2 and summary.completed == N_RUNS
        assert len(slurm.submitted) == N_RUNS  # no run was submitted twice


def test_vanished_jobs_are_judged_by_their_records(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    slurm.vanish = {100, 101}  # leave squeue without sacct (no accounting) once done
    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, slurm, db).execute()
        assert summary.completed == N_RUNS
        r = db.runs()[0]
        assert r.state is RunState.COMPLETED and r.job_state is None


def test_job_without_output_fails_with_a_reason(tmp_path: Path) -> None:
    class NoOutput(FakeSlurm):
        def _advance(self, job_id: int) -> None:
            j = self.jobs[job_id]
            j["polls"] = int(j["polls"]) + 1  # type: ignore[call-overload]
            j["state"] = JobState.COMPLETED if int(j["polls"]) > 1 else JobState.RUNNING  # type: ignore[call-overload]

    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, NoOutput(), db).execute()
        assert summary.failed == N_RUNS
        reason = db.failed_runs()[0][0].reason or ""
        assert "0 of 1 node records" in reason and "no output file" in reason


def test_sbatch_failures_fail_runs_then_stop_the_study(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    slurm.submit_errors = 1
    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, slurm, db).execute()
        assert summary.failed == 1 and summary.completed == N_RUNS - 1
        assert "Unable to contact slurm controller" in summary.failures[0][1]
    slurm2 = FakeSlurm()
    slurm2.submit_errors = 10
    with StudyDB.in_dir(tmp_path / "b") as db, pytest.raises(StudyError, match="3 times in a row"):
        make_runner(tmp_path / "b", slurm2, db).execute()


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    buf = io.StringIO()
    ctx = JobContext(logs_dir="/pfs/results/rt/logs")
    p = dry_run(SPEC, EXPS, None, ctx, tmp_path / "out", Console(file=buf, width=200))
    text = buf.getvalue()
    assert len(p.todo) == N_RUNS
    assert all(e.id in text for e in EXPS)
    assert "#SBATCH --output=/pfs/results/rt/logs/" in text
    assert "differ only in the repetition" in text
    assert not (tmp_path / "out").exists()


def test_plan_counts(tmp_path: Path) -> None:
    assert len(plan(SPEC, EXPS, None).todo) == N_RUNS


def test_jobs_that_cannot_start_fail_instead_of_hanging(tmp_path: Path) -> None:
    class Stuck(FakeSlurm):
        reason = "PartitionNodeLimit"

        def job_states(self, job_ids: Iterable[int]) -> dict[int, Job]:
            return {i: Job(i, "x", JobState.PENDING, self.reason, None, None, 1, None, None, "",
                           ()) for i in job_ids if self.jobs[i]["state"] is JobState.PENDING}

    slurm = Stuck()
    with StudyDB.in_dir(tmp_path) as db:
        summary = make_runner(tmp_path, slurm, db).execute()
        assert summary.failed == N_RUNS and len(slurm.cancelled) == N_RUNS
        assert "cannot start: pending for PartitionNodeLimit" in (db.runs()[0].reason or "")

    now = {"t": 0.0}
    slurm2 = Stuck()
    slurm2.reason = "ReqNodeNotAvail, UnavailableNodes:node[1-4]"

    def sleep(s: float) -> None:
        now["t"] += 100.0

    with StudyDB.in_dir(tmp_path / "b") as db:
        runner = make_runner(tmp_path / "b", slurm2, db, sleep=sleep)
        runner.clock = lambda: now["t"]
        summary = runner.execute()
        assert summary.failed == N_RUNS
        assert "with nothing of the study running" in (db.runs()[0].reason or "")


def test_logs_seen_elsewhere_are_copied_into_the_results_dir(tmp_path: Path) -> None:
    pfs_logs = tmp_path / "pfs" / "logs"
    ctx = JobContext(logs_dir=str(pfs_logs), time_limit_s=SPEC.timeout)
    with StudyDB.in_dir(tmp_path / "out") as db:
        runner = StudyRunner(SPEC, EXPS, db, FakeSlurm(), tmp_path / "out", ctx,
                             host_logs=pfs_logs, console=Console(file=io.StringIO()),
                             backoff=Backoff(0.0, 1.0, 0.0), sleep=lambda s: None)
        assert runner.execute().completed == N_RUNS
    kept = sorted((tmp_path / "out" / "logs").iterdir())
    assert len(kept) == N_RUNS and '"node": "n1"' in kept[0].read_text()
