"""Benchmark: the node state service against Slurm's own timeouts, and a rolling upgrade under jobs.

Run as root: `.venv/bin/python bench/bench_state.py [--nodes 16] [--max-unavailable 2] [--repeat 3]`.

1. Detection (cluster with health_source = "state": SlurmdTimeout=0, the service is the only
   health source): time from `kill -9` of a node's PID 1, and from a slurmd FATAL (a start that
   fails fast, startretries=0), to Slurm showing the node DOWN. Two clocks: when the service's
   `scontrol update` returned (its event log) and when a poll of `scontrol show node` first saw
   DOWN (poll resolution ~ one nsenter+scontrol, tens of ms).
2. Baseline (a 2-node cluster without the state service, SlurmdTimeout=60): the same failures
   detected by slurmctld itself.
3. Rolling upgrade: every node of the first cluster moved to a new layer1 tree, K at a time,
   while short jobs (sleep 1, one node) are submitted every 0.5 s throughout; per-node
   unavailability (drain started -> resumed), whole-cluster time, jobs not COMPLETED.
Goal (issue 11): <= 1 s to DOWN against minutes; zero jobs failed or requeued by the upgrade.
The machine is shared: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shoal.cluster import manager, statebackend
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import enter_prefix, pid1, slurm_client
from shoal.cluster.jobstream import JobStream
from shoal.cluster.state import ClusterDir
from shoal.images.layer1 import ensure_layer1
from shoal.runner import run
from shoal.state.client import StateClient

console = Console()

BROKEN_START = (
    "if [ -e /run/slurmd-broken ]; then echo 'slurmd: fatal: bench-injected start failure' >&2; exit 1; fi; "
    "exec /usr/sbin/slurmd -D"
)
BROKEN_SLURMD = f"""[program:slurmd]
command=/bin/sh -c "{BROKEN_START}"
priority=30
autostart=true
autorestart=true
startsecs=2
startretries=0
stdout_logfile=/var/log/supervisor/slurmd.log
redirect_stderr=true
"""


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def api(name: str) -> StateClient:
    return StateClient(socket_path=str(statebackend.socket_path(name)))


def events_after(name: str, after: int) -> list[dict[str, Any]]:
    c = api(name)
    newest = int(c.request("GET", "/")["last_event"])
    out: list[dict[str, Any]] = []
    if newest <= after:
        return out
    for ev in c.events(after=after):
        out.append(ev)
        if ev["id"] >= newest:
            break
    return out


def last_event(name: str) -> int:
    return int(api(name).request("GET", "/")["last_event"])


def slurm_state(name: str, node: str) -> str:
    st = ClusterDir(name).load()
    return next((n.raw.get("State", "") for n in slurm_client(st).show_nodes() if n.name == node), "")


def wait_down(name: str, node: str, timeout: float, step: float = 0.0) -> float:
    """Monotonic time at which scontrol first shows NODE DOWN."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if slurm_state(name, node).startswith("DOWN"):
            return time.monotonic()
        if step:
            time.sleep(step)
    raise RuntimeError(f"{node} not DOWN within {timeout} s")


