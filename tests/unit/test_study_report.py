"""Report, answers, plots and compare from a SYNTHETIC database (made-up test numbers, not
measurements): the figures are chosen so each answer has a known right outcome."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shoal.study.analysis import CellKey, aggregate
from shoal.study.answers import NOT_SUPPORTED, answer_all
from shoal.study.db import Environment, RunState, StudyDB
from shoal.study.jobscript import NodeRecord
from shoal.study.matrix import Experiment, RunKey, expand
from shoal.study.report import compare_dirs, to_markdown, write_report
from shoal.study.spec import parse_spec

SPEC_TEXT = """
[study]
name = "synthetic"
[cluster]
kind = "virtual"
nodes = 4
[matrix]
images = ["hello"]
methods = ["untar", "sbcast", "squashfs-kernel", "squashfuse", "shared-dir"]
workloads = ["catwalk", "statwalk"]
node_counts = [1, 2, 4]
"""


def fake_stage(method: str, nodes: int) -> float:
    """Made-up staging model: untar grows linearly, sbcast logarithmically, mounts are ~free."""
    return {"untar": 2.0 * nodes, "sbcast": 2.0 + 0.5 * nodes.bit_length(),
            "squashfs-kernel": 0.1, "squashfuse": 0.12, "shared-dir": 0.0}[method]


def fake_workload(method: str, workload: str) -> float:
    if workload == "catwalk":  # data-heavy: network methods differ a lot
        return {"squashfs-kernel": 5.0, "squashfuse": 7.5, "shared-dir": 15.0}.get(method, 4.0)
    return {"squashfs-kernel": 3.0, "squashfuse": 3.0, "shared-dir": 3.1}.get(method, 2.0)


def make_db(out: Path, scale: float = 1.0, seed: int = 7, reps: int = 5) -> None:
    rng = random.Random(seed)
    spec = parse_spec(SPEC_TEXT, "synthetic.toml")
    exps = expand(spec)
    with StudyDB.in_dir(out) as db:
        sid = db.ensure_study(spec, exps)
        db.record_environment(sid, Environment(slurm_version="22.05.8", kernel="test",
                                               network_profile="eth10g",
                                               network_params={"rate_mbit": 10000}))
        for rep in range(reps):
            for e in exps:
                run = db.begin_run(RunKey(e, rep), script_path="x")
                recs = []
                for i in range(e.nodes):
                    st = fake_stage(e.method, e.nodes) * scale * rng.uniform(0.97, 1.03)
                    wl = fake_workload(e.method, e.workload) * rng.uniform(0.97, 1.03)
                    recs.append(NodeRecord(
                        node=f"n{i + 1}", ok=True, method=e.method, stage_seconds=st,
                        workload=e.workload, workload_seconds=wl,
                        bytes_from_storage=(100 << 20) * (e.nodes if e.method == "untar" else 1),
                        bytes_net_rx=100 << 20, peak_bytes=50 << 20, fom={"files": 10}))
                db.update_run(run.id, job_id=1000 + run.id, state=RunState.RUNNING)
                db.finish_run(run.id, RunState.COMPLETED, reason=None, records=recs)
        bad = db.begin_run(RunKey(exps[0], reps), script_path="x")
        db.finish_run(bad.id, RunState.FAILED, reason="NODE_FAIL: n3 not responding",
                      job_state="NODE_FAIL")


@pytest.fixture()
def study_dir(tmp_path: Path) -> Path:
    make_db(tmp_path / "a")
    return tmp_path / "a"


def test_aggregate_takes_slowest_node_and_sums_bytes(study_dir: Path) -> None:
    with StudyDB.in_dir(study_dir, create=False) as db:
        cells = aggregate(db.results())
    cell = cells[CellKey("hello", "untar", "catwalk", 4)]
    assert len(cell.runs) == 5
    assert all(v == 4 * 4 * (100 << 20) for v in cell.values("bytes_storage"))
    ci = cell.ci("stage")
    assert ci is not None and 7.7 < ci.estimate < 8.3


def test_answers_follow_the_data(study_dir: Path) -> None:
    with StudyDB.in_dir(study_dir, create=False) as db:
        cells = aggregate(db.results())
    a1, a2, a3, a4, a5 = answer_all(cells)
    # Q1: kernel SquashFS is fastest for catwalk; statwalk's network methods overlap
    assert a1.code == "fastest:squashfs-kernel"
    by_workload = {w: {f.verdict for f in a1.findings if f.group["workload"] == w}
                   for w in ("catwalk", "statwalk")}
    assert by_workload == {"catwalk": {"squashfs-kernel"}, "statwalk": {"overlap"}}
    assert cells[CellKey("hello", "squashfs-kernel", "catwalk", 4)].experiment_id in a1.cites
    assert all(f.experiments and set(f.experiments) <= set(a1.cites) for f in a1.findings)
    # Q2: at 1 node untar beats sbcast, at 4 nodes sbcast wins: depends on scale
    assert a2.code == "depends" and {f.verdict for f in a2.findings} >= {"untar", "sbcast"}
    # Q3: the spread is real, and the method x workload interaction on log time is found
    assert a3.code == "interaction"
    spread = {f.group["workload"]: f for f in a3.findings if f.group.get("kind") == "spread"
              and f.group["nodes"] == 4}
    cat_spread = spread["catwalk"]
    assert cat_spread.interval is not None and cat_spread.interval.low > 1.0  # the choice matters
    assert cat_spread.effect is not None and 2.5 < cat_spread.effect < 3.5
    assert cat_spread.group["fastest"] == "squashfs-kernel" and cat_spread.group["slowest"] == "shared-dir"
    inter = [f for f in a3.findings if f.group.get("kind") == "interaction"
             and f.group["methods"] == ["shared-dir", "squashfs-kernel"]]
    assert inter and inter[0].interval is not None and inter[0].interval.low > 1.0
    # Q4: FUSE ~50 % slower on catwalk (beyond the 10 % margin); statwalk equivalent within it
    codes = dict(c.split(":") for c in a4.code.split(","))
    assert codes == {"catwalk": "beyond margin", "statwalk": "equivalent"}
    stat4 = [f for f in a4.findings if f.group["workload"] == "statwalk"]
    assert stat4 and all(f.verdict == "equivalent" and f.group["margin"] == 0.1 for f in stat4)
    assert all(f.effect is not None and 0.9 < f.effect < 1.1 for f in stat4)
    # Q5: sbcast's time grows by fewer seconds per node than untar's, and it wins at 4 nodes
    slopes = {f.group["method"]: f for f in a5.findings if f.group.get("kind") == "slope"
              and f.group["workload"] == "catwalk"}
    assert slopes["sbcast"].effect is not None and slopes["untar"].effect is not None
    assert slopes["sbcast"].effect < slopes["untar"].effect
    at4 = [f for f in a5.findings if f.group.get("kind") == "at_n" and f.group["nodes"] == 4
           and f.group["other"] == "untar"]
    assert at4 and all(f.verdict == "faster" for f in at4)


def test_equivalence_margin_decides_minimal() -> None:
    from shoal.study import stats

    same = [1.0, 1.01, 0.99, 1.0, 1.02]
    assert stats.equivalence(same, same, 0.10)[0] == stats.EQUIVALENT
    assert stats.equivalence([1.5 * x for x in same], same, 0.10)[0] == stats.DIFFERENT_BEYOND_MARGIN
    noisy = [0.6, 1.4, 1.0, 0.8, 1.3]
    assert stats.equivalence(noisy, same, 0.10)[0] == stats.INCONCLUSIVE


def test_interval_labels_say_their_true_coverage() -> None:
    from shoal.study import stats

    assert stats.label(stats.median_ci([1.0, 2.0, 3.0])) == "75 % exact"
    assert stats.label(stats.median_ci([1.0, 2.0, 3.0, 4.0, 5.0])) == "93.75 % exact"
    assert stats.label(stats.ratio_ci([1.0, 2, 3], [1.0, 2, 3])) == "nominal 95 % bootstrap, n=3"


def test_slope_and_interaction_recover_known_effects() -> None:
    from shoal.study import stats

    pts = [(n, [2.0 * n + d for d in (-0.1, 0.0, 0.1)]) for n in (1, 2, 4, 8)]
    sl = stats.slope_ci(pts)
    assert sl.estimate == pytest.approx(2.0, abs=0.01) and sl.low > 1.9 and sl.high < 2.1
    flat = stats.log_contrast_ci([2.0, 2.1, 1.9], [1.0, 1.05, 0.95], [4.0, 4.2, 3.8],
                                 [2.0, 2.1, 1.9])
    assert flat.estimate == pytest.approx(1.0) and flat.low <= 1.0 <= flat.high


def test_missing_data_says_not_supported() -> None:
    answers = answer_all({})
    assert [a.code for a in answers] == ["not_supported"] * 5
    assert all(not a.findings and not a.cites and a.effect is None for a in answers)
    assert all(NOT_SUPPORTED in a.verdict for a in answers)  # and the prose says so


def test_report_files(study_dir: Path) -> None:
    import json

    rep = write_report(study_dir)
    doc = json.loads((study_dir / "answers.json").read_text())
    assert doc["format"] == 1 and doc["margin"] == 0.10 and len(doc["answers"]) == 5
    a4 = doc["answers"][3]
    assert a4["number"] == 4 and a4["experiments"] and a4["findings"][0]["interval"]["label"]
    md = rep.markdown.read_text()
    assert "## What the emulation cannot do" in md and "no added" in md
    assert "## Answers" in md and "### 4. What is the runtime overhead" in md
    assert "## Failed runs" in md and "NODE_FAIL: n3 not responding" in md
    assert "22.05.8" in md
    for name in ("staging_vs_nodes.png", "total_by_workload.png", "fuse_overhead.png",
                 "sbcast_scaling.png", "bytes_storage_vs_nodes.png"):
        png = study_dir / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"plots/{name}" in md
    page = rep.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<img src=" in page
    assert "<b>squashfs-kernel</b>" in page


def test_markdown_table_escapes_pipes() -> None:
    from shoal.study.report import Table
    assert "a\\|b" in to_markdown([Table(["h"], [["a|b"]])])


def test_compare_two_result_sets(tmp_path: Path) -> None:
    make_db(tmp_path / "a")
    make_db(tmp_path / "b", scale=0.5, seed=8)  # B stages twice as fast
    rows = compare_dirs(tmp_path / "a", tmp_path / "b")
    stage = {(r.key.method, r.key.workload, r.key.nodes): r for r in rows if r.metric == "stage"}
    untar4 = stage[("untar", "catwalk", 4)]
    assert untar4.verdict == "B faster" and untar4.ratio == pytest.approx(0.5, rel=0.05)
    total = [r for r in rows if r.metric == "total" and r.key.method == "shared-dir"]
    assert all(r.verdict.startswith("no difference") for r in total)


def test_experiment_ids_in_tables_match_expansion(study_dir: Path) -> None:
    md = write_report(study_dir).markdown.read_text()
    assert Experiment("hello", "sbcast", "statwalk", 2).id in md


def test_recommendation_only_where_the_data_support_it(study_dir: Path) -> None:
    from shoal.study.recommend import recommendation

    with StudyDB.in_dir(study_dir, create=False) as db:
        cells = aggregate(db.results())
    line = recommendation(cells, "here")
    # catwalk at N=4: squashfs-kernel is clearly fastest; statwalk's mount methods overlap
    assert line == "At N = 4 nodes on here, use **squashfs-kernel** for data-heavy workloads (catwalk)."
    # take squashfuse's catwalk cells into the kernel mount's range: no winner, no line
    for k, c in cells.items():
        if k.workload == "catwalk" and k.method == "squashfuse":
            kern = cells[CellKey(k.image, "squashfs-kernel", k.workload, k.nodes)]
            c.runs = dict(kern.runs)
    assert recommendation(cells) is None
    assert recommendation({}) is None


def test_caveats_name_bind_storage_and_cpu_bound_runs(study_dir: Path) -> None:
    from shoal.study.report import add_caveats

    with StudyDB.in_dir(study_dir, create=False) as db:
        cells = aggregate(db.results())
    for c in cells.values():  # pretend every untar run was CPU-bound
        c.bounds = {r: ("cpu" if c.key.method == "untar" else "link") for r in c.runs}
    answers = answer_all(cells)
    add_caveats(answers, cells, {"shared_storage": "bind", "cluster_nodes": 4,
                                 "cpus_per_node": 2})
    a1, a2 = answers[0], answers[1]
    assert any("bind mount" in c for c in a1.caveats)
    assert not any("CPU-bound" in c for c in a1.caveats)  # Q1 cites no untar run
    assert any("CPU-bound" in c and "oversubscribe" in c for c in a2.caveats)


def test_export_has_one_row_per_node_run_with_fixed_columns(study_dir: Path) -> None:
    import csv
    import io
    import json

    from shoal.study.export import COLUMNS, export

    text = export(study_dir, "csv")
    data = list(csv.DictReader(io.StringIO(text)))
    assert tuple(data[0]) == COLUMNS
    # 5 methods x 2 workloads x (1 + 2 + 4 nodes) x 5 repetitions; the failed run is left out
    assert len(data) == 5 * 2 * 7 * 5
    assert {r["network_profile"] for r in data} == {"eth10g"}
    lines = export(study_dir, "jsonl").splitlines()
    assert len(lines) == len(data) and json.loads(lines[0])["time_to_solution"] > 0


def test_single_runs_decide_nothing(tmp_path: Path) -> None:
    make_db(tmp_path / "one", reps=1)
    with StudyDB.in_dir(tmp_path / "one", create=False) as db:
        cells = aggregate(db.results())
    answers = answer_all(cells)
    assert all(a.code in ("not_supported",) for a in answers), [a.code for a in answers]
    assert all(NOT_SUPPORTED in a.verdict for a in answers)
    assert all(any("fewer than 2 completed runs" in c for c in a.caveats) for a in answers)
