"""Bad input from a careless admin or a hostile user: every case is refused
with one line and a hint, exits non-zero, and leaves nothing behind (no directory removed or
created outside the place meant for it). No cluster needed: each runs in a private SHOAL_STATE."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import names
from shoal.cli.main import main
from shoal.cluster import config as ccfg
from shoal.cluster.state import ClusterDir, list_states
from shoal.errors import ConfigError, ShoalError, StudyError
from shoal.study.db import StudyDB
from shoal.study.spec import parse_spec
from tests.unit.test_study_report import make_db

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state root with a store; a 'victim' directory beside it that looks like a
    cluster's state (it holds a cluster.json), which no command may touch."""
    root = tmp_path / "state"
    (root / "clusters").mkdir(parents=True)
    (root / "store").mkdir()
    monkeypatch.setenv("SHOAL_STATE", str(root))
    monkeypatch.setenv("SHOAL_STORE", str(root / "store"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "cluster.json").write_text(json.dumps({
        "name": "victim", "index": 249, "nodes": [], "network": {"name": "none"}, "config": {},
        "phase": "up"}))
    (victim / "precious").write_text("data")
    yield root


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line_error(err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert any(ln.startswith("hint:") for ln in lines), err


# -- item 6: names that would become paths -----------------------------------------------------

BAD_CLUSTER_NAMES = ["../../victim", "../victim", "/tmp/x", "x\n", "x/y", "", ".", "..",
                     "a" * 11, "UPPER", "x y", "x\x00", "1abc", "x\r"]


@pytest.mark.parametrize("bad", BAD_CLUSTER_NAMES)
def test_cluster_dir_refuses_bad_names(bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ClusterDir(bad)
    assert "\n" not in exc.value.message and exc.value.hint


@pytest.mark.parametrize("cmd", [
    ["cluster", "down", "--name"], ["cluster", "status", "--name"], ["cluster", "logs", "--name"],
    ["cluster", "exec", "--name", "{}", "true"], ["cluster", "ssh", "--name", "{}", "node1"],
    ["cluster", "service", "--name", "{}", "node1", "slurmd", "stop"],
    ["cluster", "upgrade", "--image-dir", "/", "--name"],
])
@pytest.mark.parametrize("bad", ["../../victim", "x\n", "/abs/victim"])
def test_cluster_commands_validate_the_name(cmd: list[str], bad: str, state: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{}", bad) for a in cmd]
    if "{}" not in cmd:
        argv.append(bad)
    before = _snapshot(state.parent)
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err)
    assert _snapshot(state.parent) == before  # the victim is there, nothing was created


def test_up_refuses_trailing_newline_before_anything(state: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(state.parent)
    assert main(["cluster", "up", "--name", "x\n", "--nodes", "1"]) == 2
    _one_line_error(capsys.readouterr().err)
    assert _snapshot(state.parent) == before


def test_list_skips_foreign_directories(state: Path) -> None:
    (state / "clusters" / "Bad Name").mkdir()
    (state / "clusters" / "Bad Name" / "cluster.json").write_text("{}")
    assert list_states() == []


@pytest.mark.parametrize("bad", ["../x", "/abs/x", "x\n", "..", ".lock-x", "X", "a/b", ""])
@pytest.mark.parametrize("verb", ["rm", "verify", "export"])
def test_image_commands_validate_the_name(verb: str, bad: str, state: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(state.parent)
    assert main(["image", verb, bad]) == 2
    _one_line_error(capsys.readouterr().err)
    assert _snapshot(state.parent) == before  # no .lock-... directory in the store


def test_store_functions_validate_too(state: Path) -> None:
    from shoal.images import store

    for bad in ("../x", "/abs/x", "x\n"):
        with pytest.raises(ConfigError):
            store.remove(bad)
        with pytest.raises(ConfigError):
            store.add_to_store(bad, state, "h")
    assert list((state / "store").iterdir()) == []


def test_names_are_full_matches() -> None:
    for check in (names.cluster_name, names.image_name, names.study_name):
        with pytest.raises(ConfigError):
            check("abc\n")
    assert names.cluster_name("abc") == "abc" and names.image_name("mpi-hello.1") == "mpi-hello.1"


# -- item 7: upper bounds, with the bound in the message ------------------------------------


@pytest.mark.parametrize(("raw", "needle"), [
    ({"memory_mb_per_node": 2**63 - 1}, "more than this machine has"),
    ({"tmpfs_size": "99999999999G"}, "more than this machine's memory"),
    ({"tmpfs_size": "2G\n"}, "not a size"),
    ({"cpus_per_node": 256}, "(1-128)"),
    ({"nodes": 100000}, "1 to 512"),
    ({"nodes": 512, "cpus_per_node": 128}, "virtual CPUs"),
    ({"extra_slurm_conf": ["SchedulerParameters=x\nProlog=/tmp/evil"]}, "newline"),
    ({"extra_slurm_conf": ["Prolog=/tmp/evil"]}, "shoal sets itself"),
    ({"extra_slurm_conf": [" epilog = /tmp/evil"]}, "shoal sets itself"),
    ({"extra_slurm_conf": ["x", 5]}, "must be a string"),
    ({"extra_slurm_conf": ["A=b"] * 65}, "at most 64"),
])
def test_cluster_bounds(raw: dict[str, object], needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccfg, "machine_memory_mb", lambda: 24000)
    with pytest.raises(ConfigError, match=needle) as exc:
        ccfg.validate(raw)
    assert "\n" not in exc.value.message and exc.value.hint


def test_cluster_bound_names_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccfg, "machine_memory_mb", lambda: 24000)
    with pytest.raises(ConfigError) as exc:
        ccfg.validate({"memory_mb_per_node": 30000})
    assert "24000 MB" in exc.value.message and exc.value.hint == "use at most 24000"
    ccfg.validate({"memory_mb_per_node": 24000, "tmpfs_size": "23G", "nodes": 256,
                   "cpus_per_node": 16, "extra_slurm_conf": ["SchedulerParameters=defer"]})


SPEC = """
[study]
name = "s"
repetitions = 2
timeout = "10m"
[cluster]
kind = "virtual"
name = "demo"
nodes = 4
[matrix]
images = ["mpihello"]
methods = ["untar"]
workloads = ["catwalk"]
node_counts = [1, 4]
"""


@pytest.mark.parametrize(("old", "new", "needle"), [
    ("repetitions = 2", "repetitions = 99999999999", "must be at most 1000"),
    ('timeout = "10m"', 'timeout = "99999999999h"', "longest job allowed (24 h)"),
    ('timeout = "10m"', "timeout = inf", "positive duration"),
    ('timeout = "10m"', "timeout = nan", "positive duration"),
    ("nodes = 4", "nodes = 100000", "at most 512"),
    ('name = "demo"', 'name = "../x"', "not a valid virtual cluster name"),
    ('name = "s"', 'name = "s\\n"', "study.name"),
    ('name = "s"', 'name = "' + "s" * 65 + '"', "at most 64"),
    ('images = ["mpihello"]', 'images = ["../etc"]', "not a valid image name"),
    ('timeout = "10m"', 'timeout = "10m"\npartition = "a\\n#SBATCH --uid=0"', "study.partition"),
    ("node_counts = [1, 4]", "node_counts = [1, 4]\nzip = []\n", None),
])
def test_spec_bounds(old: str, new: str, needle: str | None) -> None:
    text = SPEC.replace(old, new, 1)
    if needle is None:
        parse_spec(text, "s.toml")
        return
    with pytest.raises(ConfigError) as exc:
        parse_spec(text, "s.toml")
    assert needle in exc.value.message + (exc.value.hint or "")
    assert "\n" not in exc.value.message


def test_spec_total_runs_bounded() -> None:
    counts = ", ".join(str(i) for i in range(1, 401))
    text = SPEC.replace("repetitions = 2", "repetitions = 1000").replace(
        "nodes = 4", "nodes = 400").replace("node_counts = [1, 4]", f"node_counts = [{counts}]")
    with pytest.raises(ConfigError, match="400000 runs"):
        parse_spec(text, "s.toml")


def test_dry_run_of_huge_repetitions_is_refused_fast(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.toml"
    f.write_text(SPEC.replace("repetitions = 2", "repetitions = 99999999999"))
    assert main(["study", "run", str(f), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys.readouterr().err)


# -- item 8: one-line errors, not tracebacks -------------------------------------------------


@pytest.mark.parametrize(("text", "needle"), [
    (b"[[cluster]]\nname = 'x'\n", "array of tables"),
    (b"cluster = 5\n", "cluster is int"),
    (b"[cluster]\nname = '\xff\xfe'\n", "not UTF-8"),
    (b"nodes = 1\n\xc3\x28\n", ":2: not UTF-8"),
    (b"[cluster]\nextra_slurm_conf = ['x', 5]\n", "must be a string"),
    (b"name = 'top'\n[cluster]\nnodes = 2\n", "name outside the [cluster] table"),
    (b"[cluster]\nnodes = 2\n[other]\nx = 1\n", "other outside the [cluster] table"),
])
def test_cluster_config_file_errors(text: bytes, needle: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.toml"
    f.write_bytes(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        ccfg.load(f, {})
    # and through the CLI: one line, exit 2, before anything is created
    assert main(["cluster", "up", "--config", str(f)]) == 2
    _one_line_error(capsys.readouterr().err)


def test_spec_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.toml"
    f.write_bytes(SPEC.encode().replace(b'"s"', b'"s\xff"'))
    assert main(["study", "run", str(f), "--dry-run"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "s.toml:3: not UTF-8" in err


def test_empty_study_database_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "study.sqlite").write_bytes(b"")
    for argv in (["study", "report", str(out)], ["study", "status", str(out)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        _one_line_error(err)
        assert "empty (0 bytes)" in err
    with pytest.raises(StudyError, match="empty"):
        StudyDB.in_dir(out)  # `study run` would have written a fresh schema into it
    assert (out / "study.sqlite").stat().st_size == 0


def _damage(db: Path) -> None:
    """Overwrite the middle pages of DB with garbage, as a bad disk or a torn copy would."""
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 4
    with open(db, "r+b") as fh:
        for p in range(2, pages - 1):
            fh.seek(p * page)
            fh.write(os.urandom(page // 2))


def test_damaged_study_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    make_db(out)
    _damage(out / "study.sqlite")
    for argv in (["study", "report", str(out)], ["study", "status", str(out)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        _one_line_error(err)
        assert "damaged" in err or "malformed" in err or "not a database" in err


def test_errors_are_shoal_errors() -> None:
    # the root every expected failure here derives from: the CLI's one handler prints it
    assert issubclass(ConfigError, ShoalError) and issubclass(StudyError, ShoalError)


# -- item 9 (harness side): a study whose every run failed exits non-zero ----------------------


def test_study_with_every_run_failed_is_an_error(tmp_path: Path) -> None:
    from shoal.cli.study import check_outcome
    from shoal.study.runner import Summary

    with pytest.raises(StudyError, match="all 3 runs failed; first: a r0: node1: boom x") as exc:
        check_outcome(Summary(failed=3, failures=[("a r0", "node1: boom\n x")]), tmp_path)
    assert exc.value.hint and "--rerun-failed" in exc.value.hint
    check_outcome(Summary(completed=1, failed=2), tmp_path)  # partial: results exist
    check_outcome(Summary(), tmp_path)  # nothing to do (all done before)
