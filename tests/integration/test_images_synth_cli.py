"""`shoal image synth` makes an image with exactly the requested file population, exportable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from shoal.images.build import image_dir, markers_dir

pytestmark = [pytest.mark.slow, pytest.mark.root]
SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def test_synth_cli_counts_and_export() -> None:
    name = "tsynthcli"
    try:
        res = subprocess.run([*SHOAL, "image", "synth", name, "--profile", "few-large", "--scale", "0.25",
                              "--force"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        data = image_dir(name) / "data"
        files = [p for p in data.rglob("*") if p.is_file()]
        marker = json.loads((markers_dir() / f"{name}.json").read_text())
        assert len(files) == marker["synth"]["files"] > 0
        assert sum(p.stat().st_size for p in files) == marker["synth"]["bytes"]
        # the same name again is refused without --force, with a hint
        again = subprocess.run([*SHOAL, "image", "synth", name, "--profile", "few-large"],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "--force" in again.stderr
        # a built-in name is refused
        builtin = subprocess.run([*SHOAL, "image", "synth", "mpihello", "--profile", "many-small"],
                                 capture_output=True, text=True, timeout=60)
        assert builtin.returncode != 0 and "built-in" in builtin.stderr
    finally:
        shutil.rmtree(image_dir(name), ignore_errors=True)
        (markers_dir() / f"{name}.json").unlink(missing_ok=True)
