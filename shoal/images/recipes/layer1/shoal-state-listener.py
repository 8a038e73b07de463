#!/usr/bin/python3
# shoal node state listener: a supervisord event listener (supervisord's eventlistener protocol)
# that pushes every PROCESS_STATE change of this node's programs, and a heartbeat with all program
# states on every TICK_5, to the shoal state service (POST /dsc/events). Each request carries a
# munge credential made by root on this node and bound to the request body, so a job user on the
# node cannot forge node events.
#
# Runs on the node (layer1 image, or a real site's compute node): Python 3.6+, standard library
# only. Configuration, first found wins: environment SHOAL_STATE_URL / SHOAL_STATE_NODE, then the
# file given by --config (default /etc/slurm/shoal-state.conf) with lines `url = http://HOST:PORT`
# and optionally `node = NAME` (default: the hostname) and `munge_socket = PATH` (default: munged's
# own, /run/munge/munge.socket.2; environment SHOAL_STATE_MUNGE_SOCKET). Without a URL it only
# acknowledges events.
#
# Credentials come from libmunge through ctypes, not from running munge(1): a fork+exec per request
# cost 3.3 ms of CPU per request (encode + decode), the library 0.19 ms, and at 256 nodes the
# heartbeats alone are 51 requests a second on the 2 cores that also run every node
# (bench/bench_munge.py, docs/PERFORMANCE.md). The binding mirrors shoal/state/auth.py's LibMunge:
# this file must stand alone on a node, so it cannot import it.
#
# The protocol: write READY, read one header line and LEN bytes of payload, answer RESULT 2 OK.
# Sending happens in a thread so supervisord never waits on the network.
#
# Memory: one listener runs on every node (256 on one machine), so it imports little. hashlib loads
# OpenSSL and http.client the email package: together ~8 MiB of private memory per node, half the
# rest of a node. SHA-256 comes from the interpreter's own module and HTTP is the one request it
# needs; supervisord's XML-RPC client is used once, at start, in a child process that then exits.
import ctypes
import json
import os
import queue
import socket
import sys
import threading
import time

try:  # the interpreter's built-in SHA-256 (3.6-3.11: _sha256; 3.12+: _sha2), without OpenSSL
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

PAYLOAD_VERSION = "shoal-state-v1"
PATH = "/dsc/events"
DEFAULT_CONFIG = "/etc/slurm/shoal-state.conf"
MAX_QUEUED = 1000
MUNGE_OPT_SOCKET = 8  # munge.h, enum munge_opt (stable since munge 0.5)


