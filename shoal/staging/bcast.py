"""Pipelined, chunked broadcast of one file among the nodes of a job step (the ``bcast`` methods).

STANDARD LIBRARY ONLY, and Python 3.6 syntax (no postponed annotations, no dataclasses, no walrus):
this module runs on the nodes inside the agent bundle, one process per node, started by one
``srun`` over the allocation (``nodeagent.py bcast``).

Why: sbcast's tree sends k whole copies per level and each level waits for the previous one, so
its time grows with N. Here the file is cut into chunks and every node forwards chunk i to its
children while it receives chunk i+1 from its parent, so the time is about S/B plus one chunk per
hop, nearly independent of N (docs/PERFORMANCE.md has the figures).

Topology: nodes[0] is the root, the only reader of shared storage; node r's parent is
(r - 1) // fanout (fanout 1 = a chain). Every node writes what it receives to node-local memory
(``dest``, in /tmp), and its children are served from that file with sendfile, so forwarding costs
no copy in user space and any node can serve any offset it already holds, which is what re-feeding
needs.

Integrity: each chunk travels with the SHA-256 of the stream from byte 0 to the end of that chunk,
computed once by the root; a receiver continues its own running hash over the chunk and commits the
chunk only when the two agree, so a chunk corrupted on any hop is caught at that hop, with one hash
pass per byte. The running hash at the end is the whole file's SHA-256, and it is compared with the
digest the caller read from the store's manifest (``want_sha256``): nothing the sender says is
trusted for the final check.

Failure: a node whose upstream connection breaks (EOF, reset, a stall longer than ``stall``, or a
chunk failing its check) reconnects to the next ancestor (grandparent, ..., root) and resumes at
the first byte it does not hold. A node stays up, serving, until every node of its subtree has
reported (after its own copy is complete), so re-feeds can reach it. Lost nodes are reported by
name, up the tree, in each node's record (``lost``). Everything is bounded by ``deadline``.

Authentication: nothing listens unauthenticated. Every connection starts with a mutual
HMAC-SHA256 challenge over a per-step secret (``SHOAL_BCAST_TOKEN``) that the launcher puts in the
srun environment, which only the job's user (and root) can read.

Wire format (all integers big-endian):
  server -> client  MAGIC, 16-byte nonce
  client -> server  MAGIC, 16-byte nonce, rank (u32), offset (u64), HMAC(token, "c"|ns|nc|rank|off)
  server -> client  HMAC(token, "s"|nc|ns)
  server -> client  per chunk: offset (u64), length (u32), prefix SHA-256 (32 bytes), data
  client -> server  when its subtree is done: report length (u32), report (JSON)
"""

import contextlib
import hashlib
import hmac
import json
import os
import resource
import socket
import struct
import subprocess
import tempfile
import threading
import time

MAGIC = b"SHOALBC1"
NONCE = 16
HDR = struct.Struct("!QI32s")
REQ = struct.Struct("!IQ")
LEN = struct.Struct("!I")
TOKEN_ENV = "SHOAL_BCAST_TOKEN"
DEFAULT_CHUNK = 512 * 1024
DEFAULT_FANOUT = 1
MIN_CHUNK = 4096
MAX_CHUNK = 64 << 20
STALL = 15.0  # seconds without progress on a connection before it counts as broken
# how long a node waits for its parent to listen / its children to connect: generous, because
# 32 Python start-ups on 2 shared cores at load 60 took seconds each (docs/PERFORMANCE.md)
START_WAIT = 60.0
REFEED_WAIT = 15.0  # how long a node waits for the orphans of a lost child to come back
CONNECT_TIMEOUT = 3.0
MAX_REPORT = 1 << 20
ERR_OFFSET = (1 << 64) - 1  # a chunk header with this offset carries the sender's failure
PORT_BASE = 20000
PORT_SPAN = 30000


class BcastError(Exception):
    """A broadcast failure on this node; message says which node and what."""


def default_port(job: "str", step: "str") -> "int":
    """The step's port, the same on every node (srun gives all tasks one job and step id)."""
    try:
        j, s = int(job), int(step)
    except ValueError:
        j, s = sum(job.encode()), 0
    return PORT_BASE + (j * 31 + s) % PORT_SPAN


def parent_of(rank: "int", fanout: "int") -> "int":
    return (rank - 1) // fanout


def children_of(rank: "int", n: "int", fanout: "int") -> "list[int]":
    return [c for c in range(rank * fanout + 1, rank * fanout + fanout + 1) if c < n]


