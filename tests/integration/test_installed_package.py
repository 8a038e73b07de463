"""A non-editable install of shoal, run from outside the checkout, builds an image from the recipes
it ships (package data), not from files of the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shoal.images.catalog import resolve

pytestmark = [pytest.mark.slow, pytest.mark.root]  # builds into the shared image cache
REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def test_installed_shoal_builds_mpihello_from_its_package_data(tmp_path: Path) -> None:
    # the tracked files only: nothing a checkout has lying around (.venv, build/) may leak in
    src = tmp_path / "src"
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                            text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(src)], tmp_path)
    shutil.rmtree(src)  # the install must not need its source any more
    # its dependencies (click, rich, ...) from this interpreter, after the venv's own site dir,
    # so `import shoal` finds the installed copy
    site = Path(run([str(venv / "bin" / "python"), "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    (site / "zz-shoal-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = run([str(venv / "bin" / "python"), "-c", "import shoal; print(shoal.__file__)"],
                tmp_path).strip()
    assert where.startswith(str(site)), where
    out = run([str(venv / "bin" / "shoal"), "image", "build", "mpihello"], tmp_path, timeout=3600)
    # the same recipe as the checkout's: the same inputs hash (so the cached build is reused)
    assert f"inputs {resolve('mpihello').inputs_hash}" in out, out