def log(msg):
    sys.stderr.write("%s shoal-state-listener: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stderr.flush()


def read_config(path):
    conf = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                key, value = line.split("=", 1)
                conf[key.strip()] = value.strip()
    except (IOError, OSError):
        pass
    if os.environ.get("SHOAL_STATE_URL"):
        conf["url"] = os.environ["SHOAL_STATE_URL"]
    if os.environ.get("SHOAL_STATE_NODE"):
        conf["node"] = os.environ["SHOAL_STATE_NODE"]
    if os.environ.get("SHOAL_STATE_MUNGE_SOCKET"):
        conf["munge_socket"] = os.environ["SHOAL_STATE_MUNGE_SOCKET"]
    conf.setdefault("node", socket.gethostname().split(".")[0])
    return conf


def parse_header(line):
    """'ver:3.0 server:supervisor ... eventname:X len:N' -> dict."""
    out = {}
    for token in line.strip().split():
        if ":" in token:
            k, v = token.split(":", 1)
            out[k] = v
    return out


def parse_payload(data):
    """PROCESS_STATE payload: 'processname:x groupname:x from_state:S ...' (first line only)."""
    first = data.split("\n", 1)[0]
    return parse_header(first)


def split_url(url):
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.partition(":")
    return host, int(port or 80)


def http_post(host, port, path, body, headers, timeout=10.0):
    """POST BODY to http://HOST:PORT/PATH; (status, up to 300 bytes of the answer's body).

    HTTP/1.1 with `Connection: close`; the answer is read up to the end of its headers plus what
    Content-Length announces (at most 300 bytes of it), so a server that keeps the connection
    open anyway cannot make a delivered event look failed (it would be sent twice)."""
    lines = ["POST %s HTTP/1.1" % path, "Host: %s:%d" % (host, port),
             "Content-Length: %d" % len(body), "Connection: close"]
    lines += ["%s: %s" % (k, v) for k, v in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk or len(data) > 65536:
                raise OSError("no complete HTTP answer from %s:%d" % (host, port))
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split(None, 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
            raise OSError("not an HTTP answer from %s:%d: %r" % (host, port, head[:80]))
        want = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length" and value.strip().isdigit():
                want = min(int(value.strip()), 300)
        while len(rest) < want:
            chunk = sock.recv(want - len(rest))
            if not chunk:
                break
            rest += chunk
        return int(status_line[1]), rest[:300]
    finally:
        sock.close()


class Munge(object):
    """munge_encode from libmunge.so.2 (loaded on first use, so a node without it still acknowledges
    supervisord's events and says in its log why it cannot send)."""

    def __init__(self, socket_path=None):
        self.socket_path = socket_path
        self.lib = None

    def _load(self):
        lib = ctypes.CDLL("libmunge.so.2")
        libc = ctypes.CDLL(None)  # free() for the credential libmunge mallocs
        libc.free.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_strerror.restype = ctypes.c_char_p
        lib.munge_encode.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                     ctypes.c_char_p, ctypes.c_int]
        self.libc = libc
        self.lib = lib

    def encode(self, payload):
        """A credential (str) carrying PAYLOAD (bytes); OSError naming munged's answer otherwise."""
        if self.lib is None:
            self._load()
        lib = self.lib
        ctx = lib.munge_ctx_create()
        if not ctx:
            raise OSError("munge: cannot create a context")
        cred = ctypes.c_void_p()
        try:
            if self.socket_path and lib.munge_ctx_set(ctx, MUNGE_OPT_SOCKET,
                                                      self.socket_path.encode()) != 0:
                raise OSError("munge: cannot use socket %s" % self.socket_path)
            err = lib.munge_encode(ctypes.byref(cred), ctx, payload, len(payload))
            if err != 0:
                why = lib.munge_ctx_strerror(ctx) or b"error %d" % err
                raise OSError("munge failed: %s" % why.decode("utf-8", "replace"))
            return ctypes.string_at(cred.value).decode("ascii")
        finally:
            if cred.value:
                self.libc.free(cred)
            lib.munge_ctx_destroy(ctx)


class Sender(object):
    def __init__(self, url, node, munge):
        self.url = url
        self.node = node
        self.munge = munge
        self.q = queue.Queue()
        self.sent = 0

    def put(self, event):
        if self.q.qsize() < MAX_QUEUED:
            self.q.put(event)

    def body(self, events):
        return json.dumps({"events": events}, sort_keys=True).encode("utf-8")

    def credential(self, body):
        payload = "%s POST %s %s" % (PAYLOAD_VERSION, PATH, sha256(body).hexdigest())
        return self.munge.encode(payload.encode("ascii"))

    def post(self, events):
        body = self.body(events)
        host, port = split_url(self.url)
        status, text = http_post(host, port, PATH, body, [
            ("Content-Type", "application/json"),
            ("Authorization", "Munge " + self.credential(body))])
        if status >= 400:
            # A refused event is not sent again (it would be refused again).
            log("service refused %d event(s): HTTP %d %s" % (len(events), status, text))

    def run(self):
        # Events go out in the order they happened: a batch that could not be sent is sent
        # again before anything newer (a stale snapshot must never overwrite a newer state).
        pending = []
        delay = 0.2
        while True:
            if not pending:
                pending.append(self.q.get())
            while len(pending) < 100:
                try:
                    pending.append(self.q.get_nowait())
                except queue.Empty:
                    break
            batch = pending[:100]
            try:
                self.post(batch)
                self.sent += len(batch)
                del pending[:len(batch)]
                delay = 0.2
            except Exception as exc:  # network down, service restarting, munged not up yet
                log("cannot reach %s (%s); retrying in %.1f s" % (self.url, exc, delay))
                # Older heartbeats are superseded by the newest one: keep it, in its place.
                beats = [i for i, e in enumerate(pending) if e.get("kind") == "heartbeat"]
                drop = set(beats[:-1])
                pending = [e for i, e in enumerate(pending) if i not in drop][-MAX_QUEUED:]
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def ask_supervisord(path):
    """{program: state} from supervisord's XML-RPC on the unix socket PATH."""
    import http.client
    import xmlrpc.client

    class Conn(http.client.HTTPConnection):
        def connect(self):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(path)
            self.sock = s

    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host):
            return Conn("localhost")

    proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=Transport())
    return dict((i["name"], i["statename"]) for i in proxy.supervisor.getAllProcessInfo())


