"""Fakes for the state engine's unit tests: a Slurm that keeps node states in a dict and a
backend whose nodes boot and swap instantly (through the engine's own loop, like the real one)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from shoal.slurm.client import Node
from shoal.state.backend import Report
from shoal.state.bridge import Applied, SlurmState, Update
from shoal.state.engine import Engine


class FakeSlurm:
    """Stands in for SlurmBridge: scontrol update changes the dict; show reads it."""

    def __init__(self, names: list[str]) -> None:
        self.state: dict[str, dict[str, Any]] = {
            n: {"state": "idle", "flags": [], "reason": "", "start": "t0", "jobs": 0} for n in names
        }
        self.batches: list[tuple[str, str, str]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def show(self) -> dict[str, Node]:
        with self.lock:
            out = {}
            for n, s in self.state.items():
                base = s["state"]
                flags = list(s["flags"])
                if "DRAIN" in flags and s["jobs"]:
                    base = "mixed"
                out[n] = Node(name=n, state=str(base), flags=tuple(flags), reason=str(s["reason"]),
                              raw={"SlurmdStartTime": str(s["start"])})
            return out

    def apply(self, updates: list[Update]) -> list[Applied]:
        from shoal.slurm.hostlist import compress

        groups: dict[tuple[str, str], list[str]] = {}
        for u in updates:
            groups.setdefault((u.state, u.reason), []).append(u.node)
        out = []
        with self.lock:
            for (state, reason), names in groups.items():
                self.calls += 1
                self.batches.append((compress(names), state, reason))
                for n in names:
                    s = self.state[n]
                    if state == SlurmState.DOWN:
                        s.update(state="down", reason=reason)
                    elif state == SlurmState.DRAIN:
                        s["flags"] = sorted({*s["flags"], "DRAIN"})
                        s["reason"] = reason
                    else:
                        s.update(state="idle", flags=[], reason="")
                out.append(Applied(compress(names), state, reason, 0.0, True))
        return out

    def register(self, node: str) -> None:
        """A new slurmd registered (new start time); a node set DOWN by scontrol stays DOWN
        (ReturnToService=1 behaviour: the engine has to RESUME it)."""
        with self.lock:
            s = self.state[node]
            s["start"] = str(s["start"]) + "+"


class FakeBackend:
    capabilities = frozenset({"watch", "power", "swap", "restart"})

    def __init__(self, names: list[str], slurm: FakeSlurm, image: str = "/img/old") -> None:
        self.names = names
        self.slurm = slurm
        self.images = dict.fromkeys(names, image)
        self.engine: Engine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.swaps: list[str] = []
        self.boots: list[str] = []
        self.restarts: list[tuple[str, str]] = []
        self.restart_works = True
        self.swap_hangs: set[str] = set()
        self.report: Report | None = None

    def nodes(self) -> dict[str, str]:
        return dict.fromkeys(self.names, "")

    async def watch(self, report: Report) -> None:
        self.loop = asyncio.get_running_loop()
        self.report = report
        for n in self.names:
            report(n, True, self.images[n])
            self.heartbeat(n)
        await asyncio.Event().wait()

    def heartbeat(self, node: str, slurmd: str = "RUNNING") -> None:
        assert self.engine is not None
        self.engine.on_node_event({"node": node, "kind": "heartbeat", "boot": self.images[node],
                                   "programs": {"slurmd": slurmd, "munged": "RUNNING"}})

    def _later(self, fn: Any, *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def resolve_image(self, ref: str) -> str:
        return ref

    def _come_up(self, node: str) -> None:
        assert self.report is not None
        self.report(node, True, self.images[node])
        self.slurm.register(node)
        self.heartbeat(node)

    def power_on(self, node: str, image: str) -> None:
        self.boots.append(node)
        if image:
            self.images[node] = image
        self._later(self._come_up, node)

    def power_off(self, node: str) -> None:
        assert self.report is not None
        self._later(self.report, node, False, "")

    def swap(self, node: str, image: str) -> None:
        self.swaps.append(node)
        if node in self.swap_hangs:
            return  # the node never comes back
        self.images[node] = image
        self._later(self._come_up, node)

    def restart_program(self, node: str, program: str) -> None:
        self.restarts.append((node, program))
        time.sleep(0.05)  # supervisord's startProcess waits for the start
        if not self.restart_works:
            raise RuntimeError(f"{program} went FATAL again")
        self._later(self.heartbeat, node)
