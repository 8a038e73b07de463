"""Host-side network plumbing and process discovery for virtual clusters.

A cluster is one Linux bridge with no address on the host (so nothing routes out of the machine),
one network namespace per host (controller, nodes) joined to it by a veth pair, and per-link tbf
shaping on the host end (the namespace end is shaped from inside, by the node's init).
Everything is created with one `ip -batch` / `tc -batch` call, because 64 nodes would otherwise
cost hundreds of process starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from shoal.cluster.config import NetworkProfile
from shoal.cluster.topology import BridgePlan
from shoal.runner import run

NETNS_DIR = Path("/run/netns")


def tbf_args(profile: NetworkProfile) -> list[str]:
    """tbf parameters for one direction of one link ([] when unshaped)."""
    if profile.rate_mbit is None:
        return []
    return [
        "rate", f"{profile.rate_mbit:g}mbit",
        "burst", f"{profile.burst_kbyte}kb",
        "latency", f"{profile.latency_ms}ms",
    ]


def htb_args(rate_mbit: float, burst_kbyte: int) -> list[str]:
    """HTB class parameters of the storage host's link (its own bandwidth, both directions).

    HTB rather than tbf: it is the qdisc a site would use to share one server link between
    classes, and its burst must cover at least one timer tick at the rate (rate/HZ) or the
    configured rate is not reached.
    """
    burst = max(burst_kbyte, int(rate_mbit * 1e6 / 8 / 250 / 1024) + 1)
    return ["rate", f"{rate_mbit:g}mbit", "ceil", f"{rate_mbit:g}mbit", "burst", f"{burst}kb",
            "cburst", f"{burst}kb"]


def create_network(plan: BridgePlan, links: list[tuple[str, str, str]], profile: NetworkProfile,
                   htb: dict[str, list[str]] | None = None) -> None:
    """Create the bridges, the trunks between them and one (netns, host veth, bridge) link per
    host; the namespace end of each veth is named eth0 (shoal/cluster/topology.py: the layout).

    Host veths named in HTB get an HTB class with those parameters instead of the profile's tbf
    (the storage host's link)."""
    htb = htb or {}
    ip_lines: list[str] = []
    for br in plan.bridges:
        ip_lines += [f"link add {br} type bridge", f"link set {br} up"]
    for a, b, br in plan.trunks:
        ip_lines += [
            f"link add {a} type veth peer name {b}",
            f"link set {a} master {plan.bridges[0]} up",
            f"link set {b} master {br} up",
        ]
    for ns, veth, br in links:
        ip_lines += [
            f"netns add {ns}",
            f"link add {veth} type veth peer name eth0 netns {ns}",
            f"link set {veth} master {br} up",
        ]
    run(["ip", "-batch", "-"], input="\n".join(ip_lines) + "\n", what="creating the cluster network")
    tbf = tbf_args(profile)
    tc_lines: list[str] = []
    for _, veth, _ in links:
        if veth in htb:
            tc_lines += [f"qdisc add dev {veth} root handle 1: htb default 10",
                         " ".join(["class", "add", "dev", veth, "parent", "1:", "classid", "1:10",
                                   "htb", *htb[veth]])]
        elif tbf:
            tc_lines.append(" ".join(["qdisc", "add", "dev", veth, "root", "tbf", *tbf]))
    if tc_lines:
        run(["tc", "-batch", "-"], input="\n".join(tc_lines) + "\n", what="shaping the cluster links")


NEIGH_SYSCTL = Path("/proc/sys/net/ipv4/neigh/default")
# ARP entries per host of all clusters, with room: the controller knows every node; a node knows the
# controller, its parent and children in Slurm's fan-out tree, and the peers it ssh'es to.
NEIGH_PER_HOST = 16


def ensure_neighbour_table(hosts: int) -> None:
    """Raise the kernel's ARP table limits for `hosts` hosts in all clusters (never lower them).

    The table and its gc_thresh limits are one for ALL network namespaces (only the host's netns
    has the sysctls): past gc_thresh3 (1024 by default) the kernel drops new entries ("neighbour
    table overflow") and traffic stalls; past gc_thresh2 it collects entries after 5 s. One
    cluster of 256 nodes overflowed 1224 entries during its first `srun -N256` (hung 300 s).
    """
    want3 = NEIGH_PER_HOST * hosts
    for name, want in (("gc_thresh2", want3 // 2), ("gc_thresh3", want3)):
        f = NEIGH_SYSCTL / name
        try:
            if int(f.read_text()) < want:
                f.write_text(str(want))
        except (OSError, ValueError):
            continue  # not allowed here: the cluster still works, with ARP churn at scale


def netns_inode(ns: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / ns).st_ino
    except OSError:
        return None


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Every process on the host whose network namespace is one of `inodes`."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes:
            found.append(int(entry))
    return found


def kill_all(pids: list[int], grace: float = 5.0) -> None:
    """TERM, wait up to `grace` seconds, then KILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if is_alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def is_alive(pid: int) -> bool:
    """Is pid a live process (a zombie is reaped, if it is ours, and counts as dead)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def delete_network(plan: BridgePlan, namespaces: list[str]) -> None:
    """Remove namespaces (their veth pairs go with them), trunks, then the bridges. Idempotent."""
    present = [ns for ns in namespaces if (NETNS_DIR / ns).exists()]
    lines = [f"netns del {ns}" for ns in present]
    lines += [f"link del {a}" for a, _, _ in plan.trunks if _link_exists(a)]
    lines += [f"link del {br}" for br in plan.bridges if _link_exists(br)]
    if lines:
        # -force: one missing object must not stop the removal of the others
        run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def link_exists(name: str) -> bool:
    """Is there a network interface NAME on the host?"""
    return _link_exists(name)


def delete_links(names: list[str]) -> None:
    """Delete host interfaces (a veth takes its peer with it, at once). Idempotent."""
    lines = [f"link del {n}" for n in names if _link_exists(n)]
    if lines:
        run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def leftovers(plan: BridgePlan, namespaces: list[str]) -> list[str]:
    out = [f"netns {ns}" for ns in namespaces if (NETNS_DIR / ns).exists()]
    out += [f"veth {a}" for a, _, _ in plan.trunks if _link_exists(a)]
    out += [f"bridge {br}" for br in plan.bridges if _link_exists(br)]
    return out
