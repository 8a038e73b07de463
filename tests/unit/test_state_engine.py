"""The state engine against a fake Slurm and a fake backend: failures reach Slurm in batches,
transitions converge, fail into their failure phase without looping, respect max_unavailable,
freeze/thaw, and survive a restart of the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shoal.state.engine import Engine, EngineConfig, RequestError
from shoal.state.model import Phase
from shoal.state.store import Store
from tests.unit.state_fakes import FakeBackend, FakeSlurm

NAMES = [f"n{i}" for i in range(1, 6)]


def make(tmp_path: Path, names: list[str] = NAMES, **cfg: float) -> tuple[Engine, FakeSlurm, FakeBackend]:
    slurm = FakeSlurm(names)
    backend = FakeBackend(names, slurm)
    ecfg = EngineConfig(slurm_poll=0.05, tick=0.02, flush_delay=0.005, **cfg)  # type: ignore[arg-type]
    eng = Engine(Store(tmp_path / "state.sqlite"), slurm, backend, ecfg)  # type: ignore[arg-type]
    backend.engine = eng
    return eng, slurm, backend


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def test_dead_nodes_reach_slurm_in_one_batch_and_come_back(tmp_path: Path) -> None:
    async def main() -> None:
        eng, slurm, be = make(tmp_path)
        be.capabilities = frozenset({"watch"})  # no power: nodes stay down until seen again
        await eng.start()
        await until(lambda: all(r.discovered.heartbeat for r in eng.nodes.values()))
        eng.on_alive("n2", False, "")
        eng.on_alive("n3", False, "")
        t0 = time.monotonic()
        await until(lambda: slurm.state["n3"]["state"] == "down")
        assert time.monotonic() - t0 < 0.5
        assert slurm.batches == [("n[2-3]", "DOWN", "shoal: node died")]
        assert eng.nodes["n2"].phase == Phase.OFF
        # Seen alive and healthy again: resumed (it was our reason).
        be._come_up("n2")
        await until(lambda: slurm.state["n2"]["state"] == "idle")
        assert ("n2", "RESUME", "") in slurm.batches
        await eng.stop()

    asyncio.run(main())


def test_fatal_slurmd_goes_down_then_restart_fails_once_without_looping(tmp_path: Path) -> None:
    async def main() -> None:
        eng, slurm, be = make(tmp_path)
        be.restart_works = False
        await eng.start()
        await until(lambda: all(r.discovered.heartbeat for r in eng.nodes.values()))
        eng.on_node_event({"node": "n4", "kind": "process", "program": "slurmd", "state": "FATAL"})
        await until(lambda: slurm.state["n4"]["state"] == "down")
        assert slurm.state["n4"]["reason"] == "shoal: slurmd FATAL"
        await until(lambda: eng.nodes["n4"].phase == Phase.FAILED)
        assert "went FATAL again" in eng.nodes["n4"].reason
        await asyncio.sleep(0.3)  # many ticks: no second attempt
        assert be.restarts == [("n4", "slurmd")]
        assert slurm.state["n4"]["state"] == "down"
        await eng.stop()

    asyncio.run(main())


def test_fatal_slurmd_is_restarted_and_resumed(tmp_path: Path) -> None:
    async def main() -> None:
        eng, slurm, be = make(tmp_path)
        await eng.start()
        await until(lambda: all(r.discovered.heartbeat for r in eng.nodes.values()))
        eng.on_node_event({"node": "n1", "kind": "process", "program": "slurmd", "state": "FATAL"})
        await until(lambda: ("n1", "RESUME", "") in slurm.batches)
        assert eng.nodes["n1"].phase == Phase.READY
        assert be.restarts == [("n1", "slurmd")]
        await eng.stop()

    asyncio.run(main())


def test_rolling_upgrade_respects_max_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        eng, slurm, be = make(tmp_path)
        await eng.start()
        await until(lambda: all(r.discovered.heartbeat for r in eng.nodes.values()))
        most = 0

        def watch() -> bool:
            nonlocal most
            most = max(most, eng.unavailable())
            return all(r.discovered.image == "/img/new" and r.phase == Phase.READY and r.active is None
                       for r in eng.nodes.values())

        eng.set_desired(None, image="/img/new", max_unavailable=2)
        await until(watch, 10)
        assert most == 2
        assert sorted(be.swaps) == NAMES
        assert all(s["state"] == "idle" and not s["flags"] for s in slurm.state.values())
        await eng.stop()

    asyncio.run(main())


def test_drain_waits_for_jobs_and_swap_timeout_lands_in_failed(tmp_path: Path) -> None:
    import shoal.state.transitions as tr

    async def main() -> None:
        eng, slurm, be = make(tmp_path, ["n1"])
        slurm.state["n1"]["jobs"] = 1
        be.swap_hangs.add("n1")
        await eng.start()
        await until(lambda: bool(eng.nodes["n1"].discovered.heartbeat))
        eng.set_desired(None, image="/img/new")
        await until(lambda: "DRAIN" in slurm.state["n1"]["flags"])
        await asyncio.sleep(0.2)
        assert eng.nodes["n1"].active is not None and eng.nodes["n1"].active.name == "slurm.drain"
        slurm.state["n1"]["jobs"] = 0
        await until(lambda: eng.nodes["n1"].phase == Phase.FAILED, 5)
        assert "layer1.swap timed out" in eng.nodes["n1"].reason
        await asyncio.sleep(0.2)
        assert be.swaps == ["n1"]  # never tried again by itself
        eng.freeze(["n1"], False)  # thaw = operator's go-ahead: one more attempt
        await until(lambda: len(be.swaps) == 2)
        await eng.stop()

    short = tr.Transition(**{**tr.TRANSITIONS["layer1.swap"].__dict__, "timeout": 0.3})
    orig = tr.TRANSITIONS["layer1.swap"]
    tr.TRANSITIONS["layer1.swap"] = short
    try:
        asyncio.run(main())
    finally:
        tr.TRANSITIONS["layer1.swap"] = orig


def test_freeze_stops_driving_but_discovery_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        eng, slurm, be = make(tmp_path)
        await eng.start()
        await until(lambda: all(r.discovered.heartbeat for r in eng.nodes.values()))
        eng.freeze(None, True)
        eng.set_desired(None, image="/img/new")
        eng.on_alive("n5", False, "")
        await until(lambda: slurm.state["n5"]["state"] == "down")  # Slurm still told
        await asyncio.sleep(0.2)
        assert be.swaps == [] and be.boots == []
        eng.freeze(None, False)
        await until(lambda: "n5" in be.boots)
        await eng.stop()

    asyncio.run(main())


def test_restart_mid_transition_resumes_without_repeating(tmp_path: Path) -> None:
    async def first() -> None:
        eng, slurm, _ = make(tmp_path, ["n1", "n2"])
        await eng.start()
        await until(lambda: all(r.discovered.heartbeat for r in eng.nodes.values()))
        slurm.state["n1"]["jobs"] = 1  # drain cannot finish before the "crash"
        eng.set_desired(["n1"], image="/img/new")
        await until(lambda: "DRAIN" in slurm.state["n1"]["flags"])
        await eng.stop()
        eng.store.close()
        return None

    asyncio.run(first())

    async def second() -> None:
        eng, slurm, be = make(tmp_path, ["n1", "n2"])
        slurm.state["n1"].update(flags=["DRAIN"], reason="shoal: upgrade to /img/new", jobs=0)
        rec = eng.nodes["n1"]
        assert rec.active is not None and rec.active.name == "slurm.drain"
        assert rec.discovered.heartbeat == 0  # discovery is not trusted from the database
        await eng.start()
        await until(lambda: eng.nodes["n1"].phase == Phase.READY and eng.nodes["n1"].active is None)
        assert be.swaps == ["n1"]
        # The drain's effect was visible after the restart: it was not sent again.
        assert [b for b in slurm.batches if b[1] == "DRAIN"] == []
        await eng.stop()

    asyncio.run(second())


def test_bad_requests_are_request_errors(tmp_path: Path) -> None:
    eng, _, _ = make(tmp_path)
    with pytest.raises(RequestError) as e:
        eng.set_desired(["nope"], image="x")
    assert e.value.status == 404
    for bad in ({"node": "n1", "kind": "process", "program": "slurmd", "state": "WEIRD"},
                {"node": "n1", "kind": "heartbeat", "programs": ["x"]},
                {"node": "n1", "kind": "other"},
                {"kind": "heartbeat"}):
        with pytest.raises(RequestError):
            eng.on_node_event(bad)
    with pytest.raises(RequestError):
        eng.set_desired(None, max_unavailable=0)


def test_cli_heartbeat_default_is_the_engines() -> None:
    """`shoal state serve --heartbeat-timeout` defaults to the engine's own value (the CLI spells
    it as a literal so that --help does not import the engine)."""
    from shoal.cli.state import serve

    opt = next(p for p in serve.params if p.name == "heartbeat_timeout")
    assert opt.default == EngineConfig().heartbeat_timeout >= 60
