"""The CLI conventions every command follows (shoal/cli/options.py, docs/JSON.md): --cluster with
--name and SHOAL_CLUSTER, --json to stdout against a documented schema, Slurm time formats,
required options marked in --help, exit codes passed through, tables not cut when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from shoal.cli import jsonout
from shoal.cli.main import _register, cli, main
from shoal.cluster import config as ccfg
from shoal.errors import ConfigError
from shoal.slurm import timespec
from tests.unit.test_study_report import make_db

REPO = Path(__file__).resolve().parents[2]
_register()


def _commands(group: click.Group = cli, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{full} ")
        else:
            yield full, cmd


def _opt(cmd: click.Command, dest: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and p.name == dest), None)


def test_cluster_option_is_the_same_everywhere() -> None:
    seen = []
    for name, cmd in _commands():
        assert _opt(cmd, "name") is None, f"`shoal {name}` still has its own --name"
        opt = _opt(cmd, "cluster")
        if opt is None:
            continue
        seen.append(name)
        assert {"--cluster", "--name"} <= set(opt.opts), name
        assert opt.envvar == "SHOAL_CLUSTER", name
    assert {"run", "dist", "study run", "cluster up", "cluster exec", "cluster down",
            "cluster status"} <= set(seen)


def test_shoal_cluster_env_names_the_cluster(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOAL_CLUSTER", "nosuchcl")
    monkeypatch.setenv("SHOAL_STATE", "/nonexistent-shoal-state")
    assert main(["cluster", "status"]) != 0
    assert "nosuchcl" in capsys.readouterr().err
    assert main(["cluster", "status", "--name", "othercl"]) != 0
    assert "othercl" in capsys.readouterr().err


def test_required_method_is_marked_in_help() -> None:
    for name in ("run", "dist"):
        text = cli.commands[name].get_help(click.Context(cli.commands[name]))
        assert "required" in text.split("--method", 1)[1].split("\n  -", 1)[0], name


def test_json_commands_have_documented_schemas() -> None:
    with_json = {name.replace(" ", ".") for name, cmd in _commands() if _opt(cmd, "as_json")}
    assert with_json == set(jsonout.SCHEMAS), "every --json command has a schema and vice versa"
    assert {"study.status", "study.report", "study.run", "run", "dist", "image.list"} <= with_json
    for name, cmd in _commands():
        assert _opt(cmd, "json_out") is None, f"`shoal {name}` has --json-out: use --json"


def test_docs_json_md_is_generated_from_the_schemas() -> None:
    assert (REPO / "docs" / "JSON.md").read_text() == jsonout.markdown() + "\n", \
        "regenerate: python -m shoal.cli.jsonout > docs/JSON.md"


def test_schema_checker_catches_drift() -> None:
    schema = jsonout.SCHEMAS["cluster.down"]
    assert jsonout.problems({"name": "a", "removed": True}, schema) == []
    assert jsonout.problems({"name": "a"}, schema) == ["$: missing 'removed'"]
    assert jsonout.problems({"name": 1, "removed": True}, schema) == ["$.name: int is not string"]
    with pytest.raises(AssertionError):
        jsonout.document("cluster.down", {"name": "a"})


def _parse(out: str, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(out)  # the whole of stdout is one document
    assert doc["format"] == jsonout.FORMAT and doc["kind"] == kind
    body = {k: v for k, v in doc.items() if k not in ("format", "kind")}
    assert jsonout.problems(body, jsonout.SCHEMAS[kind]) == []
    return doc


def test_study_status_report_compare_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_db(tmp_path / "a")
    make_db(tmp_path / "b", scale=0.5, seed=3)
    assert main(["study", "status", str(tmp_path / "a"), "--json"]) == 0
    doc = _parse(capsys.readouterr().out, "study.status")
    assert doc["states"] == {"COMPLETED": 150, "FAILED": 1}
    assert len(doc["experiments"]) == 30 and doc["failed_runs"][0]["reason"].startswith("NODE_FAIL")
    assert main(["study", "report", str(tmp_path / "a"), "--json"]) == 0
    doc = _parse(capsys.readouterr().out, "study.report")
    assert [a["number"] for a in doc["answers"]] == [1, 2, 3, 4, 5]
    assert all(Path(p).is_file() for p in doc["plots"]) and Path(doc["html"]).is_file()
    assert main(["study", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    doc = _parse(capsys.readouterr().out, "study.compare")
    assert any(r["verdict"] == "B faster" for r in doc["rows"])


def test_image_and_cluster_list_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SHOAL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SHOAL_STATE", str(tmp_path / "state"))
    assert main(["image", "list", "--json"]) == 0
    assert _parse(capsys.readouterr().out, "image.list")["images"] == []
    assert main(["cluster", "list", "--json"]) == 0
    assert _parse(capsys.readouterr().out, "cluster.list")["clusters"] == []


def test_run_passes_the_exit_code_through(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from shoal.staging import driver

    seen: dict[str, Any] = {}

    def fake_run(site: driver.Site, image: str, method: str, command: Any, **kw: Any) -> Any:
        seen.update(kw)
        res = driver.DistResult("7", method, image, ["n1"], {"n1": {"ok": True, "node": "n1"}},
                                {}, 0.5)
        return driver.RunResult(res, 3, "out\n", "err\n", 0.1, {"n1": {"ok": True}})

    monkeypatch.setattr(driver, "run_in_image", fake_run)
    argv = ["run", "--image", "x", "--method", "untar", "--nodes", "1", "--time", "1:30:00",
            "--sbatch-arg=--account=proj", "--", "false"]
    assert main(argv) == 3
    out = capsys.readouterr()
    assert out.out == "out\n" and "exited 3" in out.err
    assert seen["time_limit"] == "01:30:00" and seen["sbatch_args"] == ("--account=proj",)
    assert main([*argv[:1], "--json", *argv[1:]]) == 3
    doc = _parse(capsys.readouterr().out, "run")
    assert doc["returncode"] == 3 and doc["stdout"] == "out\n"
    assert main(["run", "--image", "x", "--nodes", "1", "--", "true"]) == 2  # usage error
    assert "Missing option '--method'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 5400.0), (90, 5400.0), ("00:03:00", 180.0), ("3:30", 210.0), ("1-0", 86400.0),
    ("2-12:30", 217800.0), ("1-00:00:01", 86401.0), ("90s", 90.0), ("10m", 600.0),
    ("1h30m", 5400.0), ("1d", 86400.0),
])
def test_slurm_time_formats(text: Any, seconds: float) -> None:
    assert timespec.parse_seconds(text) == seconds


def test_slurm_time_rejects_and_renders() -> None:
    for bad in ("soon", "", "1:2:3:4", True, "-5", "1-"):
        assert timespec.parse_seconds(bad) is None, bad
    assert timespec.to_slurm(90) == "00:01:30" and timespec.to_slurm(86401) == "1-00:00:01"
    help_text = cli.commands["run"].get_help(click.Context(cli.commands["run"]))
    assert "a bare number is minutes" in " ".join(help_text.split())


def test_nodes_zero_names_the_option() -> None:
    with pytest.raises(ConfigError) as info:
        ccfg.load(None, {"nodes": 0, "name": "x"})
    assert info.value.message.startswith("--nodes 0 is out of range: a virtual cluster has 1 to ")
    assert "command line + command line" not in info.value.message


def test_piped_tables_are_not_cut(tmp_path: Path) -> None:
    """`shoal image list | cat` shows whole names, whatever the terminal width."""
    store = tmp_path / "store"
    name = "a-rather-long-image-name-that-would-not-fit-in-eighty-columns"
    (store / name).mkdir(parents=True)
    (store / name / "manifest.json").write_text(json.dumps({
        "format_version": 1, "name": name, "files": {}, "sizes": {}, "exports": {"dir": "dir"},
        "tree_digest": "sha256:" + "0" * 64, "bytes": 1, "file_count": 1,
        "inputs_hash": "x" * 24, "created": "2026-11-29T00:00:00+00:00"}))
    env = {**os.environ, "SHOAL_STORE": str(store), "COLUMNS": "60"}
    out = subprocess.run([sys.executable, "-m", "shoal.cli.main", "image", "list"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert name in out and "…" not in out


@pytest.mark.parametrize("args", [
    ["--nodes", "0"], ["--nodes", "-3"], ["--nodes", "100000"], ["--nodes", "2", "--timeout", "nan"],
    ["--nodes", "2", "--timeout", "inf"], ["--nodes", "2", "--timeout", "2-0"],
    ["--nodes", "2", "--time", "400-0"], ["--nodes", "2", "--fanout", "0"],
    ["--nodes", "2", "--ntasks-per-node", "0"],
])
def test_run_refuses_unbounded_numbers_before_touching_slurm(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bounds hold at parse time: nothing reaches sbatch or srun (no cluster is needed to refuse)."""
    assert main(["run", "--image", "x", "--method", "untar", *args, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for" in err and err.count("\n") <= 4, err