def wait_ready(name: str, node: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = api(name).request("GET", f"/nodes/{node}")
        d = v["dsc"]
        if (
            v["phase"] == "ready"
            and v["health"] == "ok"
            and not v["transition"]
            and d["slurm_state"] == "idle"
            and not d["slurm_flags"]
        ):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{node} not back in service within {timeout} s")


def update_time(name: str, after: int, node: str) -> float | None:
    """Wall time at which the service's scontrol update (DOWN) for NODE returned."""
    time.sleep(0.5)  # Slurm may show DOWN a moment before the service has logged its update
    for e in events_after(name, after):
        if (
            e["kind"] == "slurm_update"
            and e["data"]["state"] == "DOWN"
            and node in _expand(e["data"]["nodes"])
        ):
            return float(e["time"])
    return None


def _expand(hl: str) -> list[str]:
    from shoal.slurm.hostlist import expand

    return expand(hl)


def detection(name: str, nodes: list[str], repeat: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"kill -9 PID 1": [], "slurmd FATAL": []}
    for i in range(repeat):
        node = nodes[i % len(nodes)]
        wait_ready(name, node)
        after = last_event(name)
        st = ClusterDir(name).load()
        t_wall, t0 = time.time(), time.monotonic()
        os.kill(pid1(st, node), signal.SIGKILL)
        seen = wait_down(name, node, 30) - t0
        upd = update_time(name, after, node)
        out["kill -9 PID 1"].append(((upd - t_wall) if upd else float("nan"), seen))
        console.print(f"  kill -9 {node}: update {out['kill -9 PID 1'][-1][0]:.3f} s, seen {seen:.3f} s")
    for i in range(repeat):
        node = nodes[(i + 1) % len(nodes)]
        wait_ready(name, node)
        st = ClusterDir(name).load()
        on = enter_prefix(st, node)
        conf = "/etc/supervisor/conf.d/30-slurmd.conf"
        original = run([*on, "cat", conf]).stdout
        run([*on, "sh", "-c", f"cat > {conf}"], input=BROKEN_SLURMD)
        run([*on, "supervisorctl", "update", "slurmd"], check=False)
        time.sleep(3)
        wait_ready(name, node)
        after = last_event(name)
        run([*on, "touch", "/run/slurmd-broken"])
        pid = run([*on, "supervisorctl", "pid", "slurmd"]).stdout.strip()
        run([*on, "kill", "-9", pid])
        seen_t = wait_down(name, node, 30)
        seen_wall = time.time() - (time.monotonic() - seen_t)
        evs = events_after(name, after)
        fatal = next(e for e in evs if e["kind"] == "process" and e["data"]["state"] == "FATAL")
        upd = update_time(name, after, node)
        at = float(fatal["data"]["at"])
        out["slurmd FATAL"].append(((upd - at) if upd else float("nan"), seen_wall - at))
        console.print(
            f"  slurmd FATAL {node}: update {out['slurmd FATAL'][-1][0]:.3f} s, "
            f"seen {out['slurmd FATAL'][-1][1]:.3f} s"
        )
        run([*on, "rm", "-f", "/run/slurmd-broken"])
        run([*on, "sh", "-c", f"cat > {conf}"], input=original)
        run([*on, "supervisorctl", "update", "slurmd"], check=False)
        run([*on, "supervisorctl", "start", "slurmd"], check=False)
        time.sleep(3)
        api(name).request("POST", "/thaw", {"nodes": [node]})
    return out


def baseline(name: str) -> dict[str, float]:
    """Slurm's own detection: node1's PID 1 killed, node2's slurmd stopped, at the same moment."""
    st = ClusterDir(name).load()
    on2 = enter_prefix(st, "node2")
    t0 = time.monotonic()
    os.kill(pid1(st, "node1"), signal.SIGKILL)
    run([*on2, "supervisorctl", "stop", "slurmd"])
    got: dict[str, float] = {}
    while len(got) < 2 and time.monotonic() - t0 < 600:
        for node, label in (("node1", "kill -9 PID 1"), ("node2", "slurmd FATAL (stopped)")):
            if label not in got and slurm_state(name, node).startswith("DOWN"):
                got[label] = time.monotonic() - t0
                console.print(f"  baseline {label}: {got[label]:.1f} s")
        time.sleep(1.0)
    return got


def upgrade(name: str, new: Path, k: int) -> dict[str, Any]:
    st = ClusterDir(name).load()
    for n in st.nodes:
        wait_ready(name, n)
    with JobStream(slurm_client(st)) as stream:  # short one-node jobs throughout the upgrade
        time.sleep(3)
        after = last_event(name)
        t0 = time.monotonic()
        api(name).request("PATCH", "/cfg/nodes", {"image": str(new), "max_unavailable": k})
        with console.status("upgrading") as status:
            while True:
                rows = api(name).request("GET", "/nodes")["nodes"]
                done = [
                    r
                    for r in rows
                    if r["dsc"]["image"] == str(new) and r["phase"] == "ready" and not r["transition"]
                ]
                failed = [r["name"] for r in rows if r["phase"] == "failed"]
                status.update(f"{len(done)}/{len(rows)} nodes upgraded, load {load()}")
                if failed:
                    raise RuntimeError(f"upgrade failed on {failed}")
                if len(done) == len(rows):
                    break
                if time.monotonic() - t0 > 1800:
                    raise RuntimeError("upgrade did not finish in 30 min")
                time.sleep(0.5)
        total = time.monotonic() - t0
        time.sleep(2)
    jobs = stream.job_ids
    evs = events_after(name, after)
    out_at: dict[str, float] = {}
    unavail: dict[str, float] = {}
    most, cur = 0, 0
    for e in evs:
        if e["kind"] != "transition":
            continue
        step = (e["data"]["name"], e["data"]["status"])
        if step == ("slurm.drain", "started"):
            out_at[e["node"]] = e["time"]
            cur += 1
        elif step == ("slurm.resume", "done") and e["node"] in out_at:
            unavail[e["node"]] = e["time"] - out_at[e["node"]]
            cur -= 1
        most = max(most, cur)
    requeued = _requeues(name, jobs)  # first: squeue keeps finished jobs only MinJobAge seconds
    final = slurm_client(st).wait(jobs, timeout=300)
    bad = {j: str(f.state) for j, f in final.items() if not f.state.ok}
    return {
        "total": total,
        "unavail": unavail,
        "most_out": most,
        "jobs": len(jobs),
        "bad": bad,
        "requeued": requeued,
    }


def _requeues(name: str, jobs: list[int]) -> str:
    """Jobs requeued (restart_cnt > 0) as squeue --states=all shows them (finished jobs stay there
    for MinJobAge=300 s; 22.05's sacct JSON has no restart count): "requeued/seen"."""
    import json

    st = ClusterDir(name).load()
    out = run([*enter_prefix(st, "ctl"), "squeue", "--json", "--states=all"], check=False)
    try:
        data = json.loads(out.stdout)
    except ValueError:
        return "?"
    wanted = set(jobs)
    seen = [j for j in data.get("jobs", []) if int(j.get("job_id", 0)) in wanted]
    requeued = sum(1 for j in seen if int(j.get("restart_cnt", 0) or 0) > 0)
    return f"{requeued}/{len(seen)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--max-unavailable", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--name", default="benchst")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    image = ensure_layer1()
    new = Path(f"/var/cache/shoal/bench-layer1-state-{os.getpid()}")
    subprocess.run(["cp", "-a", "--reflink=auto", str(image.path), str(new)], check=True)
    (new / "etc" / "shoal-release").write_text("bench release\n")
    console.print(f"load average at start: {load()}")
    try:
        cfg = ClusterConfig(name=args.name, nodes=args.nodes, health_source="state")
        with manager.booted(cfg) as res:
            console.print(
                f"{args.nodes} nodes up in {res.boot_seconds:.1f} s (health_source = state), load {load()}"
            )
            det = detection(args.name, res.state.nodes, args.repeat)
            det_load = load()
            upg = upgrade(args.name, new, args.max_unavailable)
            upg_load = load()
        base: dict[str, float] = {}
        if not args.skip_baseline:
            bname = args.name[:8] + "b"
            with manager.booted(ClusterConfig(name=bname, nodes=2, state_service=False)):
                base = baseline(bname)
    finally:
        shutil.rmtree(new, ignore_errors=True)

    t = Table(title=f"time to DOWN in Slurm (load {det_load})")
    for col in (
        "failure",
        "runs",
        "service: update done s (median, max)",
        "scontrol saw DOWN s (median, max)",
        "Slurm's own timeout s",
    ):
        t.add_column(col, justify="right")
    for label, xs in det.items():
        upd = [a for a, _ in xs]
        seen = [b for _, b in xs]
        b = next((v for k, v in base.items() if k.startswith(label.split(" ")[0])), None)
        t.add_row(
            label,
            str(len(xs)),
            f"{statistics.median(upd):.3f}, {max(upd):.3f}",
            f"{statistics.median(seen):.3f}, {max(seen):.3f}",
            f"{b:.0f}" if b else "-",
        )
    console.print(t)
    u = sorted(upg["unavail"].values())
    k = args.max_unavailable
    t2 = Table(title=f"rolling upgrade of {args.nodes} nodes, max_unavailable={k} (load {upg_load})")
    for col in (
        "whole cluster s",
        "per-node unavailable s (median, min, max)",
        "most out at once",
        "jobs",
        "not COMPLETED",
        "requeued/seen",
    ):
        t2.add_column(col, justify="right")
    t2.add_row(
        f"{upg['total']:.1f}",
        f"{statistics.median(u):.1f}, {u[0]:.1f}, {u[-1]:.1f}" if u else "-",
        str(upg["most_out"]),
        str(upg["jobs"]),
        str(len(upg["bad"])),
        str(upg["requeued"]),
    )
    console.print(t2)
    if upg["bad"]:
        console.print(f"jobs not COMPLETED: {upg['bad']}")


if __name__ == "__main__":
    main()
