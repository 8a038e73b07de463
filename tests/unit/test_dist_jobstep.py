"""The batch-side study step (shoal.staging.jobstep): record merging and output parsing, no Slurm."""

from __future__ import annotations

import json
import zipfile
from typing import Any

import pytest

from shoal.bundle import bundle_bytes
from shoal.staging import jobstep
from shoal.staging.record import JOB_RECORD_KEYS
from shoal.study.jobscript import parse_output

STAGE = {"node": "n1", "ok": True, "stage_seconds": 1.5, "stage_start": 100.0, "stage_end": 101.5,
         "stage_bytes_from_storage": 70, "bytes_net_rx": 5, "peak_bytes": 900,
         "image_digest": "abc", "staged": "/tmp/shoal/7/img", "staged_by": "step"}
WORK = {"node": "n1", "ok": True, "seconds": 0.25, "wall_start": 102.0, "wall_end": 102.25,
        "fom": {"workload": "catwalk", "files": 3}, "rchar": 1000}


def merged(node: str = "n1", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(method="untar", image="img", workload="catwalk", job="7",
                                batch_node="n1", stage=STAGE, work=WORK, scope="node",
                                clean={"ok": True, "left": [], "figures": {}}, error=None,
                                collective_s=None, collective_bytes=0, job_stage_s=1.6)
    args.update(kw)
    return jobstep.merge(node, **args)


def test_merged_record_is_what_the_study_parses() -> None:
    rec = merged()
    assert set(JOB_RECORD_KEYS) <= set(rec)
    parsed = parse_output(json.dumps(rec) + "\n")
    assert not parsed.problems
    r = parsed.records[0]
    assert r.ok and r.stage_seconds == 1.5 and r.workload_seconds == 0.25
    assert r.bytes_from_storage == 70 and r.peak_bytes == 900 and r.fom["files"] == 3
    assert r.total_seconds == pytest.approx(1.75)
    assert r.extra["workload_scope"] == "node" and r.extra["job_stage_seconds"] == 1.6


def test_storage_bytes_per_method() -> None:
    # a mount on shared storage: what went through it over its life
    clean = {"ok": True, "left": [], "figures": {"img": {"mount_bytes_read": 5000}}}
    assert merged(method="squashfuse", clean=clean)["bytes_from_storage"] == 5000
    # shared-dir: every read of the workload went to shared storage
    assert merged(method="shared-dir", stage=STAGE | {"stage_bytes_from_storage": 0}
                  )["bytes_from_storage"] == 1000
    # sbcast: the batch node read the artifact once; the others nothing from storage
    sb = STAGE | {"stage_bytes_from_storage": 0}
    assert merged(method="sbcast", stage=sb, collective_s=0.5,
                  collective_bytes=70)["bytes_from_storage"] == 70
    assert merged("n2", method="sbcast", stage=sb, collective_s=0.5,
                  collective_bytes=70)["bytes_from_storage"] == 0


def test_failed_node_keeps_its_figures_and_says_why() -> None:
    rec = merged(work=None, error="stage: tmpfs too small")
    assert rec["ok"] is False and rec["error"] == "stage: tmpfs too small"
    assert rec["workload_seconds"] is None and rec["stage_seconds"] == 1.5
    assert parse_output(json.dumps(rec)).records[0].error == "stage: tmpfs too small"


def test_last_json_line_is_the_figure_of_merit() -> None:
    out = 'rank=0 size=2 host=n1\n{"a": 1}\nring passed size=2\n{"workload": "mpihello"}\n'
    assert jobstep.last_json(out) == {"workload": "mpihello"}
    assert jobstep.last_json("no json\n{broken\n") is None


def test_every_workload_of_the_spec_is_known() -> None:
    from shoal.study.spec import DEFAULT_WORKLOADS
    from shoal.workloads import WORKLOADS, get_workload

    assert set(DEFAULT_WORKLOADS) == set(WORKLOADS)
    with pytest.raises(Exception, match="unknown workload"):
        get_workload("nope")


def test_bundle_carries_the_job_step_and_workload_scripts() -> None:
    import io

    names = set(zipfile.ZipFile(io.BytesIO(bundle_bytes())).namelist())
    assert {"shoal/staging/jobstep.py", "shoal/slurm/hostlist.py", "shoal/workloads/catwalk.py",
            "shoal/workloads/statwalk.py", "shoal/workloads/__init__.py"} <= names
    from shoal.workloads import WORKLOADS

    for w in WORKLOADS.values():
        if w.script:
            assert f"shoal/workloads/{w.script}" in names
