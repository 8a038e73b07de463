"""The records the node side prints, and the marks in a job's output: one home for the protocol.

STANDARD LIBRARY ONLY and Python 3.6 compatible (no ``from __future__ import annotations``, no
dataclasses, no ``X | Y``): it runs on the nodes inside the agent bundle (shoal.bundle), and the
study (shoal.study.jobscript, shoal.study.runner) imports the same names on the submit side.

Every agent subcommand prints one JSON object per node (``base_record``: format, phase, node, job,
image, method, ok, error, hint). The ``stage`` record adds the staging figures under the names the
job record uses for the same quantity (STAGE_KEYS). The ``job`` subcommand (shoal.staging.jobstep)
prints ONE job record per node, whose keys are JOB_RECORD_KEYS:

    node                str    host name of the node (required)
    ok                  bool   the node staged the image and ran the workload (required)
    error               str    why not, when ok is false
    method              str    distribution method name
    image_digest        str    sha256 of the image as staged (proves which image ran)
    stage_start         float  epoch seconds when staging began on the node
    stage_end           float  epoch seconds when the image was usable on the node
    stage_seconds       float  stage_end - stage_start (kept even if the clocks are unknown)
    bytes_from_storage  int    bytes this node read from the shared storage for the run: the
                               staging copy, reads through a mount of a file on shared storage,
                               a shared-dir workload's reads, the batch node's sbcast source read
                               (stage_bytes_from_storage: the staging part alone)
    bytes_net_rx        int    bytes received over the network by this node while staging
    peak_bytes          int    peak memory the image used on the node (tmpfs, page cache)
    workload            str    workload name
    workload_seconds    float  run time of the workload on this node (MPI workloads: of the
                               whole MPI step, the same on every node; extra key
                               workload_scope = "job" then, "node" otherwise)
    fom                 dict   the workload's own figures of merit (free-form JSON object; MPI
                               workloads: rank 0's, on every node's record)

Numbers may be null when a method cannot measure them; other keys are extra figures. The batch
script brackets the job's output with a start and an end line (job_start_line, job_end_line); the
study's poller takes END_MARK as "the job is ending" and reads the output at once.
"""

import json
import os
import re
import socket
import sys
import traceback
from typing import Any

from shoal.errors import ShoalError
from shoal.staging.base import FORMAT, Context

JOB_RECORD_KEYS = (
    "node", "ok", "error", "method", "image_digest", "stage_start", "stage_end", "stage_seconds",
    "bytes_from_storage", "bytes_net_rx", "peak_bytes", "workload", "workload_seconds", "fom",
)
# What the `stage` record reports, named as in the job record (same quantity, same name).
STAGE_KEYS = (
    "stage_start", "stage_end", "stage_seconds", "stage_bytes_from_storage", "bytes_net_rx",
    "bytes_net_tx", "peak_bytes", "stage_cpu_seconds",
)

_MARK = "# shoal: job"


def job_start_line() -> str:
    """The batch script's first output line (shell): job id, start time, nodes."""
    return f'echo "{_MARK} $SLURM_JOB_ID start $(date +%s.%N) nodes $SLURM_JOB_NODELIST"'


def job_end_line(rc: str = "$rc") -> str:
    """The batch script's last output line (shell): job id, end time, exit code."""
    return f'echo "{_MARK} $SLURM_JOB_ID end $(date +%s.%N) rc {rc}"'


END_MARK = re.compile(rf"^{re.escape(_MARK)} \d+ end ", re.M)


def node_name() -> "str":
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def emit(record: "dict[str, Any]") -> "None":
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def base_record(phase: "str", ctx: "Context", method: "str | None") -> "dict[str, Any]":
    return {
        "format": FORMAT, "phase": phase, "node": node_name(), "job": ctx.job, "image": ctx.image,
        "method": method, "ok": False, "error": None, "hint": None,
    }


def fail(rec: "dict[str, Any]", exc: "BaseException") -> "dict[str, Any]":
    """Turn an exception into the record's error fields (ok = false)."""
    rec["ok"] = False
    if isinstance(exc, ShoalError):
        rec["error"], rec["hint"] = exc.message, exc.hint
        rec["error_type"] = type(exc).__name__
    else:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["error_type"] = type(exc).__name__
        rec["traceback"] = traceback.format_exc(limit=5)
    return rec
