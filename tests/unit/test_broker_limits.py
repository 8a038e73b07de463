"""The mount broker's sockets serve a bounded number of requests at once (a job user cannot hold
a host thread per connection), drop clients that send nothing, and the node side retries "busy".

The broker's own socket server runs here for real, on a temporary directory; only the request
handler is replaced, by one that waits, so that slots stay taken as long as the test wants.
"""

from __future__ import annotations

import os
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


def test_broadcast_copy_must_be_the_store_files_bytes(tmp_path: Path) -> None:
    """mount-local's check: the job's copy (an open descriptor) against the store's own file."""
    store_file = tmp_path / "img.sqfs"
    data = bytes(range(256)) * 9000  # 2.2 MiB: more than one chunk
    store_file.write_bytes(data)
    copies = {"same": data, "last byte": data[:-1] + b"\x00", "short": data[:-1],
              "longer": data + b"x", "first chunk": b"\x01" + data[1:]}
    for what, content in copies.items():
        copy = tmp_path / f"copy-{what}"
        copy.write_bytes(content)
        fd = os.open(copy, os.O_RDONLY)
        try:
            assert brk._same_bytes(fd, str(store_file)) is (what == "same"), what
        finally:
            os.close(fd)
    # the store path is opened without following a link (the caller turns OSError into a refusal)
    link = tmp_path / "link.sqfs"
    link.symlink_to(store_file)
    fd = os.open(tmp_path / "copy-same", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            brk._same_bytes(fd, str(link))
    finally:
        os.close(fd)


def test_fresh_queries_one_call_per_wave_never_older_than_the_ask() -> None:
    """A node's ask for slurmctld's job record joins the next call, never the one in flight:
    every answer was fetched after its ask arrived, with one call for all nodes asking meanwhile."""
    started: list[float] = []
    first_may_end = threading.Event()

    def fetch(job: str) -> dict[str, Any]:
        started.append(time.monotonic())
        n = len(started)
        if n == 1:
            first_may_end.wait(10)
        if job == "gone":
            raise priv.Refused("slurmctld knows no job gone")
        return {"job": job, "call": n, "fetched": started[-1]}

    fq = brk.FreshQueries(fetch)
    answers: dict[str, tuple[float, dict[str, Any]]] = {}

    def ask(who: str) -> None:
        t = time.monotonic()
        answers[who] = (t, fq.get("7"))

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    while not started:
        time.sleep(0.01)
    wave = [threading.Thread(target=ask, args=(f"n{i}",)) for i in range(8)]
    for t in wave:
        t.start()
    time.sleep(0.2)  # all 8 are waiting behind the call in flight
    assert len(started) == 1
    first_may_end.set()
    for t in [first, *wave]:
        t.join(10)
    assert answers["first"][1]["call"] == 1
    assert {answers[f"n{i}"][1]["call"] for i in range(8)} == {2}, "the wave shares one call"
    assert all(rec["fetched"] >= t for t, rec in answers.values()), "an answer older than its ask"
    assert fq.calls == 2
    # an error reaches every ask of its call, and the next ask calls again
    with pytest.raises(priv.Refused, match="knows no job"):
        fq.get("gone")
    assert fq.get("7")["call"] == 4 and fq.calls == 4
