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


def htb_args(rate_mbit: float, burst_kbyte: int) -> list[str]:
    """HTB class parameters of the storage host's link (its own bandwidth, both directions).

    HTB rather than tbf: it is the qdisc a site would use to share one server link between
    classes, and its burst must cover at least one timer tick at the rate (rate/HZ) or the
    configured rate is not reached.
    """
    burst = max(burst_kbyte, int(rate_mbit * 1e6 / 8 / 250 / 1024) + 1)
    return ["rate", f"{rate_mbit:g}mbit", "ceil", f"{rate_mbit:g}mbit", "burst", f"{burst}kb",
            "cburst", f"{burst}kb"]


def create_network(bridge: str, links: list[tuple[str, str]], profile: NetworkProfile,
                   htb: dict[str, list[str]] | None = None) -> None:
    """Create bridge + (netns, host veth) pairs; the namespace end of each veth is named eth0.

    Host veths named in HTB get an HTB class with those parameters instead of the profile's tbf
    (the storage host's link)."""
    htb = htb or {}
    ip_lines = [f"link add {bridge} type bridge", f"link set {bridge} up"]
    for ns, veth in links:
        ip_lines += [
            f"netns add {ns}",
            f"link add {veth} type veth peer name eth0 netns {ns}",
            f"link set {veth} master {bridge} up",
        ]
    run(["ip", "-batch", "-"], input="\n".join(ip_lines) + "\n", what="creating the cluster network")
    tbf = tbf_args(profile)
    tc_lines: list[str] = []
    for _, veth in links:
        if veth in htb:
            tc_lines += [f"qdisc add dev {veth} root handle 1: htb default 10",
                         " ".join(["class", "add", "dev", veth, "parent", "1:", "classid", "1:10",
                                   "htb", *htb[veth]])]
        elif tbf:
            tc_lines.append(" ".join(["qdisc", "add", "dev", veth, "root", "tbf", *tbf]))
    if tc_lines:
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
