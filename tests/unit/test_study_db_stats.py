"""Study database (schema, transactions, resume queries) and statistics."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from shoal.errors import StudyError
from shoal.study import stats
from shoal.study.db import SCHEMA_VERSION, Environment, RunState, StudyDB
from shoal.study.jobscript import NodeRecord, parse_output
from shoal.study.matrix import expand, runs
from shoal.study.spec import parse_spec

SPEC = parse_spec(
    '[study]\nname="dbt"\nrepetitions=2\n[cluster]\nkind="virtual"\nnodes=2\n'
    '[matrix]\nimages=["hello"]\nmethods=["untar","squashfuse"]\nworkloads=["catwalk"]\n'
    'node_counts=[1,2]\n', "dbt.toml")


def rec(node: str, ok: bool = True, stage: float = 1.0) -> NodeRecord:
    return NodeRecord(node=node, ok=ok, stage_seconds=stage, workload_seconds=2.0,
                      bytes_from_storage=100, fom={"files": 3})


def test_schema_version_and_reopen(tmp_path: Path) -> None:
    with StudyDB.in_dir(tmp_path) as db:
        sid = db.ensure_study(SPEC, expand(SPEC))
        db.record_environment(sid, Environment(slurm_version="22.05.8", kernel="6.1",
                                               network_params={"rate": "10gbit"}))
    with StudyDB.in_dir(tmp_path, create=False) as db:
        assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        meta = dict(db.conn.execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == str(SCHEMA_VERSION)
        assert len(db.experiments()) == 4
        env = db.environments()[0]
        assert env["slurm_version"] == "22.05.8" and '"rate"' in env["network_params_json"]
        # the same spec again adds nothing; another study name is refused
        db.ensure_study(SPEC, expand(SPEC))
        assert len(db.experiments()) == 4
        other = parse_spec(SPEC.text.replace('name="dbt"', 'name="other"'))
        with pytest.raises(StudyError, match="holds study 'dbt'"):
            db.ensure_study(other, expand(other))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    StudyDB.in_dir(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "study.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StudyError, match="schema version 99"):
        StudyDB.in_dir(tmp_path)
    with pytest.raises(StudyError, match="no study database"):
        StudyDB.in_dir(tmp_path / "nothing", create=False)


def test_resume_queries(tmp_path: Path) -> None:
    keys = runs(expand(SPEC), SPEC.repetitions)
    with StudyDB.in_dir(tmp_path) as db:
        db.ensure_study(SPEC, expand(SPEC))
        a = db.begin_run(keys[0], script_path="s0")
        db.update_run(a.id, state=RunState.RUNNING, job_id=11)
        db.finish_run(a.id, RunState.COMPLETED, reason=None, records=[rec("n1")])
        b = db.begin_run(keys[1], script_path="s1")
        db.finish_run(b.id, RunState.FAILED, reason="FAILED: exit 1", records=[rec("n1", False)])
        c = db.begin_run(keys[2], script_path="s2")
        db.update_run(c.id, state=RunState.PENDING, job_id=13)
        assert db.completed_keys() == {(keys[0].experiment.id, 0)}
        assert db.failed_keys() == {(keys[1].experiment.id, 0)}
        assert [r.id for r in db.active_runs()] == [c.id]
        assert db.state_counts() == {"COMPLETED": 1, "FAILED": 1, "PENDING": 1}
        # a retry that completes moves the key out of the failed set
        b2 = db.begin_run(keys[1], script_path="s1")
        assert b2.attempt == 1
        db.finish_run(b2.id, RunState.COMPLETED, reason=None, records=[rec("n1")])
        assert db.failed_keys() == set()
        res = db.results()
        assert {r.run_id for r in res} == {a.id, b2.id}
        assert res[0].record.fom == {"files": 3} and res[0].record.total_seconds == 3.0
        assert [f for f in db.failed_runs()] == []


def test_interrupt_inside_a_transaction_leaves_no_half_rows(tmp_path: Path) -> None:
    keys = runs(expand(SPEC), 1)
    with StudyDB.in_dir(tmp_path) as db:
        db.ensure_study(SPEC, expand(SPEC))
        run = db.begin_run(keys[0], script_path="s")

        class Boom(list[NodeRecord]):
            def __iter__(self):  # type: ignore[no-untyped-def]
                yield rec("n1")
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            db.finish_run(run.id, RunState.COMPLETED, reason=None, records=Boom())
        assert db.run(run.id).state is RunState.SUBMITTING
        assert db.conn.execute("SELECT count(*) FROM node_record").fetchone()[0] == 0
        assert not db.conn.in_transaction


def test_parse_output_records() -> None:
    text = "\n".join([
        "# shoal: job 5 start 1.0 nodes n[1-2]",
        '{"node": "n1", "ok": true, "stage_start": 10.0, "stage_end": 12.5, "workload": "catwalk",'
        ' "workload_seconds": 3.0, "fom": {"bytes": 9}, "custom": 1}',
        '{"node": "n2", "ok": false, "error": "mount failed"}',
        '{"node": "n3", "ok": "yes"}',
        "{broken",
        "srun: error: n2: task 1: Exited with exit code 1",
    ])
    out = parse_output(text)
    by = {r.node: r for r in out.records}
    assert set(by) == {"n1", "n2"}
    assert by["n1"].stage_seconds == 2.5 and by["n1"].total_seconds == 5.5
    assert by["n1"].extra == {"custom": 1} and by["n1"].fom == {"bytes": 9}
    assert by["n2"].error == "mount failed" and by["n2"].total_seconds is None
    assert len(out.problems) == 2 and "ok must be" in out.problems[0]
    assert out.other_lines[-1].startswith("srun: error")


def test_median_ci_exact_order_statistics() -> None:
    five = [5.0, 1.0, 4.0, 2.0, 3.0]
    ci = stats.median_ci(five)
    assert (ci.estimate, ci.low, ci.high) == (3.0, 1.0, 5.0)
    assert ci.coverage == pytest.approx(1 - 2 / 32)  # 93.75 %: the best n = 5 can do
    ci20 = stats.median_ci(list(range(20)))
    # n = 20: [x(6), x(15)] covers with 95.86 %
    assert (ci20.low, ci20.high) == (5.0, 14.0) and ci20.coverage == pytest.approx(0.9586, 1e-3)
    assert stats.median_ci([7.0]).method == "single"
    with pytest.raises(ValueError):
        stats.median_ci([])


def test_median_ci_coverage_by_simulation() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    trials = 2000
    for _ in range(trials):
        sample = rng.exponential(1.0, size=20)
        ci = stats.median_ci(sample.tolist())
        hits += ci.low <= np.log(2) <= ci.high
    assert 0.93 < hits / trials < 0.99


def test_bootstrap_is_reproducible_and_comparison() -> None:
    a = [10.0, 11.0, 10.5, 10.2, 10.8]
    b = [20.0, 21.0, 19.5, 20.5, 20.2]
    assert stats.bootstrap_median_ci(a) == stats.bootstrap_median_ci(a)
    r = stats.ratio_ci(b, a)
    assert r.low < r.estimate < r.high and r.low > 1.7 and r.high < 2.2
    c = stats.compare(a, b)
    assert c.separated and c.faster == "a" and c.ratio == pytest.approx(10.5 / 20.2)
    close = stats.compare(a, [10.4, 10.9, 10.1, 10.6, 11.2])
    assert not close.separated and close.faster is None
