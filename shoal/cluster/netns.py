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


def create_network(bridge: str, links: list[tuple[str, str]], profile: NetworkProfile) -> None:
    """Create bridge + (netns, host veth) pairs; the namespace end of each veth is named eth0."""
    ip_lines = [f"link add {bridge} type bridge", f"link set {bridge} up"]
    for ns, veth in links:
        ip_lines += [
            f"netns add {ns}",
            f"link add {veth} type veth peer name eth0 netns {ns}",
            f"link set {veth} master {bridge} up",
        ]
    run(["ip", "-batch", "-"], input="\n".join(ip_lines) + "\n", what="creating the cluster network")
    tbf = tbf_args(profile)
    if tbf:
        tc_lines = [" ".join(["qdisc", "add", "dev", veth, "root", "tbf", *tbf]) for _, veth in links]
        run(["tc", "-batch", "-"], input="\n".join(tc_lines) + "\n", what="shaping the cluster links")


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


def delete_network(bridge: str, namespaces: list[str]) -> None:
    """Remove namespaces (their veth pairs go with them), then the bridge. Idempotent."""
    present = [ns for ns in namespaces if (NETNS_DIR / ns).exists()]
    if present:
        run(
            ["ip", "-batch", "-"],
            input="".join(f"netns del {ns}\n" for ns in present),
            check=False,
        )
    if Path(f"/sys/class/net/{bridge}").exists():
        run(["ip", "link", "del", bridge], check=False)


def leftovers(bridge: str, namespaces: list[str]) -> list[str]:
    out = [f"netns {ns}" for ns in namespaces if (NETNS_DIR / ns).exists()]
    if Path(f"/sys/class/net/{bridge}").exists():
        out.append(f"bridge {bridge}")
    return out
