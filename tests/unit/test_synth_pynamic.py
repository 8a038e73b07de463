"""The Pynamic-style generator and driver, built and run on the host with a small parameter set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shoal.paths import recipes_dir

PYN = recipes_dir() / "pynamic"
# the Debian interpreter: its headers (python3-dev) are what the image builds against
PYTHON = "/usr/bin/python3"

sys.path.insert(0, str(PYN))
import gen  # type: ignore[import-not-found]  # noqa: E402

needs_build = pytest.mark.skipif(
    not Path(PYTHON).exists() or shutil.which("gcc") is None
    or not Path(sysconfig.get_paths()["include"], "Python.h").exists(),
    reason="needs gcc and python3-dev",
)


@needs_build
def test_generate_build_drive(tmp_path: Path) -> None:
    out = tmp_path / "pyn"
    subprocess.run([PYTHON, str(PYN / "gen.py"), "--modules", "6", "--functions", "4",
                    "--bulk-kib", "8", "--out", str(out), "--build"], check=True, timeout=300)
    assert sorted(p.name for p in out.glob("pyn_mod_*.so")) == [
        f"pyn_mod_{i:04d}.so" for i in range(6)]
    assert not list(out.glob("*.c")) and not list(out.glob("*.o"))
    # cross-library calls: module 3 needs module 2 and the utility library
    needed = subprocess.run(["readelf", "-d", str(out / "pyn_mod_0003.so")], check=True,
                            capture_output=True, text=True).stdout
    assert "[pyn_mod_0002.so]" in needed and "[libpynutil.so]" in needed
    res = subprocess.run([PYTHON, "-I", str(out / "pynamic_driver.py")], check=True,
                         capture_output=True, text=True, timeout=60)
    rec = json.loads(res.stdout.strip())
    assert rec["workload"] == "pynamic"
    assert (rec["modules"], rec["functions"], rec["calls"]) == (6, 4, 24)
    assert rec["checksum_ok"] is True
    for k in ("startup_seconds", "import_seconds", "visit_seconds"):
        assert 0 <= rec[k] < 30, k


@needs_build
def test_driver_catches_wrong_result(tmp_path: Path) -> None:
    out = tmp_path / "pyn"
    gen.main(["--modules", "2", "--functions", "2", "--out", str(out)])
    subprocess.run([PYTHON, str(PYN / "gen.py"), "--modules", "2", "--functions", "2",
                    "--out", str(out), "--build"], check=True, timeout=120)
    meta = json.loads((out / "pynamic.json").read_text())
    meta["checksum"] += 1
    (out / "pynamic.json").write_text(json.dumps(meta))
    res = subprocess.run([PYTHON, "-I", str(out / "pynamic_driver.py"), "--t0", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert json.loads(res.stdout)["checksum_ok"] is False


def test_checksum_model() -> None:
    # the Python model of the C arithmetic: module 0 has no cross call
    assert gen.expected_checksum(1, 1) == gen.leaf(0, 0, 1)
    assert gen.expected_checksum(2, 1) == (
        gen.leaf(0, 0, 1) + gen.leaf(1, 0, 1) + gen.leaf(0, 0, 1)) & gen.MASK
    src = gen.module_c(3, 2, 0)
    assert "pyn_0002_leaf1(x)" in src and "PyInit_pyn_mod_0003" in src
