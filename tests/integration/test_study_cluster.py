"""`shoal study` end to end on the session's virtual cluster: jobs really run, records land in the
database, the report has plots and answers; resume after the harness is killed; and the
`existing` path (the harness inside the controller, using only the Slurm on PATH, as a site).

Small on purpose (mpihello image, catwalk/statwalk/mpihello workloads, 1-2 nodes; pynamic and
LAMMPS once each on 2 nodes): the four tests take about 2.5 minutes together on the 2-core VM.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.study.db import DB_NAME
from tests.conftest import ClusterHandle

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
IMAGE = "mpihello"
VENV_SHOAL = Path(sys.executable).parent / "shoal"


def spec_text(name: str, cluster: str, methods: list[str], workloads: list[str],
              nodes: list[int], reps: int, *, existing: bool = False) -> str:
    q = ", ".join
    cl = ('kind = "existing"\nstore = "/pfs/store"\n' if existing
          else f'kind = "virtual"\nname = "{cluster}"\nnodes = 4\n')
    return (f'[study]\nname = "{name}"\nrepetitions = {reps}\ntimeout = "2m"\nconcurrency = 2\n'
            f'cache = "warm"\nwarmup = false\n'
            f"[cluster]\n{cl}"
            f'[matrix]\nimages = ["{IMAGE}"]\nmethods = [{q(repr(m) for m in methods)}]\n'
            f"workloads = [{q(repr(w) for w in workloads)}]\n"
            f"node_counts = [{q(str(n) for n in nodes)}]\n").replace("'", '"')


def shoal(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli.main", *args], text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def study_dir(cluster: ClusterHandle, mpihello_in_store: str, tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # the nodes' copies of the job outputs live on the cluster's /pfs
    from shoal.cluster.state import ClusterDir

    shutil.rmtree(ClusterDir(cluster.name).pfs / "shoal-study", ignore_errors=True)


def test_study_fills_db_and_writes_report(cluster: ClusterHandle, study_dir: Path) -> None:
    spec = study_dir / "it.toml"
    spec.write_text(spec_text("it", cluster.name, ["untar", "squashfuse"], ["catwalk"], [1, 2], 2))
    out = study_dir / "res"
    done = shoal("study", "run", str(spec), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    db = out / DB_NAME
    states = rows(db, "SELECT state, COUNT(*) FROM run GROUP BY state")
    assert states == [("COMPLETED", 8)], states
    # one record per node: 2 methods x (1 + 2 nodes) x 2 repetitions
    recs = rows(db, "SELECT node, ok, stage_seconds, workload_seconds, bytes_from_storage, "
                    "fom_json FROM node_record")
    assert len(recs) == 12
    assert {r[0] for r in recs} <= set(cluster.nodes)
    for _node, ok, stage_s, wl_s, storage, fom in recs:
        # bytes from storage are counted at the storage server: the session cluster's bind
        # storage has none, so the figure is there but counts only what crossed the node link
        assert ok == 1 and stage_s > 0 and wl_s > 0 and storage >= 0
        assert '"workload": "catwalk"' in str(fom) and '"errors": 0' in str(fom)
    env = rows(db, "SELECT network_params_json, image_digests_json, slurm_version "
                   "FROM environment")
    assert env and '"rate_mbit"' in str(env[-1][0]) and IMAGE in str(env[-1][1])
    assert str(env[-1][2]).startswith("22.")
    # nothing left on the nodes
    for node in cluster.nodes:
        left = cluster.on(node, "sh", "-c", "ls -A /tmp/shoal 2>/dev/null | wc -l").stdout
        assert left.strip() == "0", f"{node} keeps staged files"

    rep = shoal("study", "report", str(out))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (out / "report.md").read_text()
    assert "## Answers" in md and "FUSE" in md
    assert (out / "report.html").is_file()
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    # (no FUSE-vs-kernel or sbcast plot: those methods are not in this study)
    assert {"staging_vs_nodes.png", "total_by_workload.png",
            "bytes_storage_vs_nodes.png"} <= set(plots), plots
    assert all((out / "plots" / p).stat().st_size > 1000 for p in plots)


def test_resume_after_killing_the_harness(cluster: ClusterHandle, study_dir: Path) -> None:
    spec = study_dir / "rs.toml"
    spec.write_text(spec_text("rs", cluster.name, ["untar", "shared-dir"], ["statwalk"], [1, 2],
                              2))
    out = study_dir / "res"
    db = out / DB_NAME
    argv = [sys.executable, "-m", "shoal.cli.main", "study", "run", str(spec), "--out", str(out)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if db.exists() and rows(db, "SELECT COUNT(*) FROM run WHERE state = 'COMPLETED'")[
                    0][0]:
                break
            assert proc.poll() is None, "the harness ended before it was killed"
            time.sleep(0.3)
        else:
            pytest.fail("no run completed within 120 s")
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no Ctrl-C handler runs
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = rows(db, "SELECT experiment_id, rep, job_id FROM run WHERE state = 'COMPLETED'")
    assert 1 <= len(before) < 8

    done = shoal("study", "run", str(spec), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    after = rows(db, "SELECT experiment_id, rep, job_id FROM run WHERE state = 'COMPLETED'")
    assert len(after) == 8
    assert len({(e, r) for e, r, _ in after}) == 8, "a run completed twice"
    # completed runs were not run again: same job ids
    assert set(before) <= set(after)
    # every job id belongs to one run only (a re-attached job is not submitted twice)
    ids = [j for _, _, j in rows(db, "SELECT experiment_id, rep, job_id FROM run "
                                     "WHERE job_id IS NOT NULL")]
    assert len(ids) == len(set(ids))


def test_existing_cluster_path_inside_the_controller(cluster: ClusterHandle,
                                                     study_dir: Path) -> None:
    """The harness as a site runs it: inside the controller, the Slurm on PATH, no prefix."""
    from shoal.cluster.state import ClusterDir

    pfs = ClusterDir(cluster.name).pfs
    work = pfs / "shoal-study" / "existing-test"
    work.mkdir(parents=True, exist_ok=True)
    (work / "ex.toml").write_text(spec_text("ex", cluster.name, ["sbcast"], ["mpihello"], [1, 2],
                                            1, existing=True))
    done = cluster.ctl(str(VENV_SHOAL), "study", "run", "/pfs/shoal-study/existing-test/ex.toml",
                       "--out", "/pfs/shoal-study/existing-test/res", check=False, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    db = work / "res" / DB_NAME
    assert rows(db, "SELECT state, COUNT(*) FROM run GROUP BY state") == [("COMPLETED", 2)]
    foms = rows(db, "SELECT fom_json FROM node_record")
    assert len(foms) == 3 and all('"ring_passed": true' in str(f[0]) for f in foms)
    env = rows(db, "SELECT cluster_kind FROM environment")
    assert env[-1][0] == "existing"


def test_real_applications_through_the_harness(cluster: ClusterHandle, study_dir: Path) -> None:
    """pynamic (hundreds of Python modules, one process per core) and LAMMPS (MPI, one rank per
    node) run as study workloads, each in its own image: records carry their figures of merit."""
    from shoal.images.catalog import ensure_in_store

    for image in ("pynamic", "lammps"):
        ensure_in_store(image)
    spec = study_dir / "apps.toml"
    spec.write_text(
        '[study]\nname = "apps"\nrepetitions = 1\ntimeout = "4m"\ncache = "warm"\nwarmup = false\n'
        f'[cluster]\nkind = "virtual"\nname = "{cluster.name}"\nnodes = 4\n'
        '[matrix]\nimages = ["pynamic", "lammps"]\nmethods = ["squashfs-kernel"]\n'
        'workloads = ["pynamic", "lammps"]\nnode_counts = [2]\n'
        'exclude = [{image = "pynamic", workload = "lammps"}, {image = "lammps", workload = "pynamic"}]\n')
    out = study_dir / "res"
    done = shoal("study", "run", str(spec), "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    db = out / DB_NAME
    assert rows(db, "SELECT state, COUNT(*) FROM run GROUP BY state") == [("COMPLETED", 2)]
    foms = [str(f[0]) for f in rows(db, "SELECT fom_json FROM node_record WHERE ok = 1")]
    assert len(foms) == 4, foms
    assert sum('"workload": "pynamic"' in f for f in foms) == 2, foms
    assert sum('"workload": "lammps"' in f for f in foms) == 2, foms
