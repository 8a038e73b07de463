"""The Slurm bridge: what the engine discovers reaches slurmctld through scontrol, and Slurm's view
of each node comes back from `scontrol show node -o`.

Updates are batched: every node that should go to the same state with the same reason goes in one
`scontrol update NodeName=<hostlist> State=... Reason=...` call, so 100 nodes failing at once cost
one command, not 100. Nothing here knows where the nodes run: a SlurmClient with an optional
command prefix (on the virtual cluster, nsenter into the controller) is all it needs.

Reasons the bridge writes start with REASON_PREFIX. The bridge only ever RESUMEs nodes whose
reason carries that prefix, and it leaves nodes drained by someone else (an admin, another tool)
alone: their reason is theirs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from shoal.slurm.client import Node, SlurmClient
from shoal.slurm.hostlist import compress

REASON_PREFIX = "shoal:"


class SlurmState:
    DOWN = "DOWN"
    DRAIN = "DRAIN"
    RESUME = "RESUME"


@dataclass(frozen=True)
class Update:
    node: str
    state: str  # SlurmState.*
    reason: str = ""


@dataclass(frozen=True)
class Applied:
    hostlist: str
    state: str
    reason: str
    seconds: float
    ok: bool
    error: str = ""


def ours(reason: str) -> bool:
    return reason.startswith(REASON_PREFIX)


def normalize(node: Node) -> tuple[str, list[str]]:
    """(base state, flags) from a parsed scontrol record; 'down*' and 'idle*' lose the '*'."""
    base = node.state.rstrip("*")
    flags = list(node.flags)
    if node.state.endswith("*") and "NOT_RESPONDING" not in flags:
        flags.append("NOT_RESPONDING")
    return base, flags


class SlurmBridge:
    def __init__(self, client: SlurmClient) -> None:
        self.client = client
        self.calls = 0  # scontrol update invocations (batches), for /metrics

    def show(self) -> dict[str, Node]:
        return {n.name: n for n in self.client.show_nodes()}

    def apply(self, updates: Iterable[Update]) -> list[Applied]:
        """One scontrol update per (state, reason) group, in the order groups first appear."""
        groups: dict[tuple[str, str], list[str]] = {}
        for u in updates:
            names = groups.setdefault((u.state, u.reason), [])
            if u.node not in names:
                names.append(u.node)
        out: list[Applied] = []
        for (state, reason), names in groups.items():
            hl = compress(names)
            why = "" if state == SlurmState.RESUME else (reason or REASON_PREFIX)
            t0 = time.monotonic()
            self.calls += 1
            done = self.client.update_nodes(hl, state, why, check=False)
            err = (done.stderr or done.stdout).strip()
            out.append(Applied(hl, state, reason, time.monotonic() - t0, done.returncode == 0, err))
        return out
