"""The pipelined broadcast's transport for real: N node processes on loopback, one port each.

Each node is its own process running shoal.staging.bcast under the oldest Python the node side
supports (3.6, when pyenv has it; else this interpreter), so the test also proves the module's
syntax. A middle node is killed with SIGKILL mid-broadcast: the nodes after it must be re-fed
from an earlier node, and the lost node must be named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.paths import REPO_ROOT
from shoal.staging import bcast

PY36 = Path.home() / ".pyenv/versions/3.6.15/bin/python3.6"
PYTHON = str(PY36) if PY36.exists() else sys.executable
TOKEN = "s3cret-token"

NODE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from shoal.staging.bcast import Broadcast
a = json.loads(sys.argv[2])
b = Broadcast(a["nodes"], a["rank"], a["dest"], a["size"], a["want"], a["token"].encode(),
              time.monotonic() + a["timeout"], src=a.get("src"), chunk=a["chunk"],
              fanout=a["fanout"], peers=[tuple(p) for p in a["peers"]], rate=a.get("rate", 0),
              unpack_dir=a.get("unpack_dir"), keep_dest=a.get("keep_dest", True))
print(json.dumps(b.run()))
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start(tmp: Path, n: int, src: Path, *, fanout: int = 1, chunk: int = 64 * 1024,
          rate: float = 0, want: str | None = None, tokens: list[str] | None = None,
          timeout: float = 60, unpack: bool = False) -> list[subprocess.Popen[str]]:
    data = src.read_bytes()
    nodes = [f"n{i}" for i in range(n)]
    peers = [("127.0.0.1", p) for p in free_ports(n)]
    procs = []
    for r in range(n):
        d = tmp / nodes[r]
        d.mkdir()
        a: dict[str, Any] = {
            "nodes": nodes, "rank": r, "dest": str(d / "image.bin"), "size": len(data),
            "want": want or hashlib.sha256(data).hexdigest(), "token": (tokens or [TOKEN] * n)[r],
            "timeout": timeout, "chunk": chunk, "fanout": fanout, "peers": peers, "rate": rate,
            "src": str(src) if r == 0 else None,
        }
        if unpack:
            a["unpack_dir"] = str(d / "tree")
            a["keep_dest"] = False
        procs.append(subprocess.Popen([PYTHON, "-I", "-c", NODE, str(REPO_ROOT), json.dumps(a)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            raise AssertionError(f"a node hung: {se}") from None
        lines = [ln for ln in so.splitlines() if ln.startswith("{")]
        out.append(json.loads(lines[-1]) if lines else None)
        if p.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(se)
    return out


@pytest.fixture()
def payload(tmp_path: Path) -> Path:
    p = tmp_path / "src.bin"
    p.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))  # not a multiple of the chunk
    return p


@pytest.mark.parametrize("fanout", [1, 2, 3])
def test_every_node_gets_the_file(tmp_path: Path, payload: Path, fanout: int) -> None:
    recs = finish(start(tmp_path, 7, payload, fanout=fanout))
    want = payload.read_bytes()
    for r, rec in enumerate(recs):
        assert rec is not None and rec["ok"], rec
        assert (tmp_path / f"n{r}" / "image.bin").read_bytes() == want
        assert rec["lost"] == {} and not rec["refed"]
        assert rec["cpu_seconds"] >= 0 and rec["copy_seconds"] > 0
    assert recs[0] is not None and recs[0]["storage_bytes_read"] == len(want)
    assert recs[0]["sent_bytes"] == len(want) * min(fanout, 6)
    assert all(r is not None and r["received_bytes"] == len(want) for r in recs[1:])
    assert recs[0]["hops"] == bcast.hops(7, fanout)


def test_topology() -> None:
    assert bcast.children_of(0, 5, 1) == [1]
    assert bcast.ancestors(4, 1) == [3, 2, 1, 0]
    assert bcast.children_of(1, 10, 3) == [4, 5, 6]
    assert bcast.ancestors(9, 3) == [2, 0]
    assert sorted(bcast.subtree(0, 10, 3)) == list(range(1, 10))
    assert bcast.hops(32, 1) == 31 and bcast.hops(32, 2) == 5
    assert bcast.default_port("123", "4") == bcast.default_port("123", "4")


def test_unpacks_as_it_streams(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "big").write_bytes(os.urandom(2 << 20))
    tarball = tmp_path / "img.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(tree), "."], check=True)
    recs = finish(start(tmp_path, 3, tarball, unpack=True))
    for r, rec in enumerate(recs):
        assert rec is not None and rec["ok"], rec
        got = tmp_path / f"n{r}" / "tree"
        assert (got / "big").read_bytes() == (tree / "big").read_bytes()
        assert not (tmp_path / f"n{r}" / "image.bin").exists()  # the tarball is not kept
        assert rec["unpack_end"] >= rec["copy_end"]


def test_middle_node_killed_downstream_refed(tmp_path: Path, payload: Path) -> None:
    # paced at 1 MB/s so the kill lands in the middle of a 3 MB broadcast
    procs = start(tmp_path, 5, payload, rate=1e6)
    part = tmp_path / "n2" / "image.bin"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 500_000):
        time.sleep(0.02)
    procs[2].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    recs = finish(procs)
    assert time.monotonic() - t0 < 45  # nothing waits for the dead node longer than REFEED_WAIT
    assert recs[2] is None  # killed: no record of its own
    want = payload.read_bytes()
    for r in (0, 1, 3, 4):
        rec = recs[r]
        assert rec is not None and rec["ok"], rec
        assert (tmp_path / f"n{r}" / "image.bin").read_bytes() == want
    r3, r0 = recs[3], recs[0]
    assert r3 is not None and r0 is not None
    assert r3["refed"] and r3["fed_by"] == ["n2", "n1"], r3  # re-fed from an earlier node
    assert "n2" in r3["lost"]
    # the lost node is named up to the root, by the node that was feeding it
    assert "n2" in r0["lost"] and "n1 lost n2" in r0["lost"]["n2"], r0["lost"]


def test_wrong_secret_is_refused(tmp_path: Path, payload: Path) -> None:
    recs = finish(start(tmp_path, 2, payload, tokens=[TOKEN, "other"], timeout=8))
    r1 = recs[1]
    assert r1 is not None and not r1["ok"]
    assert "no earlier node could feed it" in r1["error"], r1
    assert not (tmp_path / "n1" / "image.bin").exists()  # no partial copy left behind


def test_digest_not_in_manifest_fails_everywhere(tmp_path: Path, payload: Path) -> None:
    recs = finish(start(tmp_path, 3, payload, want="0" * 64))
    assert recs[0] is not None and "is not the store manifest's" in recs[0]["error"]
    for r, rec in enumerate(recs):
        assert rec is not None and not rec["ok"], rec  # the others: no good feed, or mismatch
        assert not (tmp_path / f"n{r}" / "image.bin").exists()


def test_refuses_without_secret(tmp_path: Path) -> None:
    with pytest.raises(bcast.BcastError, match="unauthenticated"):
        bcast.Broadcast(["a"], 0, str(tmp_path / "x"), 1, "0", b"", time.monotonic() + 1,
                        src="/dev/null")


def test_python36_was_used() -> None:
    if not PY36.exists():
        pytest.skip("no Python 3.6 here to prove the node side's syntax")
    assert shutil.which(str(PY36))
