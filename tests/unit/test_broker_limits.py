"""The mount broker's sockets serve a bounded number of requests at once (a job user cannot hold
a host thread per connection), drop clients that send nothing, and the node side retries "busy".

The broker's own socket server runs here for real, on a temporary directory; only the request
handler is replaced, by one that waits, so that slots stay taken as long as the test wants.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.staging import broker as brk
from shoal.staging import privileged as priv


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, threading.Event]]:
    """A broker serving node1's user socket, whose requests wait for the returned event."""
    monkeypatch.setattr(brk, "socket_path", lambda cd, node, user=False: tmp_path / f"{node}.sock")
    monkeypatch.setattr(brk, "RECV_TIMEOUT", 0.5)
    go = threading.Event()

    def handle(self: brk.Broker, node: str, line: bytes, peer_uid: int | None = None,
               fds: list[int] | None = None) -> dict[str, Any]:
        go.wait(10)
        return {"ok": True, "node": node, "uid": peer_uid}

    monkeypatch.setattr(brk.Broker, "handle", handle)
    srv = brk.Broker("limits")._server("node1", user=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield tmp_path / "node1.sock", go
    finally:
        go.set()
        srv.shutdown()
        srv.server_close()


def _ask(path: Path) -> dict[str, Any]:
    return priv._broker_call_once({"op": "umount-local", "job": "1"}, str(path), 10.0, None)


def test_requests_beyond_the_slots_are_told_busy_at_once(served: tuple[Path, threading.Event]) -> None:
    path, go = served
    results: list[Any] = []
    holders = [threading.Thread(target=lambda: results.append(_ask(path)))
               for _ in range(brk.SLOTS_PER_SOCKET)]
    for t in holders:
        t.start()
    time.sleep(0.3)  # every slot taken by a waiting request
    t0 = time.monotonic()
    with pytest.raises(priv.Busy):
        _ask(path)
    assert time.monotonic() - t0 < 1.0  # turned away, not queued behind the others
    go.set()
    for t in holders:
        t.join(10)
    assert len(results) == brk.SLOTS_PER_SOCKET and all(r["ok"] for r in results)
    assert _ask(path)["ok"]  # slots given back


def test_client_retries_busy_until_a_slot_frees(served: tuple[Path, threading.Event]) -> None:
    path, go = served
    holders = [threading.Thread(target=_ask, args=(path,)) for _ in range(brk.SLOTS_PER_SOCKET)]
    for t in holders:
        t.start()
    time.sleep(0.3)
    threading.Timer(0.5, go.set).start()
    t0 = time.monotonic()
    answer = priv.broker_call({"op": "umount-local", "job": "1"}, str(path), timeout=10.0)
    assert answer["ok"] and 0.3 < time.monotonic() - t0 < 5
    for t in holders:
        t.join(10)


def test_client_that_says_nothing_is_dropped_and_frees_its_slot(
        served: tuple[Path, threading.Event]) -> None:
    path, go = served
    go.set()
    silent = []
    for _ in range(brk.SLOTS_PER_SOCKET):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        silent.append(s)
    time.sleep(1.0)  # past RECV_TIMEOUT: the broker hung up on all of them
    for s in silent:
        s.settimeout(2)
        assert s.recv(100) == b""
        s.close()
    assert _ask(path)["ok"]
