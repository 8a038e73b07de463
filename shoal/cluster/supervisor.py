"""Talking to a node's supervisord over its XML-RPC interface (unix socket inside the node).

The socket lives in the node's private /run; the host reaches it through /proc/PID1/root, so no
TCP port is exposed on the cluster network.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from shoal.cluster.enter import pid1
from shoal.cluster.state import ClusterState
from shoal.errors import ClusterError


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path, self._timeout)


@dataclass(frozen=True)
class Program:
    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL
    pid: int
    description: str


class Supervisor:
    """XML-RPC client of one supervisord."""

    def __init__(self, socket_path: str, host: str, timeout: float = 10.0) -> None:
        self.host = host
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(socket_path, timeout), allow_none=True
        )

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            raise ClusterError(
                f"supervisord on {self.host}: {method}{args!r} failed: {exc.faultString}",
                "check the program name with `shoal cluster status`",
            ) from exc
        except OSError as exc:
            raise ClusterError(
                f"supervisord on {self.host} does not answer: {exc}",
                "is the node running? see `shoal cluster status`",
            ) from exc

    def programs(self) -> list[Program]:
        infos = self._call("getAllProcessInfo")
        return [
            Program(i["name"], i["statename"], int(i["pid"]), i["description"]) for i in infos
        ]

    def start(self, name: str) -> None:
        self._call("startProcess", name, True)

    def stop(self, name: str) -> None:
        self._call("stopProcess", name, True)

    def restart(self, name: str) -> None:
        info = self._call("getProcessInfo", name)
        if info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            self.stop(name)
        self.start(name)


def supervisor_of(state: ClusterState, node: str, timeout: float = 10.0) -> Supervisor:
    """The XML-RPC client of NODE's supervisord (through its PID 1's root: no TCP port needed)."""
    pid = pid1(state, node)
    return Supervisor(f"/proc/{pid}/root/run/supervisor.sock", node, timeout=timeout)