def ancestors(rank: "int", fanout: "int") -> "list[int]":
    out = []
    while rank > 0:
        rank = parent_of(rank, fanout)
        out.append(rank)
    return out


def subtree(rank: "int", n: "int", fanout: "int") -> "list[int]":
    """Every descendant of rank (not rank itself)."""
    out = []
    todo = children_of(rank, n, fanout)
    while todo:
        r = todo.pop(0)
        out.append(r)
        todo.extend(children_of(r, n, fanout))
    return out


def hops(n: "int", fanout: "int") -> "int":
    """Edges from the root to the deepest node (the pipeline's depth)."""
    return max((len(ancestors(r, fanout)) for r in range(n)), default=0)


def net_counters() -> "tuple[int, int]":
    """(rx, tx) bytes on every interface but lo of this network namespace (/proc/net/dev)."""
    rx = tx = 0
    try:
        with open("/proc/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() != "lo" and len(fields) > 8:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def cpu_seconds(who: "int" = resource.RUSAGE_SELF) -> "float":
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _recv_exact(sock: "socket.socket", n: "int") -> "bytes":
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def _recv_into(sock: "socket.socket", view: "memoryview") -> "None":
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("connection closed in the middle of a chunk")
        got += k


def _mac(token: "bytes", *parts: "bytes") -> "bytes":
    return hmac.new(token, b"".join(parts), hashlib.sha256).digest()


class Broadcast:
    """One node's part of one broadcast. ``run()`` returns this node's record (a dict)."""

    def __init__(self, nodes: "list[str]", rank: "int", dest: "str", size: "int", want_sha256: "str",
                 token: "bytes", deadline: "float", src: "str | None" = None,
                 chunk: "int" = DEFAULT_CHUNK, fanout: "int" = DEFAULT_FANOUT, port: "int" = 0,
                 unpack_dir: "str | None" = None, rate: "float" = 0.0, stall: "float" = STALL,
                 keep_dest: "bool" = True, peers: "list[tuple[str, int]] | None" = None) -> "None":
        if not 0 <= rank < len(nodes):
            raise BcastError(f"rank {rank} is not in a step of {len(nodes)} nodes")
        if not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise BcastError(f"chunk size {chunk} is out of range ({MIN_CHUNK}..{MAX_CHUNK})")
        if fanout < 1:
            raise BcastError(f"fan-out {fanout} must be at least 1")
        if rank == 0 and not src:
            raise BcastError("the root needs the source file")
        if not token:
            raise BcastError(f"no broadcast secret (${TOKEN_ENV} unset): refusing to listen "
                             "unauthenticated")
        self.nodes = nodes
        self.rank = rank
        self.me = nodes[rank]
        self.n = len(nodes)
        self.dest = dest
        self.size = size
        self.want = want_sha256
        self.token = token
        self.deadline = deadline
        self.src = src
        self.chunk = chunk
        self.fanout = fanout
        self.port = port
        self.unpack_dir = unpack_dir
        self.rate = rate
        self.stall = stall
        self.keep_dest = keep_dest
        # where each node listens: (node name, the step's port), or given (tests on one host)
        self.peers = peers or [(name, port) for name in nodes]
        if len(self.peers) != self.n:
            raise BcastError(f"{len(self.peers)} addresses for {self.n} nodes")
        self.nchunks = (size + chunk - 1) // chunk
        self.cond = threading.Condition()
        self.committed = 0  # bytes verified and written to dest
        self.digests = []  # type: list[bytes]
        self.copy_error = None  # type: str | None
        self.copy_end = None  # type: float | None
        self.fed_by = []  # type: list[str]
        self.lost = {}  # type: dict[str, str]
        self.reported_ok = set()  # type: set[str]
        self.pending = set(subtree(rank, self.n, fanout))  # type: set[int]
        self.active = set()  # type: set[int]
        self.claim_by = time.monotonic() + START_WAIT
        self.sent = 0
        self.received = 0
        self.closing = False
        self.upstream = None  # type: socket.socket | None
        self.listener = None  # type: socket.socket | None
        self.fd = -1
        self.tar = None  # type: subprocess.Popen[bytes] | None
        self.unpack_error = None  # type: str | None
        self.unpack_end = None  # type: float | None
        self.unpack_thread = None  # type: threading.Thread | None

    # ---- helpers -----------------------------------------------------------------------------

    def left(self) -> "float":
        return self.deadline - time.monotonic()

    def _commit(self, data: "bytes | memoryview", digest: "bytes") -> "None":
        view = memoryview(data)
        while view:
            k = os.write(self.fd, view)
            view = view[k:]
        with self.cond:
            self.committed += len(data)
            self.digests.append(digest)
            if self.committed >= self.size:
                self.copy_end = time.time()
            self.cond.notify_all()

    def _fail_copy(self, why: "str") -> "None":
        with self.cond:
            if self.copy_error is None:
                self.copy_error = why
            self.cond.notify_all()

    # ---- the root: read shared storage once ---------------------------------------------------

    def _read_source(self) -> "None":
        try:
            h = hashlib.sha256()
            t0 = time.monotonic()
            buf = bytearray(self.chunk)
            with open(str(self.src), "rb", buffering=0) as f:
                for i in range(self.nchunks):
                    n = min(self.chunk, self.size - i * self.chunk)
                    view = memoryview(buf)[:n]
                    got = 0
                    while got < n:
                        k = f.readinto(view[got:])
                        if not k:
                            at = i * self.chunk + got
                            raise BcastError(f"{self.src} ends at byte {at}, the manifest says "
                                             f"{self.size}")
                        got += k
                    h.update(view)
                    self._commit(view, h.digest())
                    if self.rate > 0:  # pacing, for tests that must catch a broadcast mid-way
                        ahead = (i + 1) * self.chunk / self.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
                    if self.left() <= 0:
                        raise BcastError(f"reading {self.src} ran past the step's timeout")
                if f.read(1):
                    raise BcastError(f"{self.src} is larger than the manifest's {self.size} bytes")
        except (OSError, BcastError) as exc:
            self._fail_copy(f"root {self.me}: {exc}")

    # ---- a receiver: from the parent, or an earlier node when the parent is lost --------------

    def _connect(self, rank: "int", offset: "int") -> "socket.socket":
        host, port = self.peers[rank]
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        try:
            sock.settimeout(min(self.stall, max(1.0, self.left())))
            hello = _recv_exact(sock, len(MAGIC) + NONCE)
            if hello[:len(MAGIC)] != MAGIC:
                raise BcastError(f"{host}:{port} is not a shoal broadcast")
            ns = hello[len(MAGIC):]
            nc = os.urandom(NONCE)
            req = REQ.pack(self.rank, offset)
            sock.sendall(MAGIC + nc + req + _mac(self.token, b"c", ns, nc, req))
            proof = _recv_exact(sock, 32)
            if not hmac.compare_digest(proof, _mac(self.token, b"s", nc, ns)):
                raise BcastError(f"{host} failed to authenticate (not this step's broadcast)")
            return sock
        except BaseException:
            sock.close()
            raise

    def _feed(self) -> "None":
        """Receive the file; switch to an earlier node whenever the current one is lost."""
        candidates = ancestors(self.rank, self.fanout)
        tried = []  # type: list[str]
        idx = 0
        h = hashlib.sha256()
        buf = bytearray(self.chunk)
        first = True
        while self.committed < self.size:
            if idx >= len(candidates):
                self._fail_copy("{}: no earlier node could feed it from byte {} ({})".format(
                    self.me, self.committed, "; ".join(tried)))
                return
            src_rank = candidates[idx]
            src = self.nodes[src_rank]
            try:
                sock = self._connect_waiting(src_rank, first)
            except (OSError, EOFError, BcastError) as exc:
                tried.append(f"{src}: {exc}")
                idx += 1
                first = False
                continue
            first = False
            self.upstream = sock
            self.fed_by.append(src)
            try:
                while self.committed < self.size:
                    off, length, digest = HDR.unpack(_recv_exact(sock, HDR.size))
                    if off == ERR_OFFSET:
                        why = _recv_exact(sock, min(length, MAX_REPORT)).decode(errors="replace")
                        raise BcastError(f"{src} failed: {why}")
                    if off != self.committed or length != min(self.chunk, self.size - off):
                        raise BcastError(f"{src} sent bytes {off}+{length}, expected {self.committed}")
                    view = memoryview(buf)[:length]
                    _recv_into(sock, view)
                    self.received += length
                    h2 = h.copy()
                    h2.update(view)
                    if h2.digest() != digest:
                        raise BcastError(f"chunk at byte {off} from {src} failed its sha256 check")
                    h = h2
                    self._commit(view, digest)
            except (OSError, EOFError, BcastError) as exc:
                why = f"lost {src} at byte {self.committed}: {exc}"
                tried.append(why)
                with self.cond:
                    self.lost.setdefault(src, f"{self.me} lost its feed from {src} at byte "
                                              f"{self.committed} ({exc})")
                self.upstream = None
                sock.close()
                idx += 1  # the next ancestor
                if self.left() <= 0:
                    self._fail_copy(f"{self.me}: ran past the step's timeout at byte {self.committed}")
                    return

    def _connect_waiting(self, rank: "int", first: "bool") -> "socket.socket":
        # the parent's task may start a little after ours: wait for it to listen, but only for
        # the first connection; an ancestor asked for a re-feed has been listening all along
        until = time.monotonic() + (START_WAIT if first else 0.0)
        while True:
            try:
                return self._connect(rank, self.committed)
            except ConnectionRefusedError:
                if time.monotonic() >= min(until, self.deadline):
                    raise
                time.sleep(0.05)

    # ---- a server: feed the children (and any orphan of a lost child) ------------------------

    def _listen(self) -> "None":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", self.peers[self.rank][1]))
        except OSError as exc:
            s.close()
            raise BcastError(f"{self.me}: cannot listen on port {self.peers[self.rank][1]}: "
                             f"{exc.strerror or exc}") from None
        s.listen(64)
        s.settimeout(0.2)
        self.listener = s

    def _accept_loop(self) -> "None":
        assert self.listener is not None
        while not self.closing:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:  # noqa: UP041 - not TimeoutError before Python 3.10
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _serve(self, conn: "socket.socket") -> "None":
        child = -1
        sent = 0
        try:
            conn.settimeout(min(self.stall, max(1.0, self.left())))
            ns = os.urandom(NONCE)
            conn.sendall(MAGIC + ns)
            msg = _recv_exact(conn, len(MAGIC) + NONCE + REQ.size + 32)
            if msg[:len(MAGIC)] != MAGIC:
                return
            nc = msg[len(MAGIC):len(MAGIC) + NONCE]
            req = msg[len(MAGIC) + NONCE:len(MAGIC) + NONCE + REQ.size]
            if not hmac.compare_digest(msg[-32:], _mac(self.token, b"c", ns, nc, req)):
                return  # not this step's broadcast: say nothing more
            rank, offset = REQ.unpack(req)
            if rank not in subtree(self.rank, self.n, self.fanout):
                return
            conn.sendall(_mac(self.token, b"s", nc, ns))
            child = rank
            with self.cond:
                self.active.add(child)
            pos = self.size if offset >= self.size else offset - offset % self.chunk
            with open(self.dest, "rb") as f:
                while pos < self.size:
                    length = min(self.chunk, self.size - pos)
                    with self.cond:
                        while self.committed < pos + length and self.copy_error is None \
                                and not self.closing:
                            self.cond.wait(0.5)
                        if self.committed < pos + length or self.copy_error is not None:
                            self._tell_failure(conn, child)
                            return
                        digest = self.digests[pos // self.chunk]
                    conn.sendall(HDR.pack(pos, length, digest))
                    done = 0
                    while done < length:
                        k = conn.sendfile(f, pos + done, length - done)
                        if not k:
                            raise EOFError("sendfile sent nothing")
                        done += k
                    pos += length
                    sent += length
                    with self.cond:
                        self.sent += length
            # the child reports once its own subtree is done: wait for it as long as the step
            conn.settimeout(max(1.0, self.left()))
            n = LEN.unpack(_recv_exact(conn, LEN.size))[0]
            if n > MAX_REPORT:
                raise BcastError(f"report of {n} bytes")
            report = json.loads(_recv_exact(conn, n).decode())
            self._merge(child, report)
        except (OSError, EOFError, ValueError, BcastError) as exc:
            if child >= 0:
                self._lose(child, f"{self.me} lost {self.nodes[child]} after sending it {sent} bytes: {exc}")
        finally:
            with self.cond:
                self.active.discard(child)
                self.cond.notify_all()
            conn.close()

    def _tell_failure(self, conn: "socket.socket", child: "int") -> "None":
        """This node cannot feed CHILD: say why, so it goes to an earlier node at once."""
        msg = (self.copy_error or f"{self.me} is shutting down").encode()
        conn.sendall(HDR.pack(ERR_OFFSET, len(msg), bytes(32)) + msg)
        with self.cond:
            self.pending.discard(child)
            self.cond.notify_all()

    def _merge(self, child: "int", report: "dict[str, object]") -> "None":
        """A child's report covers its whole nominal subtree (ok, or lost with a reason)."""
        ok = report.get("ok")
        failed = report.get("failed")
        names = {str(x) for x in ok} if isinstance(ok, list) else set()
        with self.cond:
            self.reported_ok |= names
            if isinstance(failed, dict):
                for k, v in failed.items():
                    self.lost.setdefault(str(k), str(v))
            for r in [child, *subtree(child, self.n, self.fanout)]:
                self.pending.discard(r)
            for r in list(self.pending):  # orphans it adopted from elsewhere
                if self.nodes[r] in names:
                    self.pending.discard(r)
            self.cond.notify_all()

    def _lose(self, child: "int", why: "str") -> "None":
        with self.cond:
            self.lost.setdefault(self.nodes[child], why)
            self.pending.discard(child)
            # its subtree will come back to us (or to an earlier node): give it time to
            self.claim_by = max(self.claim_by, time.monotonic() + REFEED_WAIT)
            self.cond.notify_all()

    def _wait_subtree(self) -> "None":
        """Until every node below this one reported, was lost, or never came."""
        with self.cond:
            while self.pending:
                now = time.monotonic()
                if now >= self.deadline:
                    for r in self.pending:
                        self.lost.setdefault(self.nodes[r], f"{self.me}: no report from "
                                             f"{self.nodes[r]} within the step's timeout")
                    self.pending.clear()
                    break
                if now >= self.claim_by:
                    served = set(self.active)
                    for a in list(served):
                        served |= set(subtree(a, self.n, self.fanout))
                    for r in list(self.pending):
                        if r not in served:
                            self.lost.setdefault(self.nodes[r], f"{self.me}: {self.nodes[r]} "
                                                 "never connected (its agent did not start, "
                                                 "or died before)")
                            self.pending.discard(r)
                    if not self.pending:
                        break
                self.cond.wait(0.2)

    # ---- unpacking as the bytes arrive (tarball variant) --------------------------------------

    def _unpack(self) -> "None":
        assert self.unpack_dir is not None
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally, shared with tar
        try:
            os.makedirs(self.unpack_dir, exist_ok=True)
            # as root, tar keeps the image's owners and modes; the store's tarballs hold ./paths
            self.tar = subprocess.Popen(
                ["tar", "--numeric-owner", "-x", "-z", "-f", "-", "-C", self.unpack_dir],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
            assert self.tar.stdin is not None
            pos = 0
            with open(self.dest, "rb") as f:
                while pos < self.size:
                    with self.cond:
                        while self.committed <= pos and self.copy_error is None \
                                and not self.closing:
                            self.cond.wait(0.5)
                        upto = self.committed
                        if upto <= pos:
                            raise BcastError(self.copy_error or "shutting down")
                    while pos < upto:
                        data = os.pread(f.fileno(), min(1 << 20, upto - pos), pos)
                        self.tar.stdin.write(data)
                        pos += len(data)
            self.tar.stdin.close()
            rc = self.tar.wait(timeout=max(1.0, self.left()))
            if rc != 0:
                err.seek(0)
                msg = err.read().decode(errors="replace").strip().splitlines()[-2:]
                raise BcastError("tar exited {}: {}".format(rc, " | ".join(msg)))
            self.unpack_end = time.time()
        except (OSError, ValueError, subprocess.TimeoutExpired, BcastError) as exc:
            self.unpack_error = f"{self.me}: unpacking failed: {exc}"
            self._kill_tar()
        finally:
            err.close()

    def _kill_tar(self) -> "None":
        tar = self.tar
        if tar is not None and tar.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(tar.pid, 9)
            tar.wait()

    # ---- reporting up the tree ----------------------------------------------------------------

    def _report(self, ok: "bool") -> "None":
        names = sorted(self.reported_ok | ({self.me} if ok else set()))
        failed = {k: v for k, v in self.lost.items() if k not in self.reported_ok}
        data = json.dumps({"ok": names, "failed": failed}).encode()
        sock = self.upstream
        self.upstream = None
        for r in [-1, *ancestors(self.rank, self.fanout)]:
            if r < 0 and sock is None:
                continue
            try:
                if sock is None:
                    # our feeder is gone: deliver the report to an earlier node (all bytes held)
                    sock = self._connect(r, self.size)
                sock.sendall(LEN.pack(len(data)) + data)
                return
            except (OSError, EOFError, BcastError):
                pass
            finally:
                if sock is not None:
                    sock.close()
                    sock = None

    # ---- the whole node ----------------------------------------------------------------------

    def run(self) -> "dict[str, object]":
        w0 = time.time()
        rx0, tx0 = net_counters()
        cpu0 = cpu_seconds()
        rec = {"node": self.me, "rank": self.rank, "nodes": self.n, "fanout": self.fanout,
               "chunk": self.chunk, "bytes": self.size, "hops": hops(self.n, self.fanout),
               "parent": None if self.rank == 0 else self.nodes[parent_of(self.rank, self.fanout)],
               "wall_start": w0}  # type: dict[str, object]
        error = None  # type: str | None
        try:
            dirname = os.path.dirname(self.dest)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)  # novermin: int flags
            try:
                self.fd = os.open(self.dest, flags, 0o600)
            except FileExistsError:
                raise BcastError(f"{self.dest} exists already (an earlier broadcast of this job?)") from None
            except OSError as exc:
                raise BcastError(f"cannot create {self.dest} in {dirname}: {exc.strerror}") from None
            if self.pending:
                self._listen()
                threading.Thread(target=self._accept_loop, daemon=True).start()
            if self.unpack_dir is not None:
                self.unpack_thread = threading.Thread(target=self._unpack, daemon=True)
                self.unpack_thread.start()
            feeder = threading.Thread(
                target=self._read_source if self.rank == 0 else self._feed, daemon=True)
            feeder.start()
            feeder.join(max(0.0, self.left()))
            if feeder.is_alive():
                self._fail_copy(f"{self.me}: copy ran past the step's timeout at byte "
                                f"{self.committed} of {self.size}")
            copy_ok = self.copy_error is None and self.committed == self.size
            if copy_ok:
                got = self.digests[-1].hex() if self.digests else hashlib.sha256().hexdigest()
                if got != self.want:
                    self._fail_copy(f"{self.me}: the received file's sha256 {got} is not the store "
                                    f"manifest's {self.want}")
                    copy_ok = False
            rec["copy_end"] = self.copy_end
            with self.cond:
                self.cond.notify_all()  # servers waiting for bytes see the failure and say so
            # failed or not, stay until the subtree has come by: a failed node tells each child
            # why, so it goes to an earlier node at once instead of waiting out a timeout
            self._wait_subtree()
            if self.unpack_thread is not None:
                self.unpack_thread.join(max(0.0, self.left()))
                if self.unpack_thread.is_alive():
                    self.unpack_error = self.unpack_error or f"{self.me}: unpacking ran past the step's " \
                                                             "timeout"
                    self._kill_tar()
            error = self.copy_error or self.unpack_error
            if self.rank != 0:
                self._report(error is None)
        except BcastError as exc:
            error = str(exc)
        finally:
            self.closing = True
            self._close_listener()
            self._kill_tar()
            if self.fd >= 0:
                os.close(self.fd)
        rx1, tx1 = net_counters()
        rec.update({
            "ok": error is None, "error": error, "fed_by": self.fed_by,
            "refed": len(self.fed_by) > 1, "lost": dict(self.lost),
            "received_bytes": self.received if self.rank else 0, "sent_bytes": self.sent,
            "storage_bytes_read": self.size if self.rank == 0 and error is None else 0,
            "unpack_end": self.unpack_end, "wall_end": time.time(),
            "sha256": self.digests[-1].hex() if self.digests and error is None else None,
            "net_rx_bytes": rx1 - rx0, "net_tx_bytes": tx1 - tx0,
            "cpu_seconds": round(cpu_seconds() - cpu0, 4),
            "cpu_children_seconds": round(cpu_seconds(resource.RUSAGE_CHILDREN), 4),
        })
        rec["bcast_seconds"] = round(float(rec["wall_end"]) - w0, 6)  # type: ignore[arg-type]
        if self.copy_end is not None:
            rec["copy_seconds"] = round(self.copy_end - w0, 6)
        if self.unpack_end is not None and self.copy_end is not None:
            rec["unpack_tail_seconds"] = round(max(0.0, self.unpack_end - self.copy_end), 6)
        if error is not None or not self.keep_dest:
            _remove(self.dest)
        return rec

    def _close_listener(self) -> "None":
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()


def _remove(path: "str") -> "None":
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
