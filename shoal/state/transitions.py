"""The transitions the engine can drive, declared per module.

Each one says where it goes from and to, what it requires before it may start (named conditions,
shown in the transition graph), how long it may take, and the phase the node lands in when it fails
or times out. The action is a blocking function run once per attempt in a worker thread; `done`
is checked against discovery after the action returned. A transition never retries itself: a
failure lands in `on_failure` (FAILED for everything that would otherwise be tried again), and
only a new desired state or a thaw from an operator starts the node moving again.

Modules: slurm (drain, resume, undrain), layer1 (swap the node image), supervisor (restart a
failed program), power (boot, power off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal.state.backend import Backend
from shoal.state.bridge import REASON_PREFIX, SlurmState, Update
from shoal.state.model import (
    FAILED_PROGRAM_STATES,
    REQUIRED_PROGRAMS,
    TRANSIENT_PROGRAM_STATES,
    NodeRecord,
    Phase,
)


class Ops(Protocol):
    """What an action may use (given by the engine)."""

    backend: Backend

    def slurm(self, updates: list[Update]) -> None: ...


Action = Callable[[Ops, str, dict[str, Any]], None]
Check = Callable[[NodeRecord, dict[str, Any]], bool]


@dataclass(frozen=True)
class Condition:
    name: str
    check: Check


@dataclass(frozen=True)
class Transition:
    name: str  # module.verb
    source: Phase
    target: Phase
    requires: tuple[Condition, ...]
    action: Action
    done: Condition
    timeout: float
    on_failure: Phase
    capability: str = ""  # backend capability needed ("" = none)
    description: str = ""
    # Slurm's state of the node is this transition's business while it runs (drain ... resume);
    # otherwise the bridge keeps telling Slurm what discovery says (a node being booted is DOWN).
    owns_slurm: bool = True
    # The action's effect is already visible (a restarted service found it done): skip the action.
    effect: Condition | None = None
    ctx: Callable[[NodeRecord], dict[str, Any]] = field(default=lambda rec: {})

    @property
    def module(self) -> str:
        return self.name.split(".", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "from": str(self.source),
            "to": str(self.target),
            "requires": [c.name for c in self.requires],
            "done_when": self.done.name,
            "timeout": self.timeout,
            "on_failure": str(self.on_failure),
            "capability": self.capability,
            "description": self.description,
        }


# -- conditions ------------------------------------------------------------------------------
def _healthy_programs(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    d = rec.discovered
    fresh = d.programs_at >= float(ctx.get("since", 0.0))
    return fresh and all(d.programs.get(p) == "RUNNING" for p in REQUIRED_PROGRAMS)


def _not_drained_by_others(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    d = rec.discovered
    return not ("DRAIN" in d.slurm_flags and not d.slurm_reason.startswith(REASON_PREFIX))


def _alive_not_dead(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    return rec.discovered.alive is not False


def _dead(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    return rec.discovered.alive is not True


def _power_on_wanted(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    return rec.desired.power == "on"


def _image_differs(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    return bool(rec.desired.image) and rec.desired.image != rec.discovered.image


ALIVE = Condition("node alive", _alive_not_dead)
DEAD = Condition("node not running", _dead)
NOT_DRAINED_BY_OTHERS = Condition("not drained by someone else", _not_drained_by_others)
POWER_WANTED = Condition("desired power on", _power_on_wanted)
IMAGE_DIFFERS = Condition("desired image differs from the running one", _image_differs)

DRAINED = Condition("Slurm shows the node drained (no jobs)", lambda r, c: r.discovered.drained_in_slurm)
IN_SERVICE = Condition("Slurm shows the node in service", lambda r, c: r.discovered.in_service)
PROGRAMS_RUNNING = Condition("required programs RUNNING (reported after the start)", _healthy_programs)


def _booted(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    return rec.discovered.alive is not False and _healthy_programs(rec, ctx)


def _swapped(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    d = rec.discovered
    registered = bool(d.slurmd_start) and d.slurmd_start != ctx.get("slurmd_start")
    return d.image == ctx.get("image") and _booted(rec, ctx) and registered


def _powered_off(rec: NodeRecord, ctx: dict[str, Any]) -> bool:
    return rec.discovered.alive is False


BOOTED = Condition("node alive with required programs RUNNING", _booted)
SWAPPED = Condition("node runs the new image and its slurmd re-registered", _swapped)
POWERED_OFF = Condition("node seen stopped", _powered_off)


# -- actions (blocking, in a worker thread) --------------------------------------------------
def _drain(ops: Ops, node: str, ctx: dict[str, Any]) -> None:
    ops.slurm([Update(node, SlurmState.DRAIN, f"{REASON_PREFIX} {ctx.get('why', 'maintenance')}")])


def _resume(ops: Ops, node: str, ctx: dict[str, Any]) -> None:
    ops.slurm([Update(node, SlurmState.RESUME)])


def _swap(ops: Ops, node: str, ctx: dict[str, Any]) -> None:
    ops.backend.swap(node, str(ctx["image"]))


def _boot(ops: Ops, node: str, ctx: dict[str, Any]) -> None:
    ops.backend.power_on(node, str(ctx.get("image", "")))


def _power_off(ops: Ops, node: str, ctx: dict[str, Any]) -> None:
    ops.backend.power_off(node)


def _restart(ops: Ops, node: str, ctx: dict[str, Any]) -> None:
    for prog in ctx.get("programs", []):
        ops.backend.restart_program(node, str(prog))


def _now_ctx(rec: NodeRecord, **extra: Any) -> dict[str, Any]:
    import time

    return {"since": time.time(), **extra}


def _drain_ctx(rec: NodeRecord) -> dict[str, Any]:
    why = "power off" if rec.desired.power == "off" else f"upgrade to {rec.desired.image}"
    return _now_ctx(rec, why=why)


def _restart_ctx(rec: NodeRecord) -> dict[str, Any]:
    d = rec.discovered
    progs = [
        p for p in REQUIRED_PROGRAMS if d.programs.get(p) in FAILED_PROGRAM_STATES | TRANSIENT_PROGRAM_STATES
    ]
    return _now_ctx(rec, programs=progs)


DRAIN_TIMEOUT = 600.0

TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in (
        Transition(
            "slurm.drain",
            Phase.READY,
            Phase.DRAINED,
            (ALIVE, NOT_DRAINED_BY_OTHERS),
            _drain,
            DRAINED,
            DRAIN_TIMEOUT,
            Phase.FAILED,
            description="drain in Slurm and wait until the node's jobs have finished",
            ctx=_drain_ctx,
            effect=Condition(
                "drained by shoal in Slurm",
                lambda r, c: (
                    "DRAIN" in r.discovered.slurm_flags
                    and r.discovered.slurm_reason.startswith(REASON_PREFIX)
                ),
            ),
        ),
        Transition(
            "layer1.swap",
            Phase.DRAINED,
            Phase.SWAPPED,
            (IMAGE_DIFFERS,),
            _swap,
            SWAPPED,
            180.0,
            Phase.FAILED,
            capability="swap",
            description="restart the node's container on the desired layer1 image",
            ctx=lambda rec: _now_ctx(rec, image=rec.desired.image, slurmd_start=rec.discovered.slurmd_start),
            effect=Condition(
                "node alive on the new image",
                lambda r, c: r.discovered.alive is True and r.discovered.image == c.get("image"),
            ),
        ),
        Transition(
            "slurm.resume",
            Phase.SWAPPED,
            Phase.READY,
            (),
            _resume,
            IN_SERVICE,
            60.0,
            Phase.FAILED,
            description="resume the node in Slurm",
            ctx=lambda rec: _now_ctx(rec),
        ),
        Transition(
            "slurm.undrain",
            Phase.DRAINED,
            Phase.READY,
            (POWER_WANTED,),
            _resume,
            IN_SERVICE,
            60.0,
            Phase.FAILED,
            description="resume a drained node that no longer needs a swap",
            ctx=lambda rec: _now_ctx(rec),
        ),
        Transition(
            "supervisor.restart",
            Phase.DEGRADED,
            Phase.READY,
            (ALIVE,),
            _restart,
            PROGRAMS_RUNNING,
            30.0,
            Phase.FAILED,
            capability="restart",
            owns_slurm=False,
            description="start the failed required supervisord programs again (once)",
            ctx=_restart_ctx,
        ),
        Transition(
            "power.boot",
            Phase.OFF,
            Phase.READY,
            (DEAD, POWER_WANTED, NOT_DRAINED_BY_OTHERS),
            _boot,
            BOOTED,
            180.0,
            Phase.FAILED,
            capability="power",
            owns_slurm=False,
            description="start a node that is not running",
            ctx=lambda rec: _now_ctx(rec, image=rec.desired.image or rec.discovered.image),
            effect=Condition("node alive", lambda r, c: r.discovered.alive is True),
        ),
        Transition(
            "power.off",
            Phase.DRAINED,
            Phase.OFF,
            (),
            _power_off,
            POWERED_OFF,
            60.0,
            Phase.FAILED,
            capability="power",
            description="stop a drained node",
            ctx=lambda rec: _now_ctx(rec),
        ),
    )
}

# Edges discovery alone may take (shown in the graph; no action, no timeout).
DISCOVERED_EDGES: list[dict[str, str]] = [
    {"from": "ready", "to": "off", "when": "node died or stopped sending heartbeats"},
    {"from": "ready", "to": "degraded", "when": "a required supervisord program failed"},
    {"from": "degraded", "to": "off", "when": "node died"},
    {"from": "off", "to": "ready", "when": "node seen healthy again"},
    {"from": "degraded", "to": "ready", "when": "programs seen RUNNING again"},
]


def graph() -> dict[str, Any]:
    return {
        "phases": [str(p) for p in Phase],
        "transitions": [t.as_dict() for t in TRANSITIONS.values()],
        "discovered": DISCOVERED_EDGES,
    }
