"""The node-side supervisord event listener (recipes/layer1/shoal-state-listener.py): Python 3.6 syntax,
stdlib only, speaks supervisord's eventlistener protocol, and posts events with credentials from a
real munged (libmunge through ctypes), under the host's python3 and a real Python 3.6."""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal.state import auth
from tests.python36 import python36

REPO = Path(__file__).resolve().parents[2]
LISTENER = REPO / "shoal" / "images" / "recipes" / "layer1" / "shoal-state-listener.py"
STDLIB = set(sys.stdlib_module_names)


def test_listener_is_python36_stdlib_only() -> None:
    src = LISTENER.read_text()
    tree = ast.parse(src, feature_version=(3, 6))  # walrus, positional-only, match ... refused
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module or ""]
            assert node.module != "__future__", "no __future__ imports on 3.6 node code"
        else:
            continue
        for m in mods:
            assert m.split(".")[0] in STDLIB, m
    # 3.7+ library features that would break on 3.6
    for bad in ("capture_output", "text=True", "removeprefix", "dataclass", "SimpleQueue", "fromisoformat"):
        assert bad not in src, bad


def test_listener_protocol_and_posted_events(tmp_path: Path, munged: str) -> None:
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {**os.environ, "SHOAL_STATE_MUNGE_SOCKET": munged,
           "SHOAL_STATE_URL": f"http://127.0.0.1:{srv.server_port}", "SHOAL_STATE_NODE": "node7"}
    env.pop("SUPERVISOR_SERVER_URL", None)

    def event(name: str, payload: str) -> bytes:
        body = payload.encode()
        return (f"ver:3.0 server:supervisor serial:1 pool:shoal-state poolserial:1 eventname:{name} "
                f"len:{len(body)}\n").encode() + body

    stdin = event("PROCESS_STATE_RUNNING", "processname:slurmd groupname:slurmd from_state:STARTING pid:42")
    stdin += event("PROCESS_STATE_FATAL", "processname:slurmd groupname:slurmd from_state:BACKOFF")
    stdin += event("TICK_5", "when:1700000000")
    p = subprocess.run(["/usr/bin/python3", str(LISTENER), "--config", str(tmp_path / "none.conf")],
                       input=stdin, capture_output=True, env=env, timeout=30)
    srv.shutdown()
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"READY\n" + b"RESULT 2\nOKREADY\n" * 3
    # (What it posts is checked below with stdin kept open: here the listener exits at EOF.)


@pytest.mark.parametrize("interpreter", ["host", "3.6"])
def test_listener_sends_before_exit_when_kept_alive(munged: str, interpreter: str) -> None:
    """Stdin kept open: the FATAL event must arrive within seconds, with a credential munged
    made for root (this test's uid) and bound to this very body."""
    import time

    py = "/usr/bin/python3" if interpreter == "host" else python36()
    got: list[dict[str, Any]] = []
    creds_ok: list[bool] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            payload = f"shoal-state-v1 POST /dsc/events {hashlib.sha256(body).hexdigest()}"
            scheme, _, cred = self.headers["Authorization"].partition(" ")
            who, carried = auth.decode(cred, munged)
            creds_ok.append(scheme == "Munge" and carried == payload and who.uid == os.getuid())
            got.extend(json.loads(body)["events"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {**os.environ, "SHOAL_STATE_MUNGE_SOCKET": munged,
           "SHOAL_STATE_URL": f"http://127.0.0.1:{srv.server_port}"}
    env.pop("SUPERVISOR_SERVER_URL", None)
    p = subprocess.Popen([py, str(LISTENER), "--config", "/nonexistent"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert p.stdin is not None and p.stdout is not None
        assert p.stdout.readline() == b"READY\n"
        body = b"processname:slurmd groupname:slurmd from_state:BACKOFF"
        p.stdin.write(b"ver:3.0 eventname:PROCESS_STATE_FATAL len:%d\n" % len(body) + body)
        p.stdin.flush()
        assert p.stdout.read(len(b"RESULT 2\nOK")) == b"RESULT 2\nOK"
        deadline = time.monotonic() + 5
        while not any(e["kind"] == "process" for e in got):
            assert time.monotonic() < deadline, p.stderr
            time.sleep(0.02)
        fatal = next(e for e in got if e["kind"] == "process")
        assert (fatal["program"], fatal["state"], fatal["from"]) == ("slurmd", "FATAL", "BACKOFF")
        assert any(e["kind"] == "hello" for e in got)
        assert creds_ok and all(creds_ok)
    finally:
        p.kill()
        p.wait()
        srv.shutdown()
