"""`shoal study` commands end to end on a synthetic results directory (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli.main import main
from tests.unit.test_study_report import make_db

REPO = Path(__file__).resolve().parents[2]


def test_status_report_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_db(tmp_path / "a")
    make_db(tmp_path / "b", scale=0.5, seed=3)
    assert main(["study", "status", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "150 completed, 1 failed" in out and "NODE_FAIL" in out
    assert main(["study", "report", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "answers" in out and (tmp_path / "a" / "report.html").exists()
    assert main(["study", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "faster" in capsys.readouterr().out  # "B faster", maybe wrapped by the table


def test_errors_are_one_line_with_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "status", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err
    assert "no study database" in err and "hint:" in err
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "examples" / "quick.toml").read_text().replace("repetitions = 2",
                                                                          "repetitions = -1"))
    assert main(["study", "run", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    line = next(i for i, ln in enumerate(bad.read_text().splitlines(), 1)
                if ln.startswith("repetitions"))
    assert f"bad.toml:{line}: study.repetitions = -1: must be at least 1" in err


def test_dry_run_of_quick_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q"
    assert main(["study", "run", str(REPO / "examples" / "quick.toml"), "--out", str(out),
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    from shoal.study.matrix import expand
    from shoal.study.spec import load_spec

    spec = load_spec(REPO / "examples" / "quick.toml")
    n = len(expand(spec)) * (spec.repetitions + int(spec.warmup))
    assert f"{n} runs to submit" in text and "#SBATCH --nodes=4" in text
    assert not out.exists()
