"""What a cluster left on the host after `down`: the check behind the leftover test and the
up/down cycle benchmark (bench/bench_updown.py). Everything a cluster creates is named from its
name, subnet index and state directory, so a snapshot taken while it runs (`Footprint`) is enough
to find every trace afterwards."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.cluster import netns
from shoal.cluster.state import ClusterDir, ClusterState


@dataclass(frozen=True)
class Footprint:
    """The kernel object names and ids of one running cluster."""

    name: str
    root: str  # its state directory
    bridges: tuple[str, ...]
    veths: tuple[str, ...]  # host ends of the hosts' links and of the trunks between bridges
    namespaces: tuple[str, ...]
    netns_inodes: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of(cls, state: ClusterState) -> Footprint:
        hosts = list(dict.fromkeys([*state.netns_hosts(), "storage"]))
        spaces = tuple(state.netns(h) for h in hosts)
        inodes = frozenset(i for i in (netns.netns_inode(n) for n in spaces) if i is not None)
        plan = state.bridge_plan
        veths = (*(state.host_veth(h) for h in hosts), *(v for tr in plan.trunks for v in tr[:2]))
        return cls(state.name, str(ClusterDir(state.name).root), plan.bridges, tuple(veths),
                   spaces, inodes)


    @classmethod
    def named(cls, name: str, nodes: int) -> Footprint:
        """What can be known of cluster NAME without its state (after a failed `up` removed
        it): everything but the subnet index, so no veth names."""
        hosts = ["ctl", *(f"node{i}" for i in range(1, nodes + 1)), "storage"]
        return cls(name, str(ClusterDir(name).root), (f"shb-{name}",), (),
                   tuple(f"shoal-{name}-{h}" for h in hosts))


def leftovers(fp: Footprint, settle: float = 10.0) -> list[str]:
    """Every namespace, interface, mount, loop device, process and state file of the cluster
    still present (empty: nothing left).

    The kernel frees a deleted namespace's veth pairs asynchronously (seconds on a loaded
    machine), so interfaces get up to SETTLE seconds to go. A veth name is derived from the
    subnet index, which the next cluster may take at once: one enslaved to another cluster's
    bridge is that cluster's, not a leftover of this one.
    """
    out = [f"netns {ns}" for ns in fp.namespaces if (netns.NETNS_DIR / ns).exists()]
    deadline = time.monotonic() + settle
    while True:
        ifaces = [i for i in (*fp.bridges, *fp.veths) if _ours(i, fp.bridges)]
        if not ifaces or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if ifaces:
        # a veth outlives its netns only while something still holds the netns: say what
        held = [f"(netns net:[{ino}] mounted in the mount namespace of pid {pid})"
                for ino, pid in netns_mounts(fp.netns_inodes)]
        out += [f"interface {i}" for i in ifaces] + held
    out += [f"mount {m}" for m in _mounts(fp)]
    out += [f"loop device {d}" for d in _loops(fp.root)]
    # killed processes may take a moment to exit and be reaped on a loaded machine
    procs = _processes(fp)
    while procs and time.monotonic() < deadline:
        time.sleep(0.2)
        procs = _processes(fp)
    out += [f"process {p}: {_cmdline(p)}" for p in procs]
    if os.path.lexists(fp.root):
        out.append(f"state directory {fp.root}")
    return out


def _ours(iface: str, bridges: tuple[str, ...]) -> bool:
    p = Path(f"/sys/class/net/{iface}")
    try:
        return os.path.basename(os.readlink(p / "master")) in bridges
    except FileNotFoundError:
        return p.exists()  # no master (its bridge is gone), or gone itself meanwhile
    except OSError:
        return False


def netns_mounts(inodes: frozenset[int]) -> list[tuple[int, int]]:
    """(netns inode, a pid) for every mount namespace that still has one of INODES mounted: a
    namespace copied from the host while the cluster ran keeps its netns alive after `down`."""
    if not inodes:
        return []
    marks = {f"net:[{i}]": i for i in inodes}
    seen: set[int] = set()
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            mnt = os.stat(f"/proc/{entry}/ns/mnt").st_ino
            if mnt in seen:
                continue
            seen.add(mnt)
            text = Path(f"/proc/{entry}/mountinfo").read_text()
        except OSError:
            continue
        for mark, ino in marks.items():
            if mark in text:
                found.append((ino, int(entry)))
    return found


def _mounts(fp: Footprint) -> list[str]:
    marks = (fp.root + "/", *(f"{netns.NETNS_DIR}/{ns}" for ns in fp.namespaces))
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) > 4 and (parts[4] + "/").startswith(marks):
            found.append(parts[4])
    return found


def loop_devices() -> dict[str, str]:
    """Attached loop devices -> backing file (as the attaching mount namespace saw it)."""
    out = {}
    for d in Path("/sys/block").glob("loop*"):
        try:
            out[d.name] = (d / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
    return out


def _loops(root: str) -> list[str]:
    return [f"{dev} ({f})" for dev, f in loop_devices().items() if f.startswith(root + "/")]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "(gone)"


def _processes(fp: Footprint) -> list[int]:
    """Processes in the cluster's network namespaces, or whose command line names its state
    directory (host-side helpers such as mariadb-install-db)."""
    found = set(netns.pids_in_netns(set(fp.netns_inodes))) if fp.netns_inodes else set()
    needle = (fp.root + "/").encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in cmd.replace(b"\0", b" ") + b"/" or needle in env:
            found.add(int(entry))
    return sorted(found)
