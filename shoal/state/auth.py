"""Who may change state: munge credentials over TCP, peer credentials on the unix socket.

Reading is open to anyone who can reach the API (inside the cluster network). Every change of
desired state and every node event is authenticated:

- over TCP, the request carries `Authorization: Munge <credential>` made by `munge -s PAYLOAD`
  with the cluster's munge key; PAYLOAD binds the credential to this one request (method, path
  and a SHA-256 of the body), munged refuses a credential decoded twice (replay) or past its TTL,
  and the decoded uid must be an admin uid (root by default). Job users on the nodes can reach the
  network and can make munge credentials too, but only with their own uid.
- on the unix socket (a root-only directory on the service's host), the kernel's SO_PEERCRED
  says who connected; the uid must be an admin uid.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass

from shoal.errors import CommandError, ShoalError
from shoal.runner import run

SCHEME = "Munge"
PAYLOAD_VERSION = "shoal-state-v1"


class AuthError(ShoalError):
    pass


@dataclass(frozen=True)
class Principal:
    uid: int
    gid: int
    via: str  # "munge" | "peercred"


def request_payload(method: str, path: str, body: bytes) -> str:
    """What a credential for this request must carry (the node listener builds the same)."""
    return f"{PAYLOAD_VERSION} {method.upper()} {path} {hashlib.sha256(body).hexdigest()}"


def encode(payload: str, socket_path: str | None = None, timeout: float = 10.0) -> str:
    argv = ["munge", "-s", payload]
    if socket_path:
        argv += ["--socket", socket_path]
    done = run(argv, timeout=timeout, what="munge", hint="is munged running with the cluster's key?")
    return done.stdout.strip()


def parse_unmunge(text: str) -> tuple[dict[str, str], str]:
    """unmunge's output: 'KEY: value' metadata lines, a blank line, then the payload."""
    head, _, payload = text.partition("\n\n")
    meta: dict[str, str] = {}
    for line in head.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip()] = value.strip()
    return meta, payload


def decode(credential: str, socket_path: str | None = None, timeout: float = 10.0) -> tuple[Principal, str]:
    """Check CREDENTIAL with munged; (who made it, its payload). AuthError when it is not valid."""
    if not credential.startswith("MUNGE:") or len(credential) > 8192 or any(c.isspace() for c in credential):
        raise AuthError("malformed munge credential")
    argv = ["unmunge", "--numeric"]
    if socket_path:
        argv += ["--socket", socket_path]
    try:
        done = run(argv, input=credential + "\n", timeout=timeout, what="unmunge")
    except CommandError as exc:
        raise AuthError(f"munge credential refused: {(exc.stderr or exc.stdout).strip()[:200]}") from None
    meta, payload = parse_unmunge(done.stdout)
    try:
        uid = int(meta["UID"].split()[0])
        gid = int(meta["GID"].split()[0])
    except (KeyError, ValueError, IndexError):
        raise AuthError("unmunge gave no uid/gid") from None
    return Principal(uid, gid, "munge"), payload


def peer_credentials(sock: socket.socket) -> Principal:
    """uid/gid of the process at the other end of a unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", raw)
    return Principal(uid, gid, "peercred")
