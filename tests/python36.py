"""A real Python 3.6 for the node-side tests (RHEL 8 nodes run 3.6; the agent bundle must too).

Looked for on PATH and under pyenv's versions; built by pyenv only from a source tarball already
in its cache (no download). Tests that need one skip with a message saying where it looked.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))


def _candidates() -> list[str]:
    found = [shutil.which("python3.6") or ""]
    found += sorted(glob.glob(os.path.join(PYENV_ROOT, "versions", "3.6*", "bin", "python3.6")),
                    reverse=True)
    return [p for p in found if p and os.access(p, os.X_OK)]


def _install_from_cache() -> None:
    pyenv = shutil.which("pyenv") or os.path.join(PYENV_ROOT, "bin", "pyenv")
    cached = sorted(glob.glob(os.path.join(PYENV_ROOT, "cache", "Python-3.6.*.tar.*")))
    if not cached or not os.access(pyenv, os.X_OK):
        return
    version = os.path.basename(cached[-1]).split("-", 1)[1].split(".tar")[0]
    subprocess.run([pyenv, "install", "-s", version], check=False, timeout=1800,
                   capture_output=True)


def python36() -> str:
    """Path of a working Python 3.6 interpreter, or skip the test with a message."""
    found = _candidates()
    if not found:
        _install_from_cache()
        found = _candidates()
    for py in found:
        ok = subprocess.run([py, "-c", "import sys; assert sys.version_info[:2] == (3, 6)"],
                            capture_output=True, timeout=60).returncode == 0
        if ok:
            return py
    pytest.skip(f"no Python 3.6 interpreter (looked on PATH and in {PYENV_ROOT}/versions/3.6*; "
                "none in pyenv's cache to build offline): node-side code is checked only "
                "statically (vermin in `make lint`)")