def initial_programs():
    """Program states from supervisord itself when the listener (re)starts (best effort).

    Asked in a forked child (before any thread exists), so the XML-RPC client's imports never
    take memory in the long-running listener."""
    url = os.environ.get("SUPERVISOR_SERVER_URL", "")
    if not url.startswith("unix://"):
        return {}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: answer on the pipe, exit without running the parent's cleanup
        code = 0
        try:
            os.close(r)
            try:
                out = {"programs": ask_supervisord(url[len("unix://"):])}
            except Exception as exc:
                out = {"error": str(exc)}
            data = json.dumps(out).encode("utf-8")
            while data:
                data = data[os.write(w, data):]
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    chunks = []
    try:
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    try:
        answer = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        answer = {"error": "the child that asked supervisord gave no answer"}
    if "programs" not in answer:
        log("no initial program states from supervisord (%s); they come with the next events"
            % answer.get("error"))
        return {}
    return answer["programs"]


def main(argv):
    config = DEFAULT_CONFIG
    if len(argv) > 2 and argv[1] == "--config":
        config = argv[2]
    conf = read_config(config)
    boot = "%d-%.3f" % (os.getppid(), time.time())
    programs = initial_programs()
    sender = None
    if conf.get("url"):
        sender = Sender(conf["url"], conf["node"], Munge(conf.get("munge_socket")))
        t = threading.Thread(target=sender.run, name="sender")
        t.daemon = True
        t.start()
        sender.put({"node": conf["node"], "kind": "hello", "boot": boot, "programs": dict(programs),
                    "time": time.time()})
        log("reporting %s to %s" % (conf["node"], conf["url"]))
    else:
        log("no url in %s or SHOAL_STATE_URL: acknowledging events only" % config)
    stdin = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    out = sys.stdout
    while True:
        out.write("READY\n")
        out.flush()
        line = stdin.readline()
        if not line:
            return 0  # supervisord went away
        header = parse_header(line.decode("utf-8", "replace"))
        data = stdin.read(int(header.get("len", "0"))).decode("utf-8", "replace")
        name = header.get("eventname", "")
        if sender is not None:
            if name.startswith("PROCESS_STATE_"):
                p = parse_payload(data)
                state = name[len("PROCESS_STATE_"):]
                prog = p.get("processname", "")
                programs[prog] = state
                sender.put({"node": conf["node"], "kind": "process", "program": prog, "state": state,
                            "from": p.get("from_state", ""), "time": time.time(), "boot": boot})
            elif name.startswith("TICK_"):
                sender.put({"node": conf["node"], "kind": "heartbeat", "boot": boot,
                            "programs": dict(programs), "time": time.time()})
        out.write("RESULT 2\nOK")
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
