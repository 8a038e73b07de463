"""The state API: schema covers every route, malformed requests get 4xx (never 500), writes need
a munge credential bound to the request (TCP) or an admin's peer credentials (unix socket), the
event stream and the metrics."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.state import auth
from shoal.state.api import LIMITS, ROUTES, make_app
from shoal.state.client import StateAPIError, StateClient
from shoal.state.engine import Engine, EngineConfig
from shoal.state.openapi import schema
from shoal.state.store import Store
from tests.unit.state_fakes import FakeBackend, FakeSlurm

NAMES = ["n1", "n2", "n3"]


class FakeMunge(auth.LibMunge):
    """munged stand-in for the API's own logic: a credential is 'MUNGE:<uid>:<payload hex>', each
    decodes once (munged's replay check). The real library is tested in test_state_munge.py."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def encode(self, payload: bytes, socket_path: str | None = None) -> str:
        return f"MUNGE:0:{payload.hex()}"

    def decode(self, credential: str, socket_path: str | None = None) -> tuple[int, int, bytes]:
        if credential in self.seen:
            raise auth.AuthError("munge credential refused: Replayed credential")
        self.seen.add(credential)
        _, uid, payload = credential.split(":")
        return int(uid), int(uid), bytes.fromhex(payload)


def cred(method: str, path: str, body: bytes, uid: int = 0) -> str:
    return f"Munge MUNGE:{uid}:{auth.request_payload(method, path, body).encode().hex()}"


Test = Callable[[TestClient[web.Request, web.Application], Engine], Awaitable[None]]


def serve(tmp_path: Path, test: Test, admins: set[int] | None = None) -> None:
    async def main() -> None:
        slurm = FakeSlurm(NAMES)
        backend = FakeBackend(NAMES, slurm)
        eng = Engine(Store(tmp_path / "s.sqlite"), slurm, backend,  # type: ignore[arg-type]
                     EngineConfig(slurm_poll=0.05, tick=0.02, flush_delay=0.005))
        backend.engine = eng
        await eng.start()
        client = TestClient(TestServer(make_app(eng, admins)))
        await client.start_server()
        try:
            await test(client, eng)
        finally:
            await client.close()
            await eng.stop()

    with auth.use_libmunge(FakeMunge()):
        asyncio.run(main())


def test_schema_describes_every_route_and_nothing_else() -> None:
    paths = schema()["paths"]
    routed = {(p, m.lower()) for m, p, _ in ROUTES}
    described = {(p, m) for p, ops in paths.items() for m in ops if m != "parameters"}
    assert routed == described
    json.dumps(schema())  # serialisable


def test_reads_are_open_and_shaped(tmp_path: Path) -> None:
    async def t(c: TestClient[web.Request, web.Application], eng: Engine) -> None:
        for path in ("/", "/cfg/nodes", "/dsc/nodes", "/nodes", "/nodes/n1", "/cfg/nodes/n2",
                     "/dsc/nodes/n3", "/graph", "/openapi.json"):
            r = await c.get(path)
            assert r.status == 200, path
            await r.json()
        g = await (await c.get("/graph")).json()
        names = {t["name"] for t in g["transitions"]}
        assert {"slurm.drain", "layer1.swap", "slurm.resume", "supervisor.restart", "power.boot"} <= names
        assert all({"from", "to", "requires", "timeout", "on_failure"} <= set(t) for t in g["transitions"])
        m = await (await c.get("/metrics")).text()
        assert "# TYPE shoal_state_nodes gauge" in m
        assert 'shoal_state_nodes{phase="ready"} 3' in m

    serve(tmp_path, t)


BAD: list[tuple[str, str, Any, int]] = [
    ("PATCH", "/cfg/nodes", b"{not json", 400),
    ("PATCH", "/cfg/nodes", b"[1, 2]", 400),
    ("PATCH", "/cfg/nodes", {"image": 5}, 400),
    ("PATCH", "/cfg/nodes", {"max_unavailable": "2"}, 400),
    ("PATCH", "/cfg/nodes", {"max_unavailable": 0}, 400),
    ("PATCH", "/cfg/nodes", {"power": "sideways"}, 400),
    ("PATCH", "/cfg/nodes", {"nodes": "n1", "image": "x"}, 400),
    ("PATCH", "/cfg/nodes", {"bogus": 1}, 400),
    ("PATCH", "/cfg/nodes", {}, 400),
    ("PATCH", "/cfg/nodes", {"nodes": ["n9"], "image": "x"}, 404),
    ("PATCH", "/cfg/nodes/n9", {"image": "x"}, 404),
    ("GET", "/nodes/n9", None, 404),
    ("GET", "/dsc/nodes/n9", None, 404),
    ("GET", "/nope", None, 404),
    ("DELETE", "/nodes", None, 405),
    ("POST", "/freeze", {"nodes": [1]}, 400),
    ("POST", "/dsc/events", {"events": []}, 400),
    ("POST", "/dsc/events", {"events": [{"node": "n1", "kind": "process", "state": "X"}]}, 400),
    ("POST", "/dsc/events", {"events": [{"node": "n9", "kind": "heartbeat", "programs": {}}]}, 404),
    ("POST", "/dsc/events", b"x" * 70000, 413),
    ("GET", "/events?after=abc", None, 400),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD)
def test_malformed_requests_get_4xx_with_a_message(tmp_path: Path, method: str, path: str, body: Any,
                                                   status: int) -> None:
    async def t(c: TestClient[web.Request, web.Application], eng: Engine) -> None:
        raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        headers = {"Authorization": cred(method, path.split("?")[0], raw)} if raw else {}
        r = await c.request(method, path, data=raw, headers=headers)
        assert r.status == status, await r.text()
        data = await r.json()
        assert data["error"]

    serve(tmp_path, t)


def test_writes_need_a_credential_bound_to_the_request(tmp_path: Path) -> None:
    async def t(c: TestClient[web.Request, web.Application], eng: Engine) -> None:
        body = json.dumps({"nodes": ["n1"]}).encode()
        r = await c.post("/freeze", data=body)
        assert r.status == 401
        # A credential made for another body is refused.
        r = await c.post("/freeze", data=body, headers={"Authorization": cred("POST", "/freeze", b"{}")})
        assert r.status == 403
        # A job user's own credential is valid but not an admin's.
        r = await c.post("/freeze", data=body, headers={"Authorization": cred("POST", "/freeze", body, 1000)})
        assert r.status == 403
        assert not eng.nodes["n1"].desired.frozen
        good = cred("POST", "/freeze", body)
        r = await c.post("/freeze", data=body, headers={"Authorization": good})
        assert r.status == 200
        assert eng.nodes["n1"].desired.frozen
        r = await c.post("/freeze", data=body, headers={"Authorization": good})  # replayed
        assert r.status == 403
        r = await c.post("/freeze", data=body, headers={"Authorization": "Munge garbage"})
        assert r.status == 403
        # Node events: root's credential only.
        ev = json.dumps({"events": [{"node": "n2", "kind": "process", "program": "slurmd",
                                     "state": "FATAL"}]}).encode()
        job_user = cred("POST", "/dsc/events", ev, 1000)
        r = await c.post("/dsc/events", data=ev, headers={"Authorization": job_user})
        assert r.status == 403
        r = await c.post("/dsc/events", data=ev, headers={"Authorization": cred("POST", "/dsc/events", ev)})
        assert r.status == 200
        assert eng.nodes["n2"].discovered.programs["slurmd"] == "FATAL"

    serve(tmp_path, t)


def test_event_stream_replays_and_follows(tmp_path: Path) -> None:
    async def t(c: TestClient[web.Request, web.Application], eng: Engine) -> None:
        r = await c.get("/events?after=0")
        assert r.headers["Content-Type"].startswith("text/event-stream")
        got: list[dict[str, Any]] = []

        async def read() -> None:
            data: list[str] = []
            async for line in r.content:
                text = line.decode().rstrip("\n")
                if text.startswith("data:"):
                    data.append(text[5:])
                elif not text and data:
                    got.append(json.loads("".join(data)))
                    data = []
                    if got[-1]["kind"] == "freeze":
                        return

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.1)
        eng.freeze(["n3"], True)
        await asyncio.wait_for(reader, 5)
        kinds = [e["kind"] for e in got]
        assert "service" in kinds and kinds[-1] == "freeze"  # replayed history, then live
        assert [e["id"] for e in got] == sorted({e["id"] for e in got})
        r.close()

    serve(tmp_path, t)


