"""The node agent's per-call record: how every subcommand reports one node's result as one JSON line.

STANDARD LIBRARY ONLY and Python 3.6 compatible (no ``from __future__ import annotations``, no
dataclasses, no ``X | Y``): it runs on the nodes inside the agent bundle (shoal.bundle).
The node agent (subcommands) and the job step (batch side) both build their records here, so the
step does not import the agent that imports it.
"""

import json
import os
import socket
import sys
import traceback
from typing import Any

from shoal.errors import ShoalError
from shoal.staging.base import FORMAT, Context


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
