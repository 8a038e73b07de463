"""The batch script of one run, and the per-node records the job prints (the job contract).

The script (``render_script``) is a header of #SBATCH lines plus ``job_body``. The body runs on
the first node of the allocation, where there is no venv: it calls the node agent bundle
(shoal.bundle, published in the image store) with plain python3, whose ``job`` subcommand
(shoal.staging.jobstep) stages the image with the run's method on every node (srun, one task per
node, plus sbcast for broadcast methods), runs the workload in it, cleans up, and prints ONE JSON
line per node (a per-node record) into the job's output file. The harness reads every line of that
file that parses as a JSON object with a "node" key; other lines are kept only to explain failures.

The record's keys, and the lines that mark the job's start and end, are defined once in
shoal.staging.record (the node side prints them, this side parses them); keys not in
JOB_RECORD_KEYS are kept in ``extra``.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.paths import CLUSTER_STORE_PATH
from shoal.staging.record import JOB_RECORD_KEYS, job_end_line, job_start_line
from shoal.study.matrix import RunKey


@dataclass(frozen=True)
class JobContext:
    """Where things are as the job sees them, and how to call shoal on the nodes."""

    # Where job output files go, as the nodes see it (shared with the harness, e.g. under /pfs
    # for a virtual cluster); also the job's working directory.
    logs_dir: str
    # The node agent bundle as the nodes see it (shoal.bundle.publish puts it in the store)
    agent: str = f"{CLUSTER_STORE_PATH}/.shoal/agent.pyz"
    python: str = "python3"
    store_dir: str = CLUSTER_STORE_PATH
    partition: str | None = None
    time_limit_s: float = 600.0
    extra_sbatch: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def output_path(ctx: JobContext, key: RunKey, attempt: int) -> str:
    return f"{ctx.logs_dir}/{output_name(key, attempt)}"


def output_name(key: RunKey, attempt: int) -> str:
    return f"{key.name}-a{attempt}.out"


def job_name(key: RunKey, attempt: int) -> str:
    return f"shoal-{key.name}-a{attempt}"


# the agent's own steps must end before Slurm's time limit kills the job without records
JOB_MARGIN_S = 20.0


def job_body(key: RunKey, ctx: JobContext) -> str:
    """The commands of the job: stage + workload on every node, one JSON record per node.

    Contract with shoal.staging.jobstep: ``python3 AGENT --store STORE job --method M --image I
    --workload W`` run once in the batch script does every step on every node of the allocation
    and prints one record line per node (keys in the module docstring) even when a step fails.
    """
    e = key.experiment
    budget = max(30.0, ctx.time_limit_s - JOB_MARGIN_S)
    return "\n".join([
        f"{shlex.quote(ctx.python)} {shlex.quote(ctx.agent)} --store {shlex.quote(ctx.store_dir)} "
        f"job \\",
        f"    --method {shlex.quote(e.method)} --image {shlex.quote(e.image)} "
        f"--workload {shlex.quote(e.workload)} --timeout {budget:.0f}",
    ])


def render_script(key: RunKey, ctx: JobContext, attempt: int) -> str:
    e = key.experiment
    minutes = max(1, math.ceil(ctx.time_limit_s / 60))
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name(key, attempt)}",
        f"#SBATCH --nodes={e.nodes}",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        f"#SBATCH --time={minutes}",
        f"#SBATCH --output={output_path(ctx, key, attempt)}",
        f"#SBATCH --chdir={ctx.logs_dir}",
    ]
    if ctx.partition:
        lines.append(f"#SBATCH --partition={ctx.partition}")
    lines += [f"#SBATCH {arg}" for arg in ctx.extra_sbatch]
    lines += [
        f"# shoal study run {key.name} attempt {attempt}: {e.label()}",
        "set -u",
        f"export SHOAL_EXPERIMENT={e.id} SHOAL_REP={key.rep} SHOAL_ATTEMPT={attempt}",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(ctx.env.items())]
    lines += [
        # the harness times the job from these two lines as well as from Slurm's accounting
        job_start_line(),
        job_body(key, ctx),
        "rc=$?",
        job_end_line("$rc"),
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class NodeRecord:
    node: str
    ok: bool
    error: str | None = None
    method: str | None = None
    image_digest: str | None = None
    stage_start: float | None = None
    stage_end: float | None = None
    stage_seconds: float | None = None
    bytes_from_storage: int | None = None
    bytes_net_rx: int | None = None
    peak_bytes: int | None = None
    workload: str | None = None
    workload_seconds: float | None = None
    fom: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float | None:
        """Time to solution: the job step's one clock from its start (before any launch) to the
        last node's workload end, the same for every node of a run (shoal.staging.jobstep);
        stage + workload for records of jobs that did not measure it."""
        tts = self.extra.get("time_to_solution")
        if isinstance(tts, int | float) and not isinstance(tts, bool):
            return float(tts)
        if self.stage_seconds is None or self.workload_seconds is None:
            return None
        return self.stage_seconds + self.workload_seconds


class RecordError(ValueError):
    pass


def _num(d: Mapping[str, Any], key: str, kind: type) -> Any:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RecordError(f"{key} must be a number, got {v!r}")
    return kind(v)


def record_from_dict(d: Mapping[str, Any]) -> NodeRecord:
    node = d.get("node")
    if not isinstance(node, str) or not node:
        raise RecordError("record without a node name")
    ok = d.get("ok")
    if not isinstance(ok, bool):
        raise RecordError(f"record of {node}: ok must be true or false")
    fom = d.get("fom") or {}
    if not isinstance(fom, dict):
        raise RecordError(f"record of {node}: fom must be an object")
    stage_start = _num(d, "stage_start", float)
    stage_end = _num(d, "stage_end", float)
    stage_seconds = _num(d, "stage_seconds", float)
    if stage_seconds is None and stage_start is not None and stage_end is not None:
        stage_seconds = stage_end - stage_start

    def text(key: str) -> str | None:
        v = d.get(key)
        return None if v is None else str(v)

    return NodeRecord(
        node=node, ok=ok, error=text("error"), method=text("method"),
        image_digest=text("image_digest"), stage_start=stage_start, stage_end=stage_end,
        stage_seconds=stage_seconds,
        bytes_from_storage=_num(d, "bytes_from_storage", int),
        bytes_net_rx=_num(d, "bytes_net_rx", int),
        peak_bytes=_num(d, "peak_bytes", int),
        workload=text("workload"),
        workload_seconds=_num(d, "workload_seconds", float),
        fom=fom,
        extra={k: v for k, v in d.items() if k not in JOB_RECORD_KEYS},
    )


@dataclass(frozen=True)
class ParsedOutput:
    records: list[NodeRecord]
    problems: list[str]  # malformed record lines, duplicates
    other_lines: list[str]  # everything else the job printed (for failure reasons)


def parse_output(text: str) -> ParsedOutput:
    """The per-node records in a job's output file; the last record of a node wins."""
    by_node: dict[str, NodeRecord] = {}
    problems: list[str] = []
    other: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s.startswith("{"):
            if s:
                other.append(s)
            continue
        try:
            d = json.loads(s)
        except json.JSONDecodeError as exc:
            problems.append(f"line {n}: not JSON ({exc.msg})")
            continue
        if not isinstance(d, dict) or "node" not in d:
            other.append(s)
            continue
        try:
            rec = record_from_dict(d)
        except RecordError as exc:
            problems.append(f"line {n}: {exc}")
            continue
        if rec.node in by_node:
            problems.append(f"line {n}: second record of {rec.node}")
        by_node[rec.node] = rec
    return ParsedOutput(list(by_node.values()), problems, other)
