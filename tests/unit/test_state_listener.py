"""The node-side supervisord event listener (recipes/layer1/shoal-state-listener.py): Python 3.6 syntax,
stdlib only, speaks supervisord's eventlistener protocol, and posts events with credentials from a
real munged (libmunge through ctypes), under the host's python3 and a real Python 3.6."""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from shoal.state import auth
from tests.python36 import python36

REPO = Path(__file__).resolve().parents[2]
LISTENER = REPO / "shoal" / "images" / "recipes" / "layer1" / "shoal-state-listener.py"
STDLIB = set(sys.stdlib_module_names) | {"_sha2"}  # 3.12+'s name of 3.11's _sha256


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


class UnixXMLRPC(SimpleXMLRPCServer):
    """supervisord's XML-RPC on a unix socket, as the listener finds it (SUPERVISOR_SERVER_URL)."""

    address_family = socket.AF_UNIX

    class Handler(SimpleXMLRPCRequestHandler):
        disable_nagle_algorithm = False  # TCP_NODELAY: not on a unix socket

    def __init__(self, path: str) -> None:
        super().__init__(path, requestHandler=self.Handler, logRequests=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("interpreter", ["host", "3.6"])
def test_listener_sends_before_exit_when_kept_alive(munged: str, interpreter: str, tmp_path: Path) -> None:
    """Stdin kept open: the hello (with the program states supervisord gave at start) and the
    FATAL event must arrive within seconds, each once, with a credential munged made for root
    (this test's uid) and bound to this very body; and the long-running listener holds neither
    OpenSSL nor the XML-RPC client's expat (memory: one listener per node)."""
    import time

    py = "/usr/bin/python3" if interpreter == "host" else python36()
    got: list[dict[str, Any]] = []
    creds_ok: list[bool] = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # as aiohttp answers: Content-Length, keep-alive by default

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            payload = f"shoal-state-v1 POST /dsc/events {hashlib.sha256(body).hexdigest()}"
            scheme, _, cred = self.headers["Authorization"].partition(" ")
            who, carried = auth.decode(cred, munged)
            creds_ok.append(scheme == "Munge" and carried == payload and who.uid == os.getuid())
            got.extend(json.loads(body)["events"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    rpc_path = tmp_path / "supervisor.sock"
    rpc = UnixXMLRPC(str(rpc_path))
    rpc.register_function(lambda: [{"name": "slurmd", "statename": "RUNNING"},
                                   {"name": "munged", "statename": "RUNNING"}],
                          "supervisor.getAllProcessInfo")
    threading.Thread(target=rpc.serve_forever, daemon=True).start()
    env = {**os.environ, "SHOAL_STATE_MUNGE_SOCKET": munged, "SUPERVISOR_SERVER_URL": f"unix://{rpc_path}",
           "SHOAL_STATE_URL": f"http://127.0.0.1:{srv.server_port}"}
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
        time.sleep(0.5)  # a resend, if any, would come now
        fatal = [e for e in got if e["kind"] == "process"]
        assert [(e["program"], e["state"], e["from"]) for e in fatal] == [("slurmd", "FATAL", "BACKOFF")]
        hello = [e for e in got if e["kind"] == "hello"]
        assert len(hello) == 1 and hello[0]["programs"] == {"slurmd": "RUNNING", "munged": "RUNNING"}
        assert creds_ok and all(creds_ok)
        maps = Path(f"/proc/{p.pid}/maps").read_text()
        assert "libcrypto" not in maps and "libssl" not in maps and "pyexpat" not in maps, [
            ln.split()[-1] for ln in maps.splitlines() if "crypto" in ln or "ssl" in ln or "expat" in ln]
    finally:
        p.kill()
        p.wait()
        srv.shutdown()
        rpc.shutdown()
        rpc.server_close()
