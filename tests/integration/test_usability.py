"""A site's users on the virtual cluster (issue: real-site usability): the classic hand-written
Charliecloud job (ch-convert on the nodes, quiet MPI), `cluster exec` in the caller's cwd, and
`shoal run` passing the command's exit status and the site's sbatch options through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ClusterHandle

pytestmark = [pytest.mark.cluster]
REPO = Path(__file__).resolve().parents[2]
SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def shoal(*args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "USER": os.environ.get("USER", "root")}
    return subprocess.run([*SHOAL, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def test_cluster_exec_keeps_the_callers_cwd(cluster: ClusterHandle) -> None:
    res = shoal("cluster", "exec", "--cluster", cluster.name, "--", "pwd", cwd=REPO / "shoal")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(REPO / "shoal")
    # relative paths work as they do with srun: the repo's own files from the login node
    res = shoal("cluster", "exec", "--cluster", cluster.name, "--", "test", "-f", "pyproject.toml")
    assert res.returncode == 0, res.stderr


def test_classic_charliecloud_job_runs_quietly(cluster: ClusterHandle, mpihello_in_store: str,
                                               tmp_path: Path) -> None:
    """The batch script users already have: ch-convert the tarball on every node, ch-run it."""
    tag = f"usab{os.getpid()}"
    script = f"""#!/bin/bash
#SBATCH --nodes=2 --ntasks-per-node=1 --time=5
set -e
srun ch-convert -o dir /pfs/store/mpihello/mpihello.tar.gz /var/tmp/{tag}
srun ch-run /var/tmp/{tag} -- mpihello
srun rm -rf /var/tmp/{tag}
"""
    pfs_dir = Path(f"/var/lib/shoal/clusters/{cluster.name}/pfs")
    job = pfs_dir / f"{tag}.sh"
    job.write_text(script)
    try:
        res = cluster.ctl("env", "USER=root", "sbatch", "--wait", f"--output=/pfs/{tag}.out",
                          f"/pfs/{tag}.sh", timeout=300, check=False)
        out = (pfs_dir / f"{tag}.out").read_text()
        assert res.returncode == 0, out
        assert "ring passed size=2" in out, out
        assert "PMIX ERROR" not in out and "gds_ds12" not in out, out
        assert "No such file" not in out
    finally:
        for p in (job, pfs_dir / f"{tag}.out"):
            p.unlink(missing_ok=True)


def test_run_passes_exit_code_and_sbatch_args(cluster: ClusterHandle, mpihello_in_store: str) -> None:
    res = shoal("run", "--cluster", cluster.name, "--image", "mpihello", "--method", "untar",
                "--nodes", "1", "--sbatch-arg=--job-name=usabtest", "--json", "--",
                "sh", "-c", "echo out; exit 3")
    assert res.returncode == 3, res.stderr
    doc = json.loads(res.stdout)
    assert doc["kind"] == "run" and doc["returncode"] == 3 and doc["stdout"] == "out\n"
    job = doc["staging"]["job"]
    name = cluster.ctl("sacct", "-n", "-X", "-P", "-o", "JobName", "-j", job).stdout.strip()
    assert name == "usabtest"
