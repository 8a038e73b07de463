"""A small Slurm client: sbatch, squeue, sacct, scancel, sinfo, scontrol, reached only through
``shoal.runner.run``.

Written against Slurm 22.05.8 and its JSON output (openapi plugin v0.0.38 for squeue/sinfo,
dbv0.0.38 for sacct). scontrol has no --json in 22.05, so nodes also come from
``scontrol show node -o`` (one record per line). A ``SlurmClient`` prepends an optional command
prefix to every argv (e.g. ``nsenter --net=/var/run/netns/ctl --``, so the commands talk to a
virtual cluster's controller from inside its network namespace) and passes an optional env.

Job states are ``JobState`` members; unknown strings become ``JobState.UNKNOWN`` rather than an
error, because newer Slurm versions add states and a monitor must not crash on them.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shoal import runner
from shoal.errors import CommandError, SlurmError
from shoal.slurm.hostlist import expand

T = TypeVar("T")

# Slurm's "no value" markers for 32-bit fields (NO_VAL, INFINITE).
_NO_VAL = {0xFFFFFFFE, 0xFFFFFFFF}


class AccountingUnavailable(SlurmError):
    """sacct cannot answer: the cluster runs without slurmdbd (AccountingStorageType=none)."""


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    STAGE_OUT = "STAGE_OUT"
    SIGNALING = "SIGNALING"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REVOKED = "REVOKED"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str | None) -> JobState:
        # sacct's text form says "CANCELLED by 0"; 22.05 JSON may also carry flags after a space.
        word = (text or "").strip().split(" ")[0].upper()
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def ok(self) -> bool:
        return self is JobState.COMPLETED


_TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.CANCELLED,
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.OUT_OF_MEMORY,
        JobState.REVOKED,
        JobState.SPECIAL_EXIT,
    }
)


@dataclass(frozen=True)
class Job:
    """One job as squeue or sacct reports it. Times are epoch seconds, None when not yet known."""

    job_id: int
    name: str
    state: JobState
    reason: str
    exit_code: int | None
    signal: int | None
    submit_time: int | None
    start_time: int | None
    end_time: int | None
    node_list: str
    nodes: tuple[str, ...]
    stdout: str | None = None
    source: str = "squeue"

    @property
    def seconds(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return float(self.end_time - self.start_time)


@dataclass(frozen=True)
class Node:
    """One node as sinfo --json or scontrol show node reports it."""

    name: str
    state: str  # base state, lower case: idle, allocated, mixed, down, ...
    flags: tuple[str, ...] = ()  # DRAIN, NOT_RESPONDING, ...
    cpus: int = 0
    real_memory_mb: int = 0
    address: str = ""
    hostname: str = ""
    partitions: tuple[str, ...] = ()
    reason: str = ""
    version: str = ""
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def usable(self) -> bool:
        bad = {"DRAIN", "DRAINING", "DRAINED", "NOT_RESPONDING", "FAIL", "MAINTENANCE", "REBOOT"}
        return self.state in {"idle", "mixed", "allocated", "completing"} and not (
            bad & set(self.flags)
        )


@dataclass(frozen=True)
class SlurmVersion:
    release: str  # "22.05.8"

    @property
    def major_minor(self) -> tuple[int, int]:
        parts = self.release.split(".")
        return int(parts[0]), int(parts[1])


class SlurmClient:
    """Runs Slurm's commands (optionally behind a prefix such as nsenter) and parses their output."""

    def __init__(
        self,
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.prefix = list(prefix)
        self.env = dict(env) if env is not None else None
        self.timeout = timeout
        # None = not tried yet; False once sacct said accounting is disabled (don't ask again).
        self._accounting: bool | None = None

    # -- plumbing -------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], *, check: bool = True, what: str | None = None,
             hint: str | None = None) -> runner.Completed:
        return runner.run(
            [*self.prefix, *argv],
            check=check,
            timeout=self.timeout,
            env=self.env,
            what=what or argv[0],
            hint=hint or "is the cluster up? try `shoal cluster status`",
        )

    def _json(self, argv: Sequence[str]) -> dict[str, Any]:
        out = self._run(argv).stdout
        try:
            data = json.loads(out)
        except json.JSONDecodeError as exc:
            raise SlurmError(
                f"{argv[0]} printed no JSON ({exc.msg} at char {exc.pos})",
                "Slurm 22.05 or newer is needed for --json output",
            ) from None
        if not isinstance(data, dict):
            raise SlurmError(f"{argv[0]} --json printed a {type(data).__name__}, not an object")
        errors = data.get("errors") or []
        if errors:
            first = errors[0] if isinstance(errors[0], dict) else {"error": str(errors[0])}
            raise SlurmError(f"{argv[0]} reported: {first.get('error') or first}")
        return data

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, script: str | Path, args: Sequence[str] = ()) -> int:
        """sbatch --parsable SCRIPT; returns the job id. #SBATCH lines in the script hold options."""
        out = self._run(["sbatch", "--parsable", *args, str(script)], what="sbatch").stdout
        return parse_sbatch_parsable(out)

    def submit_command(self, command: str, args: Sequence[str] = ()) -> int:
        """sbatch --parsable ARGS --wrap COMMAND (a job without a script file); returns its id."""
        out = self._run(["sbatch", "--parsable", *args, "--wrap", command], what="sbatch").stdout
        return parse_sbatch_parsable(out)

    def release(self, job_id: int) -> None:
        """scontrol release: let a job submitted with --hold be scheduled."""
        self._run(["scontrol", "release", str(job_id)], what=f"scontrol release {job_id}")

    def queue(self) -> list[Job]:
        """All jobs slurmctld still knows (squeue --json); finished ones stay for MinJobAge."""
        data = self._json(["squeue", "--json"])
        return [parse_squeue_job(j) for j in data.get("jobs") or []]

    def accounting(self, job_ids: Iterable[int]) -> list[Job]:
        """The accounting records of JOB_IDS (sacct --json); the last record wins per id."""
        ids = sorted(set(job_ids))
        if not ids:
            return []
        argv = ["sacct", "--json", "--jobs=" + ",".join(map(str, ids))]
        try:
            data = self._json(argv)
        except CommandError as exc:
            if "accounting storage is disabled" in (exc.stderr + exc.stdout).lower():
                raise AccountingUnavailable(
                    "sacct: Slurm accounting storage is disabled on this cluster",
                    "job states then come from squeue only",
                ) from None
            raise
        wanted = set(ids)
        by_id: dict[int, Job] = {}
        for raw in data.get("jobs") or []:
            job = parse_sacct_job(raw)
            if job.job_id in wanted:
                by_id[job.job_id] = job
        return list(by_id.values())

    def job_states(self, job_ids: Iterable[int]) -> dict[int, Job]:
        """The newest known state of each job: squeue first, sacct only for jobs squeue no
        longer lists (so a poll costs one command while jobs run). Ids neither knows are absent."""
        wanted = set(job_ids)
        found = {j.job_id: j for j in self.queue() if j.job_id in wanted}
        missing = wanted - set(found)
        if missing and self._accounting is not False:
            try:
                for job in self.accounting(missing):
                    found[job.job_id] = job
                self._accounting = True
            except AccountingUnavailable:
                self._accounting = False
        return found

    def cancel(self, job_ids: Iterable[int], *, signal: str | None = None) -> None:
        ids = [str(i) for i in sorted(set(job_ids))]
        if not ids:
            return
        argv = ["scancel"]
        if signal:
            argv.append(f"--signal={signal}")
        # scancel exits non-zero for jobs that already ended; that is not a failure to us.
        self._run([*argv, *ids], check=False, what="scancel")

    def cancel_name(self, name: str) -> None:
        """Cancel the user's jobs called NAME (for a job whose id we never learned)."""
        self._run(["scancel", f"--name={name}"], check=False, what="scancel")

    def wait(
        self,
        job_ids: Iterable[int],
        *,
        timeout: float,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> dict[int, Job]:
        """Poll until every job in JOB_IDS is in a terminal state; returns their final records."""
        ids = set(job_ids)

        def done() -> dict[int, Job] | None:
            states = self.job_states(ids)
            if all(i in states and states[i].state.terminal for i in ids):
                return states
            return None

        return poll(done, timeout=timeout, backoff=backoff, sleep=sleep, clock=clock,
                    what=f"jobs {sorted(ids)}")

    # -- nodes ----------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        """Nodes as sinfo --json reports them (one entry per node)."""
        data = self._json(["sinfo", "--json"])
        seen: dict[str, Node] = {}
        for raw in data.get("nodes") or []:
            node = parse_sinfo_node(raw)
            seen.setdefault(node.name, node)
        return list(seen.values())

    def node_states(self) -> dict[str, str]:
        """Node name -> sinfo's compact state (idle, alloc, mix, drain, drng, down*, ...).

        The compact form keeps what a caller waiting for a node needs in one word: "idle" means
        no jobs and no flag such as DRAIN or NOT_RESPONDING (the "*" suffix)."""
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %t"], what="sinfo").stdout
        return parse_sinfo_states(out)

    def update_node(self, name: str, *settings: str) -> None:
        """scontrol update NodeName=NAME SETTING... (State=DRAIN Reason=..., State=RESUME)."""
        self._run(["scontrol", "update", f"NodeName={name}", *settings],
                  what=f"scontrol update {name}")

    def show_nodes(self) -> list[Node]:
        """Nodes as `scontrol show node -o` reports them (22.05 scontrol has no --json)."""
        out = self._run(["scontrol", "show", "node", "-o"], what="scontrol show node").stdout
        return [parse_scontrol_node(line) for line in out.splitlines() if line.strip()]

    def update_nodes(self, hostlist: str, state: str, reason: str = "", *,
                     check: bool = True) -> runner.Completed:
        """`scontrol update NodeName=HOSTLIST State=STATE [Reason=REASON]` (DOWN/DRAIN need one)."""
        argv = ["scontrol", "update", f"NodeName={hostlist}", f"State={state}"]
        if reason:
            argv.append(f"Reason={reason}")
        return self._run(argv, check=check, what=f"scontrol update {hostlist} State={state}")

    def version(self) -> SlurmVersion:
        out = self._run(["sinfo", "--version"], what="sinfo --version").stdout.strip()
        m = re.search(r"(\d+\.\d+\.\d+)", out)
        if not m:
            raise SlurmError(f"cannot read the Slurm version from {out!r}")
        return SlurmVersion(m.group(1))


# -- parsing (pure functions, tested with recorded output) ----------------------------------
def _epoch(value: Any) -> int | None:
    if isinstance(value, dict):  # newer Slurm: {"set": true, "number": N}
        if not value.get("set", True):
            return None
        value = value.get("number")
    if not isinstance(value, int) or value <= 0 or value in _NO_VAL:
        return None
    return value


def _wait_status(raw: Any) -> tuple[int | None, int | None]:
    """(exit code, signal) from a raw wait(2) status as squeue reports it."""
    if not isinstance(raw, int) or raw < 0 or raw in _NO_VAL:
        return None, None
    sig = raw & 0x7F
    if sig:
        return None, sig
    return (raw >> 8) & 0xFF, None


def parse_squeue_job(raw: Mapping[str, Any]) -> Job:
    code, sig = _wait_status(raw.get("exit_code"))
    node_list = str(raw.get("nodes") or "")
    return Job(
        job_id=int(raw["job_id"]),
        name=str(raw.get("name") or ""),
        state=JobState.parse(raw.get("job_state")),
        reason=str(raw.get("state_reason") or ""),
        exit_code=code,
        signal=sig,
        submit_time=_epoch(raw.get("submit_time")),
        start_time=_epoch(raw.get("start_time")),
        end_time=_epoch(raw.get("end_time")),
        node_list=node_list,
        nodes=tuple(expand(node_list)),
        stdout=raw.get("standard_output") or None,
        source="squeue",
    )


def parse_sacct_job(raw: Mapping[str, Any]) -> Job:
    state = raw.get("state") or {}
    times = raw.get("time") or {}
    ec = raw.get("exit_code") or {}
    code: int | None = None
    sig: int | None = None
    status = str(ec.get("status") or "")
    # 22.05's dumper labels every normal exit "SUCCESS"/0 (WIFEXITED test), so the job state,
    # not this field, decides success; a return_code is still kept when one is given.
    if status in ("SUCCESS", "ERROR"):
        rc = ec.get("return_code")
        code = int(rc) if isinstance(rc, int) else None
    elif status == "SIGNALED":
        sig_d = ec.get("signal") or {}
        sig = int(sig_d["signal_id"]) if isinstance(sig_d.get("signal_id"), int) else None
    job_state = JobState.parse(state.get("current") if isinstance(state, dict) else state)
    if status == "SUCCESS" and job_state is not JobState.COMPLETED:
        # seen on a real 22.05 (tests/unit/data/sacct_22.05_jobs_captured.json): a batch script
        # that exited 3 is FAILED with exit_code SUCCESS/0; squeue has the real code
        code = None
    node_list = str(raw.get("nodes") or "")
    if node_list == "None assigned":
        node_list = ""
    return Job(
        job_id=int(raw["job_id"]),
        name=str(raw.get("name") or ""),
        state=job_state,
        reason=str(state.get("reason") or "") if isinstance(state, dict) else "",
        exit_code=code,
        signal=sig,
        submit_time=_epoch(times.get("submission")),
        start_time=_epoch(times.get("start")),
        end_time=_epoch(times.get("end")),
        node_list=node_list,
        nodes=tuple(expand(node_list)),
        stdout=None,
        source="sacct",
    )


def parse_sinfo_node(raw: Mapping[str, Any]) -> Node:
    return Node(
        name=str(raw["name"]),
        state=str(raw.get("state") or "unknown").lower(),
        flags=tuple(str(f).upper() for f in raw.get("state_flags") or ()),
        cpus=int(raw.get("cpus") or 0),
        real_memory_mb=int(raw.get("real_memory") or 0),
        address=str(raw.get("address") or ""),
        hostname=str(raw.get("hostname") or ""),
        partitions=tuple(str(p) for p in raw.get("partitions") or ()),
        reason=str(raw.get("reason") or ""),
        version=str(raw.get("slurmd_version") or ""),
    )


def parse_sbatch_parsable(out: str) -> int:
    """The job id from `sbatch --parsable` output: "JOBID" or "JOBID;CLUSTER" on the last line
    (warnings may come on lines before it)."""
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    if lines:
        m = re.match(r"^(\d+)(;.*)?$", lines[-1])
        if m:
            return int(m.group(1))
    raise SlurmError(f"sbatch printed no job id: {out.strip()[:200]!r}")


def parse_sinfo_states(text: str) -> dict[str, str]:
    """`sinfo -h -N -o "%N %t"` output into node name -> compact state."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


# A key starts a new field when it follows a space and is made of word characters then "=";
# values such as OS=Linux 6.1.0 #1 SMP ... or Reason=Not responding [slurm@...] contain spaces.
_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One `scontrol show ... -o` line into a key -> value dict (values keep inner spaces)."""
    matches = list(_FIELD.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def parse_scontrol_node(line: str) -> Node:
    rec = parse_scontrol_record(line)
    if "NodeName" not in rec:
        raise SlurmError(f"scontrol show node: no NodeName in {line[:120]!r}")
    state_text = rec.get("State", "UNKNOWN")
    flags: list[str] = []
    if state_text.endswith("*"):
        state_text = state_text[:-1]
        flags.append("NOT_RESPONDING")
    base, *rest = state_text.split("+")
    flags.extend(f.upper() for f in rest)

    def num(key: str) -> int:
        try:
            return int(rec.get(key, "0"))
        except ValueError:
            return 0

    parts = rec.get("Partitions", "")
    reason = rec.get("Reason", "")
    return Node(
        name=rec["NodeName"],
        state=base.lower(),
        flags=tuple(flags),
        cpus=num("CPUTot"),
        real_memory_mb=num("RealMemory"),
        address=rec.get("NodeAddr", ""),
        hostname=rec.get("NodeHostName", ""),
        partitions=tuple(p for p in parts.split(",") if p),
        reason="" if reason in ("", "(null)", "None") else reason,
        version=rec.get("Version", ""),
        raw=rec,
    )


# -- polling --------------------------------------------------------------------------------
@dataclass
class Backoff:
    """Poll intervals that grow while nothing changes and start small again after a change."""

    initial: float = 0.25
    factor: float = 1.6
    maximum: float = 5.0
    _next: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


def poll(
    fetch: Callable[[], T | None],
    *,
    timeout: float,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    what: str = "condition",
) -> T:
    """Call FETCH until it returns something other than None; SlurmError after TIMEOUT seconds."""
    back = backoff or Backoff()
    deadline = clock() + timeout
    while True:
        got = fetch()
        if got is not None:
            return got
        now = clock()
        if now >= deadline:
            raise SlurmError(
                f"timed out after {timeout:g} s waiting for {what}",
                "check `squeue` on the cluster; raise the timeout if the jobs are just slow",
            )
        sleep(min(back.next(), max(deadline - now, 0.0)))
