"""Client of the state API for the CLI (stdlib http.client): a unix socket (peer credentials) or
TCP with a munge credential per write request."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from shoal.errors import ShoalError
from shoal.state import auth


class StateAPIError(ShoalError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class StateClient:
    def __init__(
        self,
        socket_path: str | None = None,
        url: str | None = None,
        munge_socket: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not socket_path and not url:
            raise StateAPIError("no state service given", "use --cluster NAME, --socket PATH or --url URL")
        self.socket_path = socket_path
        self.url = url
        self.munge_socket = munge_socket
        self.timeout = timeout

    @property
    def where(self) -> str:
        return self.socket_path or self.url or ""

    def _conn(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.socket_path:
            return _UnixConnection(self.socket_path, timeout)
        parts = urlsplit(self.url or "")
        if parts.scheme != "http" or not parts.hostname:
            raise StateAPIError(f"cannot use URL {self.url!r}", "give http://HOST:PORT")
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)

    def _open(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> http.client.HTTPResponse:
        raw = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if method != "GET" and not self.socket_path:
            cred = auth.encode(auth.request_payload(method, path.split("?")[0], raw), self.munge_socket)
            headers["Authorization"] = f"{auth.SCHEME} {cred}"
        conn = self._conn(timeout if timeout is not None else self.timeout)
        try:
            conn.request(method, path, body=raw or None, headers=headers)
            return conn.getresponse()
        except OSError as exc:
            raise StateAPIError(
                f"cannot reach the state service at {self.where}: {exc}",
                "is it running? `shoal state serve` (starts with `shoal cluster up`)",
            ) from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self._open(method, path, body)
        data = resp.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode(errors="replace")
        if resp.status >= 400:
            msg = parsed.get("error") if isinstance(parsed, dict) else str(parsed)
            hint = parsed.get("hint") if isinstance(parsed, dict) else None
            raise StateAPIError(f"state service: {msg} (HTTP {resp.status})", hint)
        return parsed

    def text(self, path: str) -> str:
        resp = self._open("GET", path)
        data = resp.read().decode(errors="replace")
        if resp.status >= 400:
            raise StateAPIError(f"state service: HTTP {resp.status}: {data[:200]}")
        return data

    def events(self, after: int | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent events, parsed, until the service closes the stream."""
        path = "/events" + (f"?after={after}" if after is not None else "")
        resp = self._open("GET", path, timeout=None)
        if resp.status >= 400:
            raise StateAPIError(f"state service: HTTP {resp.status}: {resp.read()[:200]!r}")
        data: list[str] = []
        while True:
            line = resp.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\r\n")
            if text.startswith("data:"):
                data.append(text[5:].strip())
            elif not text and data:
                yield json.loads("\n".join(data))
                data = []
