"""A site's users on the virtual cluster (issue: real-site usability): the classic hand-written
Charliecloud job (ch-convert on the nodes, quiet MPI), `cluster exec` in the caller's cwd, and
`shoal run` passing the command's exit status and the site's sbatch options through."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
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
        # submitted from the login shell a user gets (`shoal cluster exec`)
        res = shoal("cluster", "exec", "--cluster", cluster.name, "--", "env", "USER=root",
                    "sbatch", "--wait", f"--output=/pfs/{tag}.out", f"/pfs/{tag}.sh")
        out = (pfs_dir / f"{tag}.out").read_text()
        assert res.returncode == 0, out
        assert "ring passed size=2" in out, out
        assert "PMIX ERROR" not in out and "gds_ds12" not in out, out
        assert "execve" not in out and "ch-convert: No such file" not in out
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
    # Every accounting record of that id (--duplicates): a CI run once saw the name of another
    # job ("allocation") under it, unexplained; the job's own record must carry the sbatch arg.
    names: list[str] = []
    for _ in range(20):
        names = cluster.ctl("sacct", "-n", "-X", "-P", "-D", "-o", "JobName", "-j", job).stdout.split()
        if "usabtest" in names:
            break
        time.sleep(0.5)
    assert "usabtest" in names, names


def test_login_node_runs_with_the_site_configuration(cluster: ClusterHandle,
                                                    mpihello_in_store: str) -> None:
    """On the login node, with no SHOAL_* variables and no --cluster (the Slurm on PATH, as on a
    real site), the cluster's /etc/shoal/shoal.toml points shoal at /pfs/store, where the nodes see
    it; before, shoal took the host default /var/lib/shoal/store, which the nodes do not have.
    As a site's user runs it: uid 1000 in its home, with shoal installed the way a site installs
    it, Debian's python3 with the checkout and its dependencies on the path (the login node hides
    /root, and so this venv's interpreter)."""
    site = cluster.ctl("cat", "/etc/shoal/shoal.toml").stdout
    assert 'store = "/pfs/store"' in site
    assert 'store = "/pfs/store"' in cluster.on(cluster.nodes[0], "cat", "/etc/shoal/shoal.toml").stdout
    site_packages = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    as_user = ["runuser", "-u", "shoal", "--", "env", "-u", "SHOAL_STORE", "-u", "SHOAL_CLUSTER",
               "HOME=/home/shoal", "USER=shoal", f"PYTHONPATH={REPO}:{site_packages}",
               "sh", "-c", 'cd && exec /usr/bin/python3 -m shoal.cli.main "$@"', "shoal"]
    res = cluster.ctl(*as_user, "run", "--image", "mpihello", "--method", "untar", "--nodes", "2",
                      "--", "id", "-u", check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1000", "1000"]  # one line per node, the user's, nothing else


def test_study_run_boots_the_specs_cluster_and_takes_it_down(mpihello_in_store: str,
                                                             tmp_path: Path) -> None:
    """`shoal study run SPEC` with the spec's cluster not up: booted, used, taken down (said on
    stderr; --json says cluster_booted)."""
    from shoal.cluster.state import ClusterDir

    name = "usabst"
    if os.geteuid() != 0:
        pytest.skip("boots a cluster: needs root")
    assert not ClusterDir(name).exists(), f"leftover cluster {name}: shoal cluster down --cluster {name}"
    spec = tmp_path / "s.toml"
    spec.write_text(f"""[study]
name = "boot"
repetitions = 1
timeout = "00:03:00"
[cluster]
kind = "virtual"
name = "{name}"
nodes = 1
[matrix]
images = ["mpihello"]
methods = ["untar"]
workloads = ["catwalk"]
node_counts = [1]
""")
    try:
        # results where the login node sees them (it has its own /tmp)
        out = REPO / "results" / f"test-usab-boot-{os.getpid()}"
        res = shoal("study", "run", str(spec), "--out", str(out), "--json", timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        doc = json.loads(res.stdout)
        assert doc["kind"] == "study.run" and doc["cluster_booted"] and not doc["cluster_kept"]
        assert doc["completed"] >= 1 and doc["failed"] == 0, res.stderr[-3000:]  # (+ warm-up run)
        assert f"cluster {name!r} is not up: booting it" in res.stderr or "booted cluster" in res.stderr
        assert not ClusterDir(name).exists()
    finally:
        shutil.rmtree(REPO / "results" / f"test-usab-boot-{os.getpid()}", ignore_errors=True)
        if ClusterDir(name).exists():
            from shoal.cluster import manager

            manager.down(name)
