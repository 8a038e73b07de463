"""Who may change state: munge credentials over TCP, peer credentials on the unix socket.

Reading is open to anyone who can reach the API (inside the cluster network). Every change of
desired state and every node event is authenticated:

- over TCP, the request carries `Authorization: Munge <credential>` (what `munge -s PAYLOAD`
  prints) made with the cluster's munge key; PAYLOAD binds the credential to this one request (method, path
  and a SHA-256 of the body), munged refuses a credential decoded twice (replay) or past its TTL,
  and the decoded uid must be an admin uid (root by default). Job users on the nodes can reach the
  network and can make munge credentials too, but only with their own uid.
- on the unix socket (a root-only directory on the service's host), the kernel's SO_PEERCRED
  says who connected; the uid must be an admin uid.

Credentials are made and checked through libmunge (ctypes), not by running munge(1)/unmunge(1): at
256 nodes a heartbeat every 5 s is 51 requests a second, and a fork+exec of each tool per request
cost 3.3 ms of CPU against 0.19 ms through the library (bench/bench_munge.py), on a machine
whose 2 cores also run every node. The node's listener carries its own copy of the encode half
(it is a standalone Python 3.6 file on the node).
"""

from __future__ import annotations

import ctypes
import hashlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from shoal.errors import ShoalError

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


# munge.h: MUNGE_OPT_SOCKET in enum munge_opt (stable since munge 0.5).
_MUNGE_OPT_SOCKET = 8
MAX_CREDENTIAL = 8192


class LibMunge:
    """libmunge.so.2 through ctypes: munge_encode/munge_decode with a context per call (a context
    carries the socket and the last error; one per call keeps concurrent decodes independent)."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libmunge.so.2")
        except OSError as exc:
            raise AuthError(f"cannot load libmunge: {exc}", "install munge (Debian: libmunge2)") from None
        self.libc = ctypes.CDLL(None)  # free() for the buffers libmunge mallocs
        self.libc.free.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        # munge_ctx_set is variadic; the socket option takes one char*.
        lib.munge_ctx_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_strerror.restype = ctypes.c_char_p
        lib.munge_strerror.argtypes = [ctypes.c_int]
        lib.munge_strerror.restype = ctypes.c_char_p
        lib.munge_encode.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.munge_decode.argtypes = [
            ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]
        self.lib = lib

    @contextmanager
    def _ctx(self, socket_path: str | None) -> Iterator[int]:
        ctx = self.lib.munge_ctx_create()
        if not ctx:
            raise AuthError("libmunge: cannot create a context (out of memory)")
        try:
            if socket_path and self.lib.munge_ctx_set(ctx, _MUNGE_OPT_SOCKET, socket_path.encode()) != 0:
                raise AuthError(f"libmunge: cannot use socket {socket_path}")
            yield ctx
        finally:
            self.lib.munge_ctx_destroy(ctx)

    def _error(self, ctx: int, err: int) -> str:
        text: bytes = self.lib.munge_ctx_strerror(ctx) or self.lib.munge_strerror(err) or b"error %d" % err
        return text.decode(errors="replace")

    def encode(self, payload: bytes, socket_path: str | None = None) -> str:
        with self._ctx(socket_path) as ctx:
            cred = ctypes.c_void_p()
            err = self.lib.munge_encode(ctypes.byref(cred), ctx, payload, len(payload))
            try:
                if err != 0:
                    raise AuthError(f"munge: {self._error(ctx, err)}",
                                    "is munged running with the cluster's key?")
                return ctypes.string_at(cred.value).decode("ascii") if cred.value else ""
            finally:
                if cred.value:
                    self.libc.free(cred)

    def decode(self, credential: str, socket_path: str | None = None) -> tuple[int, int, bytes]:
        """(uid, gid, payload) of a valid credential; AuthError naming munged's refusal otherwise."""
        with self._ctx(socket_path) as ctx:
            buf, length = ctypes.c_void_p(), ctypes.c_int()
            uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
            err = self.lib.munge_decode(credential.encode("ascii"), ctx, ctypes.byref(buf),
                                        ctypes.byref(length), ctypes.byref(uid), ctypes.byref(gid))
            try:
                # Some errors (expired, replayed) still fill the buffer: it is freed, never used.
                if err != 0:
                    raise AuthError(f"munge credential refused: {self._error(ctx, err)[:200]}")
                payload = ctypes.string_at(buf.value, length.value) if buf.value and length.value > 0 else b""
                return uid.value, gid.value, payload
            finally:
                if buf.value:
                    self.libc.free(buf)


_lib: LibMunge | None = None
_lib_lock = threading.Lock()


def libmunge() -> LibMunge:
    """The process's libmunge binding, loaded on first use (tests put a stand-in here)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = LibMunge()
        return _lib


@contextmanager
def use_libmunge(lib: LibMunge) -> Iterator[None]:
    """Use LIB for credentials inside the block (a unit test's stand-in for munged)."""
    global _lib
    with _lib_lock:
        before, _lib = _lib, lib
    try:
        yield
    finally:
        with _lib_lock:
            _lib = before


def encode(payload: str, socket_path: str | None = None) -> str:
    """A credential carrying PAYLOAD, made by munged at SOCKET_PATH (libmunge's default if None)."""
    return libmunge().encode(payload.encode(), socket_path)


def decode(credential: str, socket_path: str | None = None) -> tuple[Principal, str]:
    """Check CREDENTIAL with munged; (who made it, its payload). AuthError when it is not valid."""
    if (not credential.startswith("MUNGE:") or len(credential) > MAX_CREDENTIAL
            or not credential.isascii() or any(c.isspace() or c == "\0" for c in credential)):
        raise AuthError("malformed munge credential")
    uid, gid, payload = libmunge().decode(credential, socket_path)
    return Principal(uid, gid, "munge"), payload.decode(errors="replace")


def peer_credentials(sock: socket.socket) -> Principal:
    """uid/gid of the process at the other end of a unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", raw)
    return Principal(uid, gid, "peercred")
