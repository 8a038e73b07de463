"""Controlled runs: seeded order per repetition, warm-up runs discarded, cold caches one at a time,
and how each run was made (concurrency, cache, warm-up) recorded beside its figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shoal.study import runner as runner_mod
from shoal.study.db import StudyDB
from shoal.study.matrix import WARMUP_REP, runs
from shoal.study.spec import parse_spec
from tests.unit.test_study_runner import EXPS, SPEC, FakeSlurm, make_runner


def test_order_is_shuffled_per_repetition_from_the_seed() -> None:
    a = runs(EXPS, 3, seed=7)
    assert a == runs(EXPS, 3, seed=7)  # same seed, same order (a resumed study agrees)
    assert [k.rep for k in a] == [0] * 4 + [1] * 4 + [2] * 4  # repetition-major
    blocks = [[k.experiment.id for k in a[i:i + 4]] for i in (0, 4, 8)]
    assert all(sorted(b) == sorted(e.id for e in EXPS) for b in blocks)
    assert len({tuple(b) for b in blocks}) > 1  # not the same order every repetition
    assert runs(EXPS, 3, seed=8) != a
    assert runs(EXPS, 1) == runs(EXPS, 1, seed=None)  # no seed: the matrix order


def test_warmup_runs_go_first_and_never_reach_the_results(tmp_path: Path) -> None:
    spec = dataclasses.replace(SPEC, warmup=True)
    keys = runs(EXPS, spec.repetitions, spec.seed, warmup=True)
    # each experiment's warm-up right before its first measured run
    assert [k.rep for k in keys[:8]] == [WARMUP_REP, 0] * 4 and keys[0].name.endswith("-w")
    assert all(keys[i].experiment == keys[i + 1].experiment for i in range(0, 8, 2))
    slurm = FakeSlurm()
    with StudyDB.in_dir(tmp_path) as db:
        r = make_runner(tmp_path, slurm, db)
        r.spec = spec
        assert r.execute().completed == len(EXPS) * (spec.repetitions + 1)
        results = db.results()
    assert results and all(row.rep >= 0 for row in results)
    assert len({row.run_id for row in results}) == len(EXPS) * spec.repetitions


def test_cold_runs_go_one_at_a_time_with_a_message() -> None:
    text = ('[study]\nname="c"\nconcurrency=3\n[cluster]\nkind="virtual"\nnodes=2\n'
            '[matrix]\nimages=["i"]\nmethods=["untar"]\nworkloads=["catwalk"]\nnode_counts=[1]\n')
    cold = parse_spec(text)
    assert cold.cache == "cold" and cold.effective_concurrency == 1
    assert "lowered to 1" in cold.adjustments()[0]
    warm = parse_spec(text.replace('concurrency=3', 'concurrency=3\ncache="warm"'))
    assert warm.effective_concurrency == 3 and not warm.adjustments()
    assert cold.margin == 0.10 and cold.warmup and cold.seed == 1


@pytest.mark.parametrize("bad", ['cache="lukewarm"', "warmup=1", "margin=1.5", "seed=-1"])
def test_bad_controls_are_refused(bad: str) -> None:
    from shoal.errors import ConfigError

    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        parse_spec(f'[study]\nname="c"\n{bad}\n[cluster]\nkind="virtual"\nnodes=2\n'
                   '[matrix]\nimages=["i"]\nmethods=["untar"]\nworkloads=["catwalk"]\n'
                   'node_counts=[1]\n')


def test_cold_run_drops_caches_and_rows_record_how_they_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drops = tmp_path / "drop_caches"
    drops.write_text("")
    monkeypatch.setattr(runner_mod, "DROP_CACHES", str(drops))
    spec = dataclasses.replace(SPEC, cache="cold", warmup=False)
    slurm = FakeSlurm()
    with StudyDB.in_dir(tmp_path / "o") as db:
        r = make_runner(tmp_path / "o", slurm, db)
        r.spec = spec
        r.execute()
        rows = db.results()
    assert drops.read_text() == "3\n"
    assert slurm.max_live == 1  # cold: one job at a time
    assert {row.record.extra["cache"] for row in rows} == {"cold"}
    assert {row.record.extra["concurrency"] for row in rows} == {1}
    assert not any(row.record.extra["warmup"] for row in rows)


def test_repeat_rules_spend_repetitions_where_verdicts_are() -> None:
    text = ('[study]\nname="c"\nrepetitions=5\n[cluster]\nkind="virtual"\nnodes=32\n'
            '[matrix]\nimages=["i"]\nmethods=["untar","sbcast"]\nworkloads=["catwalk"]\n'
            'node_counts=[4,32]\nrepeat=[{nodes=32, repetitions=3}]\n')
    spec = parse_spec(text)
    from shoal.study.matrix import expand

    exps = expand(spec)
    keys = runs(exps, lambda e: spec.repetitions_of(e.factors), 1, warmup=True)
    per = {e.id: sum(k.experiment.id == e.id and k.rep >= 0 for k in keys) for e in exps}
    assert sorted(per.values()) == [3, 3, 5, 5]
    assert sum(k.rep == WARMUP_REP for k in keys) == 4
    from shoal.errors import ConfigError

    with pytest.raises(ConfigError, match="repetitions"):
        parse_spec(text.replace("repetitions=3}", "repetitions=0}"))
    with pytest.raises(ConfigError, match="nodes"):
        parse_spec(text.replace("nodes=32, repetitions", "nodes=8, repetitions"))