def test_one_peer_cannot_hold_unbounded_streams_or_decodes(tmp_path: Path) -> None:
    """A job user on the cluster network: the 9th event stream from one address is refused (429)
    and a closed stream frees its place; bogus credentials in flight are bounded per address, so
    they never hold every worker thread (other peers' heartbeats keep being decoded)."""
    async def t(c: TestClient[web.Request, web.Application], eng: Engine) -> None:
        assert isinstance(c.server, TestServer)
        limits = c.server.app[LIMITS]
        streams = [await c.get("/events") for _ in range(limits.max_streams)]
        assert all(r.status == 200 for r in streams)
        over = await c.get("/events")
        assert over.status == 429 and "event streams open already" in (await over.json())["error"]
        streams.pop().close()
        for _ in range(50):  # the server sees the disconnect
            if sum(limits.streams.values()) < limits.max_streams:
                break
            await asyncio.sleep(0.02)
        again = await c.get("/events")
        assert again.status == 200
        for r in [*streams, again]:
            r.close()
        # 20 bogus credentials at once: at most max_decodes of them are decoded at a time
        body = json.dumps({"events": [{"node": "n1", "kind": "heartbeat", "programs": {}}]}).encode()
        slot = limits.decode_slot("127.0.0.1")
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, limits.max_decodes - slot._value)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        bad = await asyncio.gather(*[
            c.post("/dsc/events", data=body, headers={"Authorization": f"Munge MUNGE:0:{i:02x}"})
            for i in range(20)])
        watcher.cancel()
        assert {r.status for r in bad} <= {401, 403} and most <= limits.max_decodes

    serve(tmp_path, t)


