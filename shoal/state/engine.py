"""The engine: discovery comes in (node events, backend liveness, Slurm's view), phases and Slurm
updates go out, and declared transitions move nodes towards their desired state.

Everything runs on one asyncio loop; blocking work (scontrol, a container swap) runs in worker
threads. One evaluation function per node (`_evaluate`) decides everything, and it is called
whenever something about the node changes and on a short tick (deadlines). Slurm updates are
queued per node and flushed in batches (one scontrol call per state and reason) a few
milliseconds after the first one, so a failure reaches Slurm in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shoal.errors import ShoalError
from shoal.state.backend import Backend
from shoal.state.bridge import REASON_PREFIX, SlurmBridge, SlurmState, Update, normalize, ours
from shoal.state.model import (
    DISCOVERY_PHASES,
    PROGRAM_STATES,
    REQUIRED_PROGRAMS,
    Active,
    Health,
    NodeRecord,
    Phase,
    health,
)
from shoal.state.store import Store
from shoal.state.transitions import TRANSITIONS, Transition

log = logging.getLogger("shoal.state")


class RequestError(ShoalError):
    """A request the engine refuses (bad node, bad value): the API answers 4xx with it."""

    def __init__(self, message: str, status: int = 400, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass
class EngineConfig:
    # A node silent this long is UNRESPONSIVE (0: never). Two minutes, not seconds: a 32-node study
    # job on 2 cores starved the nodes' listeners (each POST then forked munge) for 31-40 s, and 30 s
    # downed live nodes and requeued the job three times. Death is seen at once by other means
    # (PID 1 watch, FATAL events); the heartbeat is the backstop for a wedged node, as Slurm's own
    # SlurmdTimeout (300 s by default) is.
    heartbeat_timeout: float = 120.0
    slurm_poll: float = 5.0  # Slurm's view is re-read this often (and right after each update)
    tick: float = 0.5  # deadlines and the transient-state grace are checked this often
    flush_delay: float = 0.01  # updates arriving within this window go in one scontrol batch
    resend_after: float = 10.0  # an update Slurm has not taken is sent again after this long
    required_programs: tuple[str, ...] = REQUIRED_PROGRAMS


class Engine:
    def __init__(
        self, store: Store, bridge: SlurmBridge, backend: Backend, cfg: EngineConfig | None = None
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.backend = backend
        self.cfg = cfg or EngineConfig()
        addresses = backend.nodes()
        self.nodes: dict[str, NodeRecord] = store.load_nodes(list(addresses))
        for name, rec in self.nodes.items():
            rec.address = addresses[name]
        self.frozen_all: bool = bool(store.get_meta("frozen", False))
        self.max_unavailable: int = int(store.get_meta("max_unavailable", 1))
        self.started = time.time()
        self._pending: dict[str, Update] = {}
        self._requested: dict[str, tuple[str, str, float]] = {}
        self._actions: dict[str, asyncio.Task[None]] = {}
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_wanted = asyncio.Event()
        self._poll_now = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self.last_slurm_update: dict[str, float] = {}  # node -> when its last update was applied

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        resumed = [n for n, r in self.nodes.items() if r.active]
        self.emit(
            "", "service", {"started": self.started, "nodes": len(self.nodes), "resumed_transitions": resumed}
        )
        await self._poll_slurm()
        loop_tasks = [self._ticker(), self._flusher(), self._poller()]
        if "watch" in self.backend.capabilities:
            loop_tasks.append(self.backend.watch(self.on_alive))
        self._tasks = [asyncio.create_task(c) for c in loop_tasks]

    async def stop(self) -> None:
        for t in [*self._tasks, *self._actions.values()]:
            t.cancel()
        for t in [*self._tasks, *self._actions.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for rec in self.nodes.values():
            self.store.save_node(rec)

    # -- events out ----------------------------------------------------------------------------
    def emit(self, node: str, kind: str, data: dict[str, Any]) -> None:
        t = time.time()
        eid = self.store.add_event(t, node, kind, data)
        ev = {"id": eid, "time": t, "node": node, "kind": kind, "data": data}
        self.counters[f"event.{kind}"] += 1
        for q in list(self._subscribers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                self._subscribers.discard(q)  # a reader this slow is dropped; it may reconnect

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)

    # -- discovery in --------------------------------------------------------------------------
    def node(self, name: str) -> NodeRecord:
        rec = self.nodes.get(name)
        if rec is None:
            raise RequestError(f"no node {name!r}", 404, f"nodes: {', '.join(sorted(self.nodes))}")
        return rec

    def on_alive(self, node: str, alive: bool | None, image: str) -> None:
        """Backend report (virtual cluster: a PID 1 appeared or died)."""
        rec = self.nodes.get(node)
        if rec is None:
            return
        d = rec.discovered
        changed = d.alive != alive or (image and d.image != image)
        d.alive, d.alive_at = alive, time.time()
        if image:
            d.image = image
        if alive is False:
            # A dead node's programs are gone with it; what it reports next is fresh.
            d.programs = {}
            d.programs_since = {}
        if changed:
            self.emit(node, "alive", {"alive": alive, "image": d.image})
            self._evaluate(rec)

    def on_node_event(self, ev: dict[str, Any], peer: str = "") -> None:
        """An event a node's supervisord listener sent (already authenticated by the API)."""
        name = ev.get("node")
        if not isinstance(name, str):
            raise RequestError("event without a node name")
        rec = self.node(name)
        if rec.address and peer and peer != rec.address:
            raise RequestError(f"events for {name} come from {rec.address}, not {peer}", 403)
        kind = ev.get("kind")
        now = time.time()
        d = rec.discovered
        if kind == "process":
            prog, state = ev.get("program"), ev.get("state")
            if not isinstance(prog, str) or state not in PROGRAM_STATES:
                raise RequestError("process event needs 'program' and a supervisord 'state'")
            if d.programs.get(prog) != state:
                d.programs_since[prog] = now
            d.programs[prog] = str(state)
            d.programs_at = now
            at = ev.get("time")
            self.emit(
                name,
                "process",
                {
                    "program": prog,
                    "state": state,
                    "from": ev.get("from", ""),
                    "at": at if isinstance(at, (int, float)) else None,
                },
            )
        elif kind in ("heartbeat", "hello"):
            progs = ev.get("programs", {})
            if not isinstance(progs, dict) or not all(
                isinstance(k, str) and v in PROGRAM_STATES for k, v in progs.items()
            ):
                raise RequestError("heartbeat 'programs' must map names to supervisord states")
            for prog, state in progs.items():
                if d.programs.get(prog) != state:
                    d.programs_since[prog] = now
            d.programs = {str(k): str(v) for k, v in progs.items()}
            d.programs_at = now
            boot = str(ev.get("boot", ""))
            if kind == "hello" or boot != d.boot_id:
                self.emit(name, "hello", {"boot": boot, "programs": d.programs})
            d.boot_id = boot
        else:
            raise RequestError(f"unknown event kind {kind!r}", hint="kinds: process, heartbeat, hello")
        was = d.heartbeat
        d.heartbeat = now
        self.counters[f"node_event.{kind}"] += 1
        if not was:
            self.emit(name, "seen", {"boot": d.boot_id})
        self._evaluate(rec)

    def on_slurm(self, nodes: dict[str, Any]) -> None:
        now = time.time()
        for name, rec in self.nodes.items():
            n = nodes.get(name)
            if n is None:
                continue
            base, flags = normalize(n)
            d = rec.discovered
            new = (base, flags, n.reason, n.raw.get("SlurmdStartTime", ""))
            old = (d.slurm_state, d.slurm_flags, d.slurm_reason, d.slurmd_start)
            d.slurm_state, d.slurm_flags, d.slurm_reason, d.slurmd_start = new
            d.slurm_at = now
            if new != old:
                self.emit(name, "slurm", {"state": d.slurm_text, "reason": d.slurm_reason})
            self._evaluate(rec)

    # -- desired state in ----------------------------------------------------------------------
    def set_desired(
        self,
        names: Iterable[str] | None,
        image: str | None = None,
        power: str | None = None,
        max_unavailable: int | None = None,
    ) -> list[str]:
        targets = [self.node(n) for n in names] if names else list(self.nodes.values())
        if power is not None and power not in ("on", "off"):
            raise RequestError(f"power must be 'on' or 'off', not {power!r}")
        if max_unavailable is not None:
            if max_unavailable < 1:
                raise RequestError(f"max_unavailable must be at least 1, not {max_unavailable}")
            self.max_unavailable = max_unavailable
            self.store.set_meta("max_unavailable", max_unavailable)
        resolved = None
        if image is not None:
            try:
                resolved = self.backend.resolve_image(image) if image else ""
            except ShoalError as exc:
                raise RequestError(exc.message, 400, exc.hint) from None
        for rec in targets:
            if resolved is not None:
                rec.desired.image = resolved
            if power is not None:
                rec.desired.power = power
            if rec.phase == Phase.FAILED and rec.active is None:
                # A new desired state is the operator's go-ahead after a failure.
                self._set_phase(rec, self._phase_from_health(rec), "new desired state")
            self.store.save_node(rec)
        self.emit(
            "",
            "desired",
            {
                "nodes": [r.name for r in targets],
                "image": resolved,
                "power": power,
                "max_unavailable": max_unavailable,
            },
        )
        self.evaluate_all()
        return [r.name for r in targets]

    def freeze(self, names: Iterable[str] | None, frozen: bool) -> list[str]:
        """Freeze (the engine stops driving) or thaw nodes; no names = the whole cluster.

        Thawing a FAILED node also clears its failure, so the engine tries it once more.
        """
        if names:
            targets = [self.node(n) for n in names]
        else:
            targets = list(self.nodes.values())
            self.frozen_all = frozen
            self.store.set_meta("frozen", frozen)
        for rec in targets:
            rec.desired.frozen = frozen
            if not frozen and rec.phase == Phase.FAILED and rec.active is None:
                self._set_phase(rec, self._phase_from_health(rec), "thawed")
            self.store.save_node(rec)
        self.emit(
            "", "freeze" if frozen else "thaw", {"nodes": [r.name for r in targets], "cluster": not names}
        )
        self.evaluate_all()
        return [r.name for r in targets]

    def frozen(self, rec: NodeRecord) -> bool:
        return self.frozen_all or rec.desired.frozen

    # -- the decision --------------------------------------------------------------------------
    def health(self, rec: NodeRecord) -> tuple[Health, str]:
        return health(rec.discovered, time.time(), self.cfg.heartbeat_timeout, self.cfg.required_programs)

    def _phase_from_health(self, rec: NodeRecord) -> Phase:
        h, _ = self.health(rec)
        if h in (Health.DEAD, Health.UNRESPONSIVE):
            return Phase.OFF
        if h == Health.DEGRADED:
            return Phase.DEGRADED
        return Phase.READY

    def evaluate_all(self) -> None:
        for rec in self.nodes.values():
            self._evaluate(rec)

    def _evaluate(self, rec: NodeRecord) -> None:
        now = time.time()
        h, why = self.health(rec)
        if rec.active is not None:
            self._progress(rec, now)
        elif rec.phase in DISCOVERY_PHASES and h != Health.UNKNOWN:
            new = self._phase_from_health(rec)
            if new != rec.phase:
                self._set_phase(rec, new, why or "healthy")
        if rec.active is None and rec.phase != Phase.FAILED and not self.frozen(rec):
            t = self._choose(rec, h)
            if t is not None:
                self._begin(rec, t, now)
        self._slurm_intent(rec, h, why)

    def _choose(self, rec: NodeRecord, h: Health) -> Transition | None:
        if not self._rediscovered(rec):
            return None  # after a (re)start, decide only on what has been seen since
        caps = self.backend.capabilities
        d, want = rec.discovered, rec.desired
        needs_image = bool(want.image) and bool(d.image) and want.image != d.image
        cands: list[str] = []
        if rec.phase == Phase.OFF and want.power == "on":
            cands = ["power.boot"]
        elif rec.phase == Phase.DEGRADED:
            cands = ["supervisor.restart"]
        elif rec.phase == Phase.READY and h == Health.OK and d.slurm_at:
            if (want.power == "off" or needs_image) and self._budget_left(rec):
                cands = ["slurm.drain"]
        elif rec.phase == Phase.DRAINED:
            if want.power == "off":
                cands = ["power.off"]
            elif needs_image:
                cands = ["layer1.swap"]
            elif not want.image or d.image:  # (an unknown running image: wait, do not undrain)
                cands = ["slurm.undrain"]
        elif rec.phase == Phase.SWAPPED:
            cands = ["slurm.resume"]
        for name in cands:
            t = TRANSITIONS[name]
            if t.capability and t.capability not in caps:
                continue
            if all(c.check(rec, {}) for c in t.requires):
                return t
        return None

    def unavailable(self) -> int:
        return sum(1 for r in self.nodes.values() if r.active is not None or r.phase != Phase.READY)

    def _budget_left(self, rec: NodeRecord) -> bool:
        return self.unavailable() < self.max_unavailable

    def _set_phase(self, rec: NodeRecord, phase: Phase, reason: str) -> None:
        old = rec.phase
        rec.phase, rec.reason = phase, reason
        self.store.save_node(rec)
        self.emit(rec.name, "phase", {"from": str(old), "to": str(phase), "reason": reason})

    def _begin(self, rec: NodeRecord, t: Transition, now: float) -> None:
        rec.active = Active(t.name, now, now + t.timeout, False, t.ctx(rec))
        self.store.save_node(rec)
        self.counters[f"transition.started.{t.name}"] += 1
        self.emit(
            rec.name,
            "transition",
            {
                "name": t.name,
                "status": "started",
                "from": str(t.source),
                "to": str(t.target),
                "deadline": rec.active.deadline,
            },
        )
        self._progress(rec, now)

    def _progress(self, rec: NodeRecord, now: float) -> None:
        a = rec.active
        assert a is not None
        t = TRANSITIONS.get(a.name)
        if t is None:  # stored by a version that had it; nothing can drive it now
            rec.active = None
            self._set_phase(rec, Phase.FAILED, f"unknown transition {a.name}")
            return
        if a.action_done and t.done.check(rec, a.ctx):
            rec.active = None
            self.counters[f"transition.done.{t.name}"] += 1
            self.emit(
                rec.name,
                "transition",
                {"name": t.name, "status": "done", "seconds": round(now - a.started, 3)},
            )
            self._set_phase(rec, t.target, t.name)
            return
        if now > a.deadline:
            self._fail(rec, t, f"{t.name} timed out after {t.timeout:g} s waiting for: {t.done.name}")
            return
        if not a.action_done and rec.name not in self._actions:
            if a.started < self.started and not self._rediscovered(rec):
                return  # resumed after a restart: look at the node before acting again
            self._actions[rec.name] = asyncio.create_task(self._act(rec, t))

    def _rediscovered(self, rec: NodeRecord) -> bool:
        """Has the node been seen since this service started (Slurm's view and the node's own)?"""
        d = rec.discovered
        if not d.slurm_at:
            return False
        if "watch" in self.backend.capabilities:
            return d.alive is False or (d.alive is True and d.heartbeat > 0)
        return d.heartbeat > 0

    def _fail(self, rec: NodeRecord, t: Transition, why: str) -> None:
        rec.active = None
        self.counters[f"transition.failed.{t.name}"] += 1
        self.emit(rec.name, "transition", {"name": t.name, "status": "failed", "reason": why})
        self._set_phase(rec, t.on_failure, why)

    async def _act(self, rec: NodeRecord, t: Transition) -> None:
        a = rec.active
        assert a is not None
        try:
            # A restarted service re-discovers first: an action whose effect is already there
            # (the node already runs the new image) is not done twice.
            if t.effect is not None and t.effect.check(rec, a.ctx):
                self.emit(
                    rec.name,
                    "transition",
                    {"name": t.name, "status": "action skipped", "reason": t.effect.name},
                )
            else:
                await asyncio.to_thread(t.action, self, rec.name, dict(a.ctx))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of an action lands in the failure phase
            msg = exc.message if isinstance(exc, ShoalError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s on %s failed: %s", t.name, rec.name, msg)
            if rec.active is a:
                self._fail(rec, t, f"{t.name} failed: {msg}"[:300])
            return
        finally:
            self._actions.pop(rec.name, None)
        if rec.active is a:
            a.action_done = True
            self.store.save_node(rec)
            self._poll_now.set()  # the action changed Slurm or the node: look again now
            self._evaluate(rec)

    # -- Slurm: what it should show ------------------------------------------------------------
    def _slurm_intent(self, rec: NodeRecord, h: Health, why: str) -> None:
        d = rec.discovered
        if not d.slurm_at:
            return  # Slurm's view not read yet
        if "DRAIN" in d.slurm_flags and not ours(d.slurm_reason):
            return  # drained by an admin or another tool: their reason, their node
        owned = rec.active is not None and TRANSITIONS[rec.active.name].owns_slurm
        if owned or rec.phase in (Phase.DRAINED, Phase.SWAPPED):
            return  # the transition owns the node's Slurm state
        want: tuple[str, str] | None = None
        if rec.phase == Phase.FAILED:
            state = SlurmState.DRAIN if h == Health.OK else SlurmState.DOWN
            want = (state, f"{REASON_PREFIX} {rec.reason}"[:200])
        elif h in (Health.DEAD, Health.UNRESPONSIVE, Health.DEGRADED):
            text = "powered off" if rec.desired.power == "off" and h == Health.DEAD else why
            want = (SlurmState.DOWN, f"{REASON_PREFIX} {text}")
        elif h == Health.OK and rec.phase == Phase.READY:
            out = d.slurm_state == "down" or "DRAIN" in d.slurm_flags
            if out and ours(d.slurm_reason):
                want = (SlurmState.RESUME, "")
        if want is None:
            return
        state, reason = want
        if state == SlurmState.DOWN and d.slurm_state == "down" and ours(d.slurm_reason):
            return
        if state == SlurmState.DRAIN and "DRAIN" in d.slurm_flags and d.slurm_reason == reason:
            return
        last = self._requested.get(rec.name)
        if last and last[:2] == want and time.time() - last[2] < self.cfg.resend_after:
            return  # sent already; waiting for Slurm's view to show it
        self._requested[rec.name] = (state, reason, time.time())
        self._pending[rec.name] = Update(rec.name, state, reason)
        self._flush_wanted.set()

    def slurm(self, updates: list[Update]) -> None:
        """Apply updates now (called by transition actions, in a worker thread)."""
        for a in self.bridge.apply(updates):
            if not a.ok:
                raise ShoalError(f"scontrol update {a.hostlist} State={a.state}: {a.error}")

    async def _flusher(self) -> None:
        while True:
            await self._flush_wanted.wait()
            await asyncio.sleep(self.cfg.flush_delay)
            self._flush_wanted.clear()
            batch, self._pending = list(self._pending.values()), {}
            if not batch:
                continue
            applied = await asyncio.to_thread(self.bridge.apply, batch)
            now = time.time()
            for a in applied:
                self.counters["slurm.batches"] += 1
                self.emit(
                    "",
                    "slurm_update",
                    {
                        "nodes": a.hostlist,
                        "state": a.state,
                        "reason": a.reason,
                        "ok": a.ok,
                        "error": a.error,
                        "seconds": round(a.seconds, 4),
                    },
                )
            for u in batch:
                self.last_slurm_update[u.node] = now
            self._poll_now.set()

    async def refresh_slurm(self) -> None:
        """Read Slurm's view now (freeze does: a tool that freezes a node and then drains and
        stops it must find the service already seeing its drain, so it never reports over it)."""
        await self._poll_slurm()

    async def _poll_slurm(self) -> None:
        try:
            nodes = await asyncio.to_thread(self.bridge.show)
        except ShoalError as exc:
            self.counters["slurm.poll_errors"] += 1
            log.warning("reading Slurm's node states failed: %s", exc.message)
            return
        self.on_slurm(nodes)

    async def _poller(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
            # arrives as the event fires, so stop() waited forever for this loop (a 70-minute CI
            # hang); asyncio.timeout counts cancellations and lets stop()'s through.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.slurm_poll):
                    await self._poll_now.wait()
            self._poll_now.clear()
            await self._poll_slurm()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick)
            self.evaluate_all()

    # -- views ---------------------------------------------------------------------------------
    def view(self, rec: NodeRecord) -> dict[str, Any]:
        out = rec.as_dict(time.time(), self.cfg.heartbeat_timeout)
        out["frozen"] = self.frozen(rec)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "nodes": len(self.nodes),
            "frozen": self.frozen_all,
            "max_unavailable": self.max_unavailable,
            "unavailable": self.unavailable(),
            "capabilities": sorted(self.backend.capabilities),
            "started": self.started,
            "last_event": self.store.last_event_id(),
        }
