"""The HTTP API of the state service (aiohttp; the schema is in openapi.py).

Reads are open to whoever reaches a listener; writes (desired state, freeze/thaw) and node events
need an admin principal (auth.py). Every malformed request is answered 4xx with a JSON
{"error": ..., "hint": ...}: bad JSON or types 400, bad credentials 401/403, unknown node 404,
too large 413 (aiohttp), wrong method 405 (aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from shoal.state import auth
from shoal.state.engine import Engine, RequestError
from shoal.state.model import Health, Phase
from shoal.state.openapi import schema
from shoal.state.transitions import graph

log = logging.getLogger("shoal.state.api")

MAX_BODY = 64 * 1024
SSE_KEEPALIVE = 15.0

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
SETTINGS: web.AppKey[dict[str, Any]] = web.AppKey("settings", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PeerLimits:
    """What one TCP peer may hold (the unix socket is root's and not limited): open event streams,
    and munge decodes in flight. Without them a job user on the cluster network could open streams
    until memory ran out (each has a 10,000-event queue), or flood the service with bogus
    credentials and hold every worker thread decoding them (a subprocess each), delaying every
    node's heartbeats. Failures are not locked out: a node's listener shares its address with the
    node's job users, and a lockout would let a user silence the node."""

    def __init__(self, streams: int = 8, decodes: int = 2) -> None:
        self.max_streams = streams
        self.max_decodes = decodes
        self.streams: Counter[str] = Counter()
        self._decodes: dict[str, asyncio.Semaphore] = {}

    @contextlib.contextmanager
    def stream(self, peer: str) -> Iterator[None]:
        """One open event stream of PEER for the block; RequestError 429 over the limit (raised
        before the response starts, so the refusal is still a status code)."""
        if self.streams[peer] >= self.max_streams:
            raise RequestError(f"{peer} has {self.streams[peer]} event streams open already", 429,
                               "close one first: one stream carries every event")
        self.streams[peer] += 1
        try:
            yield
        finally:
            self.streams[peer] -= 1
            if self.streams[peer] <= 0:
                del self.streams[peer]

    def decode_slot(self, peer: str) -> asyncio.Semaphore:
        """Held while decoding one of PEER's credentials: a peer waits for its own slots only."""
        return self._decodes.setdefault(peer, asyncio.Semaphore(self.max_decodes))


LIMITS: web.AppKey[PeerLimits] = web.AppKey("limits", PeerLimits)


def _error(status: int, message: str, hint: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if hint:
        body["hint"] = hint
    return web.json_response(body, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return _error(exc.status, exc.message, exc.hint)
    except auth.AuthError as exc:
        return _error(403, exc.message, exc.hint)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(exc.status, exc.reason)
        raise


async def _body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    raw = await request.read()
    if not raw:
        return raw, {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not JSON: {exc}", 400) from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", 400)
    return raw, data


def _on_unix_socket(request: web.Request) -> socket.socket | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        return sock  # type: ignore[no-any-return]
    return None


async def authenticate(request: web.Request, raw: bytes) -> auth.Principal:
    """The admin who sent this request, or RequestError 401/403."""
    sock = _on_unix_socket(request)
    if sock is not None:
        return _admin(request, auth.peer_credentials(sock))
    async with request.app[LIMITS].decode_slot(request.remote or "?"):
        return await _munge_admin(request, raw)


def _admin(request: web.Request, who: auth.Principal) -> auth.Principal:
    admins: set[int] = request.app[SETTINGS]["admin_uids"]
    if who.uid not in admins:
        raise RequestError(f"uid {who.uid} may not change state", 403, f"allowed uids: {sorted(admins)}")
    return who


async def _munge_admin(request: web.Request, raw: bytes) -> auth.Principal:
    """Who signed this request's munge credential, if it is an admin."""
    settings = request.app[SETTINGS]
    header = request.headers.get("Authorization", "")
    scheme, _, cred = header.partition(" ")
    if scheme != auth.SCHEME or not cred:
        raise RequestError(
            "this request changes state and needs a munge credential",
            401,
            f"send 'Authorization: {auth.SCHEME} <munge -s PAYLOAD>' (see docs)",
        )
    who, payload = await asyncio.to_thread(auth.decode, cred.strip(), settings.get("munge_socket"))
    want = auth.request_payload(request.method, request.path, raw)
    if payload != want:
        raise RequestError(
            "munge credential was made for another request",
            403,
            "credentials are bound to method, path and body",
        )
    return _admin(request, who)


def _names(data: dict[str, Any]) -> list[str] | None:
    nodes = data.get("nodes")
    if nodes is None:
        return None
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise RequestError("'nodes' must be a list of node names")
    return nodes


def _only(data: dict[str, Any], allowed: set[str]) -> None:
    extra = set(data) - allowed
    if extra:
        raise RequestError(
            f"unknown field(s): {', '.join(sorted(extra))}", hint=f"allowed: {', '.join(sorted(allowed))}"
        )


# -- handlers ------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.json_response(
        {"service": "shoal state", **eng.summary(), "endpoints": sorted(schema()["paths"])}
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(schema())


async def cfg_nodes(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.json_response(
        {n: {**r.desired.as_dict(), "frozen": eng.frozen(r)} for n, r in sorted(eng.nodes.items())}
    )


async def cfg_node(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    rec = eng.node(request.match_info["name"])
    return web.json_response({**rec.desired.as_dict(), "frozen": eng.frozen(rec)})


def _desired_args(data: dict[str, Any]) -> dict[str, Any]:
    image, power, maxu = data.get("image"), data.get("power"), data.get("max_unavailable")
    if image is not None and not isinstance(image, str):
        raise RequestError("'image' must be a string (e.g. layer1:HASH)")
    if power is not None and not isinstance(power, str):
        raise RequestError("'power' must be 'on' or 'off'")
    if maxu is not None and (not isinstance(maxu, int) or isinstance(maxu, bool)):
        raise RequestError("'max_unavailable' must be an integer")
    if image is None and power is None and maxu is None:
        raise RequestError("nothing to set", hint="give image, power or max_unavailable")
    return {"image": image, "power": power, "max_unavailable": maxu}


async def set_cfg_nodes(request: web.Request) -> web.Response:
    raw, data = await _body(request)
    _only(data, {"image", "power", "max_unavailable", "nodes"})
    await authenticate(request, raw)
    eng = request.app[ENGINE]
    names = _names(data)
    changed = eng.set_desired(names, **_desired_args(data))
    return web.json_response({"nodes": changed, **eng.summary()})


async def set_cfg_node(request: web.Request) -> web.Response:
    raw, data = await _body(request)
    _only(data, {"image", "power"})
    await authenticate(request, raw)
    eng = request.app[ENGINE]
    name = request.match_info["name"]
    eng.node(name)
    changed = eng.set_desired([name], **_desired_args(data))
    return web.json_response({"nodes": changed})


async def dsc_nodes(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.json_response({n: r.discovered.as_dict() for n, r in sorted(eng.nodes.items())})


async def dsc_node(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.json_response(eng.node(request.match_info["name"]).discovered.as_dict())


async def nodes(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.json_response(
        {"summary": eng.summary(), "nodes": [eng.view(r) for _, r in sorted(eng.nodes.items())]}
    )


async def node(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    return web.json_response(eng.view(eng.node(request.match_info["name"])))


async def transition_graph(request: web.Request) -> web.Response:
    return web.json_response(graph())


async def _freeze(request: web.Request, frozen: bool) -> web.Response:
    raw, data = await _body(request)
    _only(data, {"nodes"})
    await authenticate(request, raw)
    eng = request.app[ENGINE]
    changed = eng.freeze(_names(data), frozen)
    await eng.refresh_slurm()
    return web.json_response({"nodes": changed, "frozen": frozen})


async def freeze(request: web.Request) -> web.Response:
    return await _freeze(request, True)


async def thaw(request: web.Request) -> web.Response:
    return await _freeze(request, False)


async def node_events(request: web.Request) -> web.Response:
    raw, data = await _body(request)
    _only(data, {"events"})
    events = data.get("events")
    if not isinstance(events, list) or not events or not all(isinstance(e, dict) for e in events):
        raise RequestError("'events' must be a non-empty list of event objects")
    who = await authenticate(request, raw)
    if who.uid != 0:
        raise RequestError("node events must come from root on the node", 403)
    eng = request.app[ENGINE]
    peer = "" if _on_unix_socket(request) else (request.remote or "")
    for ev in events:
        eng.on_node_event(ev, peer)
    return web.json_response({"accepted": len(events)})


def _sse(ev: dict[str, Any]) -> bytes:
    return f"id: {ev['id']}\nevent: {ev['kind']}\ndata: {json.dumps(ev, sort_keys=True)}\n\n".encode()


async def event_stream(request: web.Request) -> web.StreamResponse:
    eng = request.app[ENGINE]
    after_s = request.query.get("after") or request.headers.get("Last-Event-ID") or ""
    if after_s and not after_s.isdigit():
        raise RequestError("'after' must be an event id (a non-negative integer)")
    after = int(after_s) if after_s else eng.store.last_event_id()
    # the unix socket is root's: not limited
    held = (contextlib.nullcontext() if _on_unix_socket(request) is not None
            else request.app[LIMITS].stream(request.remote or "?"))
    with held:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        q = eng.subscribe()  # before the replay, so nothing falls between the two
        try:
            for ev in eng.store.events_after(after, limit=10000):
                await resp.write(_sse(ev))
                after = ev["id"]
            while True:
                try:
                    async with asyncio.timeout(SSE_KEEPALIVE):  # not wait_for: see Engine._poller
                        ev = await q.get()
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if ev["id"] > after:
                    await resp.write(_sse(ev))
                    after = ev["id"]
        except ConnectionResetError:
            pass  # the reader went away
        finally:
            eng.unsubscribe(q)
    return resp


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


async def metrics(request: web.Request) -> web.Response:
    eng = request.app[ENGINE]
    now = time.time()
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP shoal_state_{name} {help_}")
        lines.append(f"# TYPE shoal_state_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"shoal_state_{name}{{{lab}}} {value:g}" if lab else f"shoal_state_{name} {value:g}")

    phases = {p: 0 for p in Phase}
    healths = {h: 0 for h in Health}
    per_node: list[tuple[dict[str, str], float]] = []
    hb: list[tuple[dict[str, str], float]] = []
    for name, rec in sorted(eng.nodes.items()):
        phases[rec.phase] += 1
        h, _ = eng.health(rec)
        healths[h] += 1
        per_node.append(
            ({"node": name, "phase": str(rec.phase), "health": str(h)}, 1 if h == Health.OK else 0)
        )
        if rec.discovered.heartbeat:
            hb.append(({"node": name}, round(now - rec.discovered.heartbeat, 3)))
    metric("nodes", "gauge", "Nodes by phase.", [({"phase": str(p)}, float(n)) for p, n in phases.items()])
    metric(
        "nodes_health",
        "gauge",
        "Nodes by discovered health.",
        [({"health": str(h)}, float(n)) for h, n in healths.items()],
    )
    metric("node_healthy", "gauge", "1 when the node's discovered health is ok.", per_node)
    metric("heartbeat_age_seconds", "gauge", "Seconds since the node's last event.", hb)
    metric(
        "unavailable_nodes", "gauge", "Nodes not ready or in a transition.", [({}, float(eng.unavailable()))]
    )
    metric(
        "max_unavailable", "gauge", "Desired bound on unavailable nodes.", [({}, float(eng.max_unavailable))]
    )
    metric("frozen", "gauge", "1 when the whole cluster is frozen.", [({}, 1.0 if eng.frozen_all else 0.0)])
    tr: list[tuple[dict[str, str], float]] = []
    ev: list[tuple[dict[str, str], float]] = []
    for key, n in sorted(eng.counters.items()):
        parts = key.split(".")
        if parts[0] == "transition":
            tr.append(({"status": parts[1], "transition": ".".join(parts[2:])}, float(n)))
        elif parts[0] in ("event", "node_event"):
            ev.append(({"source": parts[0], "kind": parts[1]}, float(n)))
    metric("transitions_total", "counter", "Transitions by name and outcome.", tr)
    metric("events_total", "counter", "Events emitted and node events received.", ev)
    metric(
        "slurm_update_batches_total",
        "counter",
        "scontrol update calls (one per batch).",
        [({}, float(eng.bridge.calls))],
    )
    metric(
        "slurm_poll_errors_total",
        "counter",
        "Failed reads of Slurm's node states.",
        [({}, float(eng.counters["slurm.poll_errors"]))],
    )
    metric(
        "uptime_seconds", "gauge", "Seconds since the service started.", [({}, round(now - eng.started, 3))]
    )
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Version": "0.0.4"},
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", index),
    ("GET", "/openapi.json", openapi),
    ("GET", "/cfg/nodes", cfg_nodes),
    ("PATCH", "/cfg/nodes", set_cfg_nodes),
    ("GET", "/cfg/nodes/{name}", cfg_node),
    ("PATCH", "/cfg/nodes/{name}", set_cfg_node),
    ("GET", "/dsc/nodes", dsc_nodes),
    ("GET", "/dsc/nodes/{name}", dsc_node),
    ("POST", "/dsc/events", node_events),
    ("GET", "/nodes", nodes),
    ("GET", "/nodes/{name}", node),
    ("GET", "/graph", transition_graph),
    ("POST", "/freeze", freeze),
    ("POST", "/thaw", thaw),
    ("GET", "/events", event_stream),
    ("GET", "/metrics", metrics),
]


def make_app(
    engine: Engine, admin_uids: set[int] | None = None, munge_socket: str | None = None
) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    app[ENGINE] = engine
    app[LIMITS] = PeerLimits()
    app[SETTINGS] = {
        "admin_uids": admin_uids if admin_uids is not None else {0},
        "munge_socket": munge_socket,
    }
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


async def shutdown_streams(app: web.Application) -> None:
    with contextlib.suppress(Exception):
        for q in list(app[ENGINE]._subscribers):
            app[ENGINE].unsubscribe(q)