def test_unix_socket_peer_credentials_and_cli_client(tmp_path: Path) -> None:
    sock = tmp_path / "d" / "api.sock"

    async def main() -> None:
        slurm = FakeSlurm(NAMES)
        backend = FakeBackend(NAMES, slurm)
        eng = Engine(Store(tmp_path / "s.sqlite"), slurm, backend, EngineConfig())  # type: ignore[arg-type]
        backend.engine = eng
        await eng.start()
        for admins, ok in (({os.getuid()}, True), ({os.getuid() + 1}, False)):
            runner = web.AppRunner(make_app(eng, admins))
            await runner.setup()
            sock.parent.mkdir(mode=0o700, exist_ok=True)
            await web.UnixSite(runner, str(sock)).start()
            c = StateClient(socket_path=str(sock))
            data = await asyncio.to_thread(c.request, "GET", "/nodes")
            assert len(data["nodes"]) == 3
            if ok:
                await asyncio.to_thread(c.request, "POST", "/freeze", {"nodes": ["n1"]})
                assert eng.nodes["n1"].desired.frozen
            else:
                with pytest.raises(StateAPIError, match="may not change state"):
                    await asyncio.to_thread(c.request, "POST", "/thaw", {})
            await runner.cleanup()
        await eng.stop()

    asyncio.run(main())


def test_listen_refuses_wildcards() -> None:
    from shoal.errors import ConfigError
    from shoal.state.service import parse_listen

    assert parse_listen("10.250.3.2:6830") == ("10.250.3.2", 6830)
    for bad in ("0.0.0.0:6830", "[::]:6830", "ctl:6830", "10.0.0.1:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
