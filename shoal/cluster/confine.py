"""How a node container is confined: what root in a node keeps, and which devices it may open.

Like a careful container runtime's default (docs/SECURITY.md): node root keeps the capabilities
the node's services need (slurmd, munged, sshd, rsyslogd, job steps) and nothing that changes the
host: no CAP_SYS_ADMIN (mount, so it cannot undo the read-only /proc/sys, /sys and cgroup mounts
node-init.sh makes), SYS_MODULE (kernel modules), SYS_RAWIO, MKNOD, SYS_PTRACE, NET_ADMIN (the
node's link shaping), SYS_TIME, SYS_BOOT, SYSLOG, DAC_READ_SEARCH (open_by_handle_at), BPF, PERFMON,
... node-init.sh drops them from the bounding set before it execs supervisord, so no process of
the node, setuid programs included, gets them back. Unprivileged user namespaces (ch-run) still
work: a new user namespace has a full set inside, and none outside.

The devices cgroup (v1) of each node, ``/sys/fs/cgroup/devices/shoal/<cluster>/<node>`` (the
naming of shoal.cluster.cgroups), allows only the character devices a node needs: no block device
(host disks, loop devices), no host terminal. The host's /dev stays bound into the node so the
mount broker's loop devices can be mounted there by the broker, which is not in this cgroup.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from shoal.cluster.state import ClusterDir
from shoal.errors import ClusterError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "shoal"

# Docker's default set, minus MKNOD, plus SYS_RESOURCE (slurmd raises a job's rlimits to what
# the user submitted with: PropagateResourceLimits).
NODE_CAPS = (
    "chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "net_bind_service", "net_raw", "sys_chroot", "audit_write", "setfcap", "sys_resource",
)

# type major:minor access; "*" any minor
NODE_DEVICES = (
    "c 1:3 rwm",    # /dev/null
    "c 1:5 rwm",    # /dev/zero
    "c 1:7 rwm",    # /dev/full
    "c 1:8 rwm",    # /dev/random
    "c 1:9 rwm",    # /dev/urandom
    "c 5:0 rwm",    # /dev/tty
    "c 5:2 rwm",    # /dev/ptmx
    "c 136:* rwm",  # the node's own devpts ptys
    "c 10:229 rwm",  # /dev/fuse (ch-run's SquashFUSE inside a user namespace)
)


def caps_arg() -> str:
    """SHOAL_CAPS for node-init.sh: ``+cap,+cap,...`` after setpriv's ``-all``."""
    return ",".join(f"+{c}" for c in NODE_CAPS)


def devices_path(cluster: str, host: str) -> Path:
    return CGROUP_ROOT / "devices" / PARENT / cluster / host


def available() -> bool:
    return (CGROUP_ROOT / "devices" / "devices.deny").is_file()


def create_devices(cluster: str, host: str) -> Path:
    """The node's devices cgroup, default deny plus NODE_DEVICES."""
    p = devices_path(cluster, host)
    try:
        p.mkdir(parents=True, exist_ok=True)
        (p / "devices.deny").write_text("a")
        for rule in NODE_DEVICES:
            (p / "devices.allow").write_text(rule)
    except OSError as exc:
        raise ClusterError(f"cannot set up the devices cgroup {p}: {exc.strerror}",
                           "node confinement needs the cgroup v1 devices controller at "
                           f"{CGROUP_ROOT}/devices and root") from None
    return p


def remove_devices(cluster: str) -> list[str]:
    """Remove the cluster's devices cgroups (after its processes are gone)."""
    top = CGROUP_ROOT / "devices" / PARENT / cluster
    if not top.is_dir():
        return []
    for child in sorted(p for p in top.iterdir() if p.is_dir()):
        with contextlib.suppress(OSError):
            os.rmdir(child)
    with contextlib.suppress(OSError):
        os.rmdir(top)
    return [f"cgroup {top}"] if top.exists() else []


# ---- the mount broker's sockets (the daemon is shoal.staging.broker) ---------------------------

BROKER_MODULE = "shoal.staging.broker"


def socket_dir(cd: ClusterDir) -> Path:
    return cd.root / "broker"


def socket_path(cd: ClusterDir, node: str, user: bool = False) -> Path:
    """Host path of NODE's broker socket: root's (Prolog, Epilog) or job steps' (user=True)."""
    return socket_dir(cd) / (f"{node}.user.sock" if user else f"{node}.sock")


def wait_broker(cd: ClusterDir, pid: int, timeout: float = 15.0) -> None:
    """Block until the broker's sockets exist (the nodes bind them at start)."""
    from shoal.cluster.netns import is_alive

    ready = socket_dir(cd) / "ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text() == str(pid):
            return
        if not is_alive(pid):
            break
        time.sleep(0.02)
    raise ClusterError("the mount broker did not start", f"see {cd.logs / 'broker.log'}")


def is_broker(pid: int, name: str) -> bool:
    """Whether PID is still cluster NAME's broker (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return BROKER_MODULE.encode() in argv and name.encode() in argv
