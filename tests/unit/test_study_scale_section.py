"""The report's "At your scale" section from a SYNTHETIC database (made-up figures)."""

from __future__ import annotations

from pathlib import Path

from shoal.model import data
from shoal.model.terms import Params, predict_time
from shoal.study.db import RunState, StudyDB
from shoal.study.jobscript import NodeRecord
from shoal.study.matrix import RunKey, expand
from shoal.study.report import write_report
from shoal.study.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = """
[study]
name = "scale"
[cluster]
kind = "virtual"
nodes = 8
[matrix]
images = ["hello"]
methods = ["untar", "sbcast"]
workloads = ["catwalk"]
node_counts = [1, 2, 4, 8]
"""
TRUTH = {"untar": Params(1.3, 0.5, 0.1), "sbcast": Params(1.1, 1.5, 0.2)}


def make_db(out: Path) -> None:
    spec = parse_spec(SPEC, "scale.toml")
    exps = expand(spec)
    with StudyDB.in_dir(out) as db:
        db.ensure_study(spec, exps)
        for rep in range(3):
            for e in exps:
                run = db.begin_run(RunKey(e, rep), script_path="x")
                extra = {"link_mbit": 1000, "storage_mbit": 2000, "storage_kind": "sshfs",
                         "host_cores": 2, "net_rx_bytes": 70e6, "memory_peak_bytes": 2e8,
                         "cpu_stage_s": 0.4, "cpu_workload_s": 0.3, "time_to_solution": 1.0}
                o = data.observations([{**extra, "method": e.method, "workload": e.workload,
                                        "run_id": 1, "node": f"n{i}"} for i in range(e.nodes)])[0]
                extra["time_to_solution"] = predict_time(TRUTH[e.method], o) * (1 + 0.01 * rep)
                recs = [NodeRecord(node=f"n{i + 1}", ok=True, method=e.method, stage_seconds=1.0,
                                   workload=e.workload, workload_seconds=1.0, extra=extra)
                        for i in range(e.nodes)]
                db.update_run(run.id, job_id=1000 + run.id, state=RunState.RUNNING)
                db.finish_run(run.id, RunState.COMPLETED, reason=None, records=recs)


def test_report_gains_at_your_scale(tmp_path: Path) -> None:
    make_db(tmp_path)
    rep = write_report(tmp_path, site=REPO / "examples/sites/eth10g-192.toml")
    text = rep.markdown.read_text()
    assert "## At your scale: eth10g-192" in text
    assert "| catwalk | 192 |" in text
    png = tmp_path / "plots" / "scale-eth10g-192-catwalk.png"
    assert png.is_file() and png.stat().st_size > 5000
    assert (tmp_path / "model.json").is_file()
    assert "scale-eth10g-192-catwalk.png" in rep.html.read_text()
    # without --site the section is absent
    assert "At your scale" not in write_report(tmp_path).markdown.read_text()
