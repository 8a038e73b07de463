"""`shoal model` end to end on a synthetic per-node export in the job step's record format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from shoal.cli.model import model
from shoal.model import data
from shoal.model.terms import Params, predict_time

REPO = Path(__file__).resolve().parents[2]
TRUTH = {"untar": Params(1.4, 0.6, 0.1), "bcast": Params(1.2, 1.0, 0.12)}


def _export(path: Path) -> None:
    """Per-node records as the job step writes them, times drawn from known parameters."""
    rng = np.random.default_rng(7)
    lines = []
    run = 0
    for link in (1000, 100):  # eth10g and eth1g at the emulator's 1/10 scale, in Mbit/s
        for method, truth in TRUTH.items():
            for n in (1, 2, 4, 8, 16):
                for rep in range(3):
                    run += 1
                    base = {"run_id": run, "rep": rep, "method": method, "workload": "catwalk",
                            "link_mbit": link, "storage_mbit": 2000, "storage_kind": "sshfs",
                            "host_cores": 2, "net_rx_bytes": 70e6, "memory_peak_bytes": 2e8,
                            "cpu_stage_s": 0.3, "cpu_workload_s": 0.2}
                    obs = data.observations([{**base, "node": f"node{i}", "time_to_solution": 1}
                                             for i in range(n)])[0]
                    tts = predict_time(truth, obs) * float(np.exp(rng.normal(0, 0.03)))
                    for i in range(n):
                        lines.append(json.dumps({**base, "node": f"node{i}",
                                                 "time_to_solution": tts}))
    path.write_text("\n".join(lines) + "\n")


def test_fit_predict_validate(tmp_path: Path) -> None:
    export = tmp_path / "nodes.jsonl"
    _export(export)
    runner = CliRunner()
    out = tmp_path / "model.json"
    r = runner.invoke(model, ["fit", str(export), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    fitted = {g["method"]: g for g in json.loads(r.output)["groups"]}
    assert abs(fitted["untar"]["eta"] - 1.4) < 0.15 and abs(fitted["bcast"]["eta"] - 1.2) < 0.15
    r = runner.invoke(model, ["predict", "--model", str(out), "--site",
                              str(REPO / "examples/sites/eth10g-192.toml"),
                              "--nodes", "1,32,128,192", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert {p["nodes"] for p in doc["predictions"]} == {1, 32, 128, 192}
    assert all(p["low"] <= p["seconds"] <= p["high"] for p in doc["predictions"])
    assert {w["nodes"] for w in doc["winners"]} == {1, 32, 128, 192}
    assert "storage_gbyte" in doc["sensitivity"]
    r = runner.invoke(model, ["validate", str(export), "--json"])
    assert r.exit_code == 0, r.output
    val = json.loads(r.output)
    tests = {e["test"] for e in val["errors"]}
    assert tests == {"largest N held out", "network held out"}
    assert max(e["median_abs_error"] for e in val["errors"]) < 0.2
    # and the human tables render
    assert runner.invoke(model, ["validate", str(export)]).exit_code == 0
    r = runner.invoke(model, ["predict", "--model", str(out), "--site",
                              str(REPO / "examples/sites/example-2048.toml")])
    assert r.exit_code == 0 and "catwalk at example-2048" in r.output


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    from shoal.cli.main import main

    assert main(["model", "fit", str(tmp_path / "nope")]) == 2
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main(["model", "fit", str(tmp_path / "bad.jsonl")]) == 2
    assert main(["model", "predict", "--model", str(tmp_path / "none.json"), "--site",
                 str(REPO / "examples/sites/eth10g-192.toml")]) == 2


def test_validate_on_the_committed_standard_export() -> None:
    """The standard study's per-node CSV export (docs/results/standard/) and its eth1g companion
    validate: the largest node count (32) held out, and each network profile held out."""
    runner = CliRunner()
    parts = [str(REPO / "docs/results/standard" / p / "nodes.csv") for p in (".", "eth1g")]
    r = runner.invoke(model, ["validate", *parts, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    held = [e for e in doc["errors"] if e["test"] == "largest N held out"]
    assert {e["method"] for e in held} >= {"untar", "sbcast", "squashfs-kernel", "squashfuse", "bcast"}
    assert all(e["held_out"] == "32" for e in held)
    nets = {e["held_out"] for e in doc["errors"] if e["test"] == "network held out"}
    assert len(nets) == 2  # each profile (link and storage bandwidths) held out in turn
    assert not any("one network profile" in u for u in doc["unvalidated"])
