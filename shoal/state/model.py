"""Records of the state engine: what a node should be (Desired), what it is (Discovered), where the
engine has it (phase, active transition), and the health derived from discovery.

Phases are the nodes of the transition graph. Three are entered by discovery alone (a node is
seen to die, a required service is seen to fail, a node is seen healthy again); the others only
by the engine's declared transitions (shoal/state/transitions.py).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Phase(enum.StrEnum):
    READY = "ready"  # in service as far as the engine is concerned
    OFF = "off"  # discovered dead (PID 1 gone, or no heartbeat)
    DEGRADED = "degraded"  # alive, but a required supervisord program failed
    DRAINED = "drained"  # drained in Slurm by the engine, no jobs left
    SWAPPED = "swapped"  # runs the desired image, still drained
    FAILED = "failed"  # a transition failed or timed out: the engine leaves it alone


# Phases discovery may move a node between (only while no transition is running on it).
DISCOVERY_PHASES = frozenset({Phase.READY, Phase.OFF, Phase.DEGRADED})


class Health(enum.StrEnum):
    OK = "ok"
    DEAD = "dead"
    UNRESPONSIVE = "unresponsive"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"


# supervisord program states (supervisor.states.ProcessStates). FATAL is final: supervisord gave up.
# The others that are not RUNNING are what a routine restart or a crash that autorestart repairs
# passes through; marking the node DOWN then would kill its running jobs for nothing, so they
# count only once they have lasted TRANSIENT_GRACE seconds.
FAILED_PROGRAM_STATES = frozenset({"FATAL"})
TRANSIENT_PROGRAM_STATES = frozenset({"STOPPED", "STOPPING", "EXITED", "BACKOFF", "UNKNOWN"})
PROGRAM_STATES = frozenset(
    {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}
)
TRANSIENT_GRACE = 10.0
REQUIRED_PROGRAMS = ("slurmd", "munged")
POWER_STATES = ("on", "off")


@dataclass
class Desired:
    """What a node should be. image "" means: whatever it runs now."""

    image: str = ""
    power: str = "on"
    frozen: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Discovered:
    """What a node was last seen to be. Times are epoch seconds; 0 = never seen since start."""

    alive: bool | None = None  # None: no direct view of the node's life (a site without a backend)
    alive_at: float = 0.0
    image: str = ""
    programs: dict[str, str] = field(default_factory=dict)
    programs_since: dict[str, float] = field(default_factory=dict)
    programs_at: float = 0.0
    heartbeat: float = 0.0
    boot_id: str = ""  # the listener's start time on the node: changes when the node restarts
    slurm_state: str = ""  # base state, lower case, no '*' (idle, allocated, mixed, down, ...)
    slurm_flags: list[str] = field(default_factory=list)  # DRAIN, NOT_RESPONDING, COMPLETING ...
    slurm_reason: str = ""
    slurmd_start: str = ""
    slurm_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def slurm_text(self) -> str:
        if not self.slurm_state:
            return ""
        return "+".join([self.slurm_state, *[f.lower() for f in self.slurm_flags]])

    @property
    def drained_in_slurm(self) -> bool:
        """Drained with no job left (DRAIN on an idle or down node, nothing completing)."""
        return (
            "DRAIN" in self.slurm_flags
            and self.slurm_state in ("idle", "down")
            and "COMPLETING" not in self.slurm_flags
        )

    @property
    def in_service(self) -> bool:
        bad = {"DRAIN", "NOT_RESPONDING", "FAIL", "MAINTENANCE"}
        return self.slurm_state in ("idle", "mixed", "allocated", "completing") and not (
            bad & set(self.slurm_flags)
        )


@dataclass
class Active:
    """The transition a node is in (persisted, so a restarted service picks it up)."""

    name: str
    started: float
    deadline: float
    action_done: bool = False
    ctx: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NodeRecord:
    name: str
    desired: Desired = field(default_factory=Desired)
    discovered: Discovered = field(default_factory=Discovered)
    phase: Phase = Phase.READY
    reason: str = ""
    active: Active | None = None
    address: str = ""  # where its events may come from ("" = anywhere, authenticated)

    def as_dict(self, now: float, heartbeat_timeout: float) -> dict[str, Any]:
        h, why = health(self.discovered, now, heartbeat_timeout)
        return {
            "name": self.name,
            "cfg": self.desired.as_dict(),
            "dsc": self.discovered.as_dict(),
            "phase": str(self.phase),
            "reason": self.reason,
            "health": str(h),
            "health_reason": why,
            "transition": self.active.as_dict() if self.active else None,
        }


def health(
    d: Discovered,
    now: float,
    heartbeat_timeout: float,
    required: tuple[str, ...] = REQUIRED_PROGRAMS,
) -> tuple[Health, str]:
    """Health from discovery alone, with a short reason (it becomes Slurm's Reason)."""
    if d.alive is False:
        return Health.DEAD, "node died"
    # Heartbeats count only once one has been seen since the service started: a node whose
    # listener has not reported yet is unknown, not dead.
    if d.heartbeat and heartbeat_timeout > 0 and now - d.heartbeat > heartbeat_timeout:
        return Health.UNRESPONSIVE, f"no heartbeat for {now - d.heartbeat:.0f} s"
    for prog in required:
        st = d.programs.get(prog)
        if st in FAILED_PROGRAM_STATES:
            return Health.DEGRADED, f"{prog} {st}"
        if st in TRANSIENT_PROGRAM_STATES and now - d.programs_since.get(prog, now) >= TRANSIENT_GRACE:
            return Health.DEGRADED, f"{prog} {st}"
    if d.alive is None and not d.heartbeat:
        return Health.UNKNOWN, "not seen yet"
    return Health.OK, ""
