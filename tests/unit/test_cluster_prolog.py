"""The Prolog/Epilog shell fast path agrees with the node agent's paths, and really short-cuts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from shoal.cluster import scripts
from shoal.staging.base import DEFAULT_STORE, REQUESTS_DIR, STAGE_ROOT

PROLOG = scripts.text(scripts.PROLOG)
EPILOG = scripts.text(scripts.EPILOG)


def test_fast_path_uses_the_agents_locations() -> None:
    assert f'req="{DEFAULT_STORE}/{REQUESTS_DIR}/$SLURM_JOB_ID.json"' in PROLOG
    assert f'jobdir="{STAGE_ROOT}/$SLURM_JOB_ID"' in EPILOG


def _run(script: str, tmp_path: Path, job: str) -> subprocess.CompletedProcess[str]:
    # the agent path points into tmp_path, so reaching it shows as "agent ran"
    agent = tmp_path / "agent.py"
    agent.write_text("import sys; print('agent ran', sys.argv[1])\n")
    text = script.replace("/etc/slurm/shoal-nodeagent.py", str(agent))
    text = text.replace(DEFAULT_STORE, str(tmp_path / "store")).replace(STAGE_ROOT, str(tmp_path / "stage"))
    return subprocess.run(["/bin/sh", "-c", text], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SLURM_JOB_ID": job})


def test_no_request_no_python(tmp_path: Path) -> None:
    assert _run(PROLOG, tmp_path, "17").stdout == ""
    req = tmp_path / "store" / REQUESTS_DIR / "17.json"
    req.parent.mkdir(parents=True)
    req.write_text("{}")
    assert _run(PROLOG, tmp_path, "17").stdout == "agent ran prolog\n"


def test_nothing_staged_no_python(tmp_path: Path) -> None:
    assert _run(EPILOG, tmp_path, "17").stdout == ""
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "17").symlink_to("/nonexistent")  # a dangling link still goes to the agent
    assert _run(EPILOG, tmp_path, "17").stdout == "agent ran epilog\n"
