"""The Prolog/Epilog shell fast path agrees with the node agent's paths, and really short-cuts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shoal.cluster import scripts
from shoal.staging.base import STAGE_ROOT
from shoal.staging.privileged import COMMENT_KEY, MOUNT_ROOT

PROLOG = scripts.text(scripts.PROLOG)
EPILOG = scripts.text(scripts.EPILOG)


def test_fast_path_uses_the_agents_locations() -> None:
    assert f'd="{STAGE_ROOT}/$SLURM_JOB_ID"' in PROLOG
    assert f"*{COMMENT_KEY}*)" in PROLOG
    assert f'jobdir="{STAGE_ROOT}/$SLURM_JOB_ID"' in EPILOG
    assert f'mnt="{MOUNT_ROOT}/$SLURM_JOB_ID"' in EPILOG


def _run(script: str, tmp_path: Path, job: str, **env: str) -> subprocess.CompletedProcess[str]:
    # the agent path points into tmp_path, so reaching it shows as "agent ran"
    agent = tmp_path / "agent.py"
    agent.write_text("import sys; print('agent ran', sys.argv[1])\n")
    text = script.replace("/etc/slurm/shoal-nodeagent.py", str(agent))
    text = text.replace(MOUNT_ROOT, str(tmp_path / "jobs")).replace(STAGE_ROOT, str(tmp_path / "stage"))
    return subprocess.run(["/bin/sh", "-c", text], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SLURM_JOB_ID": job, "SLURM_JOB_UID": "1000",
                               "SLURM_JOB_GID": "1000", **env})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the job's user needs root")
def test_no_request_no_python(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir(mode=0o755)
    os.chmod(stage, 0o755)
    assert _run(PROLOG, tmp_path, "17").stdout == ""
    st = os.stat(stage / "17")
    assert (st.st_uid, st.st_mode & 0o777) == (1000, 0o700)  # the job user's area, made in sh
    out = _run(PROLOG, tmp_path, "18", SLURM_JOB_COMMENT=f"{COMMENT_KEY}squashfuse:img").stdout
    assert out == "agent ran prolog\n"


def test_a_user_stage_root_goes_to_the_agent(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir(mode=0o1777)
    os.chmod(stage, 0o1777)  # not the root-owned 0755 node-init makes: the agent moves it aside
    assert _run(PROLOG, tmp_path, "17").stdout == "agent ran prolog\n"
    stage.rmdir()
    stage.symlink_to(tmp_path)
    assert _run(PROLOG, tmp_path, "17").stdout == "agent ran prolog\n"


def test_nothing_staged_no_python(tmp_path: Path) -> None:
    assert _run(EPILOG, tmp_path, "17").stdout == ""
    (tmp_path / "stage" / "17").mkdir(parents=True)  # an empty area: removed in sh
    assert _run(EPILOG, tmp_path, "17").stdout == ""
    assert not (tmp_path / "stage" / "17").exists()
    (tmp_path / "stage" / "17").symlink_to("/nonexistent")  # a dangling link still goes to the agent
    assert _run(EPILOG, tmp_path, "17").stdout == "agent ran epilog\n"
    (tmp_path / "stage" / "17").unlink()
    (tmp_path / "jobs" / "17").mkdir(parents=True)  # a mount area: the agent
    assert _run(EPILOG, tmp_path, "17").stdout == "agent ran epilog\n"
