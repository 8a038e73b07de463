"""Capture real Slurm output of finished jobs for the unit tests (run as root, ~2 minutes).

    .venv/bin/python tests/unit/data/capture_slurm.py [--name shapecap]

Boots a 2-node virtual cluster (removed afterwards, also on failure), submits three jobs that end
COMPLETED (`true`), FAILED (`exit 3`) and TIMEOUT (`sleep 600` with a 1-minute limit), waits for
them, and writes what Slurm 22.05 prints about them: ``squeue_22.05_jobs_captured.json`` and
``sacct_22.05_jobs_captured.json`` next to this file, plus ``jobs_captured.json`` naming which job
id ended how. test_slurm_client.py parses these files; nothing here is edited by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shoal.cluster import manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import enter_prefix, slurm_client
from shoal.runner import run

HERE = Path(__file__).resolve().parent
JOBS = {"COMPLETED": "true", "FAILED": "exit 3", "TIMEOUT": "exec sleep 600"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="shapecap", help="cluster name (must be free)")
    args = ap.parse_args()
    with manager.booted(ClusterConfig(name=args.name, nodes=2)) as res:
        state = res.state
        client = slurm_client(state, timeout=60)
        ids = {
            want: client.submit_command(cmd, ["--nodes=1", "--time=1", "--output=/dev/null",
                                              f"--job-name=capture-{want.lower()}"])
            for want, cmd in JOBS.items()
        }
        # a 1-minute limit ends after 60 s plus KillWait; sacct may lag the end by a moment
        final = client.wait(ids.values(), timeout=240)
        got = {want: str(final[i].state) for want, i in ids.items()}
        if got != {w: w for w in JOBS}:
            raise SystemExit(f"jobs ended {got}, wanted each state once")
        prefix = enter_prefix(state, "ctl")
        jobs = ",".join(str(i) for i in ids.values())
        squeue = run([*prefix, "squeue", "--json"], timeout=60).stdout
        sacct = run([*prefix, "sacct", "--json", f"--jobs={jobs}"], timeout=60).stdout
    (HERE / "squeue_22.05_jobs_captured.json").write_text(squeue)
    (HERE / "sacct_22.05_jobs_captured.json").write_text(sacct)
    (HERE / "jobs_captured.json").write_text(json.dumps(ids, indent=1, sort_keys=True) + "\n")
    print(f"captured jobs {ids}")


if __name__ == "__main__":
    main()
