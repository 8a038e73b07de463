"""The mount broker of a virtual cluster: mounts for nodes whose root may not mount.

Node root is confined (docs/SECURITY.md): no CAP_SYS_ADMIN in its bounding set, so neither the
Prolog nor anything else in a node can mount, and so cannot undo the read-only /proc/sys, /sys and
cgroup mounts either. Loop and FUSE mounts of images are still what the study measures, so one
host process per cluster makes them, and only these:

- a request arrives on the node's own socket (host ``STATE/broker/<node>.sock``, bound into that
  node alone at /run/shoal/broker.sock, root-only): the socket names the node, the node cannot
  claim to be another;
- the request carries nothing but a job id; WHAT to mount is read back from slurmctld
  (``squeue --json --jobs=J`` on the controller): the job must be running on that node and its
  comment (which only the job's owner or an admin can set) names a Prolog method and an image;
- the image file must be in the admin's store (root-owned, not writable by others, no symlink:
  shoal.staging.privileged.store_artifact), and the mount point is the root-made
  /run/shoal/jobs/<job>/<image> in that node's mount namespace;
- the mount is read-only, nosuid, nodev; the broker detaches only loop devices it attached and
  unmounts only below /run/shoal/jobs/<job>.

The mount is made in the node's mount namespace (``nsenter --mount`` into its PID 1) with the
node's own losetup/mount/squashfuse, so a SquashFS on sshfs storage is read through the node's
sshfs mount and its network link, as a node-local mount would be. The broker runs as root on the
host; it does not enter the node's pid, network or user namespaces.

Run as ``python -m shoal.cluster.broker NAME`` (the manager spawns it at `up`, `down` stops it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ShoalError
from shoal.paths import store_root
from shoal.runner import run
from shoal.slurm.hostlist import expand
from shoal.staging import privileged as priv
from shoal.staging.base import DEFAULT_NAMES, EXPORTS, get_method

NODE_SOCKET = priv.BROKER_SOCKET  # where a node sees its socket
NODE_STORE = "/pfs/store"
LIVE_STATES = ("RUNNING", "CONFIGURING", "COMPLETING")


def socket_dir(cd: ClusterDir) -> Path:
    return cd.root / "broker"


def socket_path(cd: ClusterDir, node: str) -> Path:
    return socket_dir(cd) / f"{node}.sock"


class Broker:
    """Acts for one cluster; one instance serves every node's socket."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.cd = ClusterDir(cluster)
        self.lock = threading.Lock()
        # (node, job) -> loop devices this broker attached for it
        self.loops: dict[tuple[str, str], list[str]] = {}
        self.log_lock = threading.Lock()

    def log(self, msg: str) -> None:
        with self.log_lock:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} broker {self.cluster}: {msg}\n")
            sys.stderr.flush()

    # -- what the node and slurmctld say ------------------------------------------------------
    def state(self) -> ClusterState:
        return self.cd.load()

    def node_prefix(self, state: ClusterState, node: str) -> list[str]:
        from shoal.cluster.enter import pid1

        return ["nsenter", f"--target={pid1(state, node)}", "--mount", "--"]

    def job_record(self, state: ClusterState, job: str) -> dict[str, Any]:
        from shoal.cluster.enter import enter_prefix

        out = run([*enter_prefix(state, "ctl"), "squeue", "--json", f"--jobs={job}"],
                  timeout=30, check=False)
        try:
            jobs = json.loads(out.stdout).get("jobs") or []
        except ValueError:
            jobs = []
        for j in jobs:
            if str(j.get("job_id")) == job:
                return dict(j)
        raise priv.Refused(f"slurmctld knows no job {job}")

    # -- operations -----------------------------------------------------------------------------
    def mount(self, node: str, job: str) -> dict[str, Any]:
        state = self.state()
        rec = self.job_record(state, job)
        if node not in expand(str(rec.get("nodes") or "")):
            raise priv.Refused(f"job {job} does not run on {node}")
        if str(rec.get("job_state")) not in LIVE_STATES:
            raise priv.Refused(f"job {job} is {rec.get('job_state')}")
        req = priv.parse_comment(str(rec.get("comment") or ""))
        if req is None:
            raise priv.Refused(f"job {job} asks for no staging in its comment")
        method = get_method(req[0])
        if not method.prolog:
            raise priv.Refused(f"method {method.name} is not mounted for jobs")
        image = req[1]
        # checked on the host's view of the store, which every node mounts at /pfs/store
        host_src = priv.store_artifact(str(store_root()), image, EXPORTS[method.artifact],
                                       DEFAULT_NAMES[method.artifact].format(image=image))
        src = f"{NODE_STORE}/{image}/{os.path.basename(host_src)}"
        dest = f"{priv.MOUNT_ROOT}/{job}/{image}"
        pre = self.node_prefix(state, node)
        # the Prolog made dest; it must be a directory root owns, in this node's view
        chk = run([*pre, "stat", "-c", "%u %F", dest], timeout=30, check=False)
        if chk.returncode != 0 or chk.stdout.strip() != "0 directory":
            raise priv.Refused(f"{dest} on {node} is not a root-owned directory")
        t0 = time.monotonic()
        answer: dict[str, Any] = {"ok": True, "method": method.name, "image": image}
        if method.artifact != "sqfs":
            raise priv.Refused(f"method {method.name}: only SquashFS files are mounted")
        if method.name == "squashfuse":
            # the FUSE daemon is the node's squashfuse, run by the broker: root-owned mount that
            # the job's user reads through allow_other; no setuid, no devices
            run([*pre, "squashfuse", "-o", "ro,allow_other,nosuid,nodev", src, dest],
                timeout=120, what=f"squashfuse {src} on {node}")
        else:
            dev = run([*pre, "losetup", "--find", "--show", "--read-only", src], timeout=60,
                      what=f"losetup {src} on {node}").stdout.strip()
            with self.lock:
                self.loops.setdefault((node, job), []).append(dev)
            base = _loop_read_bytes(dev)
            try:
                run([*pre, "mount", "-t", "squashfs", "-o", "ro,nosuid,nodev", dev, dest],
                    timeout=120, what=f"mounting {src} on {node}")
            except BaseException:
                run(["losetup", "-d", dev], check=False, timeout=30)
                raise
            answer.update({"loop_device": dev, "loop_backing": _loop_backing(dev),
                           "loop_read_base": base})
        answer["seconds"] = round(time.monotonic() - t0, 6)
        self.log(f"{node} job {job} (uid {rec.get('user_id')}): {method.name} {image} on {dest}")
        return answer

    def umount(self, node: str, job: str) -> dict[str, Any]:
        state = self.state()
        pre = self.node_prefix(state, node)
        from shoal.cluster.enter import pid1

        prefix = f"{priv.MOUNT_ROOT}/{job}/"
        targets = []
        for line in Path(f"/proc/{pid1(state, node)}/mountinfo").read_text().splitlines():
            t = line.split()[4].replace("\\040", " ")
            if t.startswith(prefix):
                targets.append(t)
        left = []
        for t in sorted(targets, key=lambda t: t.count("/"), reverse=True):
            done = run([*pre, "umount", t], timeout=60, check=False)
            if done.returncode != 0:
                done = run([*pre, "umount", "-l", t], timeout=60, check=False)
            if done.returncode != 0:
                left.append(t)
        with self.lock:
            devs = self.loops.pop((node, job), [])
        for dev in devs:
            if _loop_backing(dev):
                run(["losetup", "-d", dev], timeout=30, check=False)
        self.log(f"{node} job {job}: unmounted {len(targets) - len(left)}, detached {len(devs)}")
        if left:
            raise priv.Refused(f"could not unmount {', '.join(left)}")
        return {"ok": True, "unmounted": targets}

    def handle(self, node: str, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line.decode())
            if not isinstance(req, dict):
                raise priv.Refused("request is not an object")
            job = priv.job_id(str(req.get("job")))
            op = req.get("op")
            if op == "mount":
                return self.mount(node, job)
            if op == "umount":
                return self.umount(node, job)
            raise priv.Refused(f"unknown operation {op!r}")
        except (priv.Refused, ShoalError, ValueError, OSError) as exc:
            self.log(f"{node}: refused {line[:200]!r}: {exc}")
            return {"ok": False, "error": str(exc)}

    # -- serving --------------------------------------------------------------------------------
    def serve(self, nodes: list[str]) -> None:
        d = socket_dir(self.cd)
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        servers = []
        broker = self
        for node in nodes:
            path = socket_path(self.cd, node)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

            class Handler(socketserver.StreamRequestHandler):
                node_name = node

                def handle(self) -> None:
                    line = self.rfile.readline(65536)
                    answer = broker.handle(self.node_name, line)
                    self.wfile.write(json.dumps(answer).encode() + b"\n")

            srv = socketserver.ThreadingUnixStreamServer(str(path), Handler)
            srv.daemon_threads = True
            os.chmod(path, 0o600)
            servers.append(srv)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        (d / "ready").write_text(str(os.getpid()))
        self.log(f"serving {', '.join(nodes)}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        self.log("stopped")


def _loop_read_bytes(dev: str) -> int:
    try:
        return int(Path(f"/sys/block/{os.path.basename(dev)}/stat").read_text().split()[2]) * 512
    except (OSError, ValueError, IndexError):
        return 0


def _loop_backing(dev: str) -> str | None:
    try:
        return Path(f"/sys/block/{os.path.basename(dev)}/loop/backing_file").read_text().strip()
    except OSError:
        return None


def wait_ready(cd: ClusterDir, pid: int, timeout: float = 15.0) -> None:
    """Block until the broker's sockets exist (the nodes bind them at start)."""
    from shoal.cluster.netns import is_alive
    from shoal.errors import ClusterError

    ready = socket_dir(cd) / "ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text() == str(pid):
            return
        if not is_alive(pid):
            break
        time.sleep(0.02)
    raise ClusterError("the mount broker did not start", f"see {cd.logs / 'broker.log'}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m shoal.cluster.broker CLUSTER\n")
        return 2
    broker = Broker(args[0])
    broker.serve(broker.state().nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
