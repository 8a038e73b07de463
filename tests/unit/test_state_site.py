"""A real site: the state service from a plain node list and scontrol alone (a recorded-behaviour
scontrol on PATH), and the state package never importing the virtual cluster."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shoal.slurm.client import SlurmClient
from shoal.state.backend import PlainBackend
from shoal.state.client import StateClient
from shoal.state.engine import EngineConfig
from shoal.state.service import ServiceConfig, run_service

REPO = Path(__file__).resolve().parents[2]

# A stand-in for scontrol with the two verbs the bridge uses; node states live in a JSON file.
FAKE_SCONTROL = r'''#!PYTHON
import json, sys, os
db = os.environ["FAKE_SLURM_DB"]
nodes = json.load(open(db))
args = sys.argv[1:]
with open(db + ".log", "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:3] == ["show", "node", "-o"]:
    for n, s in sorted(nodes.items()):
        print(f"NodeName={n} Arch=x86_64 CPUTot=2 State={s['state']} SlurmdStartTime=2026-01-01T00:00:00 "
              f"Reason={s['reason'] or '(null)'}")
elif args[0] == "update":
    kv = dict(a.split("=", 1) for a in args[1:])
    names = []
    spec = kv["NodeName"]
    if "[" in spec:
        pre, rng = spec.rstrip("]").split("[")
        for part in rng.split(","):
            lo, _, hi = part.partition("-")
            names += [f"{pre}{i}" for i in range(int(lo), int(hi or lo) + 1)]
    else:
        names = spec.split(",")
    for n in names:
        if kv["State"] == "DOWN":
            nodes[n] = {"state": "DOWN", "reason": kv["Reason"]}
        elif kv["State"] == "RESUME":
            nodes[n] = {"state": "IDLE", "reason": ""}
    json.dump(nodes, open(db + ".tmp", "w"))
    os.replace(db + ".tmp", db)  # readers never see a half-written file
else:
    sys.exit("fake scontrol: unsupported " + " ".join(args))
'''


def test_bridge_from_a_node_list_and_scontrol_alone(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scontrol = bindir / "scontrol"
    scontrol.write_text(FAKE_SCONTROL.replace("PYTHON", sys.executable))
    scontrol.chmod(0o755)
    db = tmp_path / "slurm.json"
    names = [f"cn{i}" for i in range(1, 5)]
    db.write_text(json.dumps({n: {"state": "IDLE", "reason": ""} for n in names}))
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "FAKE_SLURM_DB": str(db)}
    sock = tmp_path / "run" / "api.sock"
    cfg = ServiceConfig(db=tmp_path / "state.sqlite", socket=sock, admin_uids={os.getuid()},
                        engine=EngineConfig(heartbeat_timeout=1.0, slurm_poll=0.2, tick=0.05))

    def log() -> list[list[str]]:
        return [json.loads(x) for x in (tmp_path / "slurm.json.log").read_text().splitlines()]

    async def main() -> None:
        stop = asyncio.Event()
        ready = asyncio.Event()
        svc = asyncio.create_task(run_service(cfg, PlainBackend(dict.fromkeys(names, "")),
                                              SlurmClient(env=env, timeout=10), ready.set, stop))
        await asyncio.wait_for(ready.wait(), 10)
        assert (os.stat(sock.parent).st_mode & 0o777) == 0o700
        c = StateClient(socket_path=str(sock))

        def post(events: list[dict[str, object]]) -> None:
            c.request("POST", "/dsc/events", {"events": events})

        progs = {"slurmd": "RUNNING", "munged": "RUNNING"}
        await asyncio.to_thread(post, [{"node": n, "kind": "hello", "boot": "1", "programs": progs}
                                       for n in names])
        await asyncio.to_thread(post, [{"node": n, "kind": "process", "program": "slurmd", "state": "FATAL"}
                                       for n in ("cn2", "cn3")])
        deadline = time.monotonic() + 5
        while json.loads(db.read_text())["cn3"]["state"] != "DOWN":
            assert time.monotonic() < deadline, log()
            await asyncio.sleep(0.02)
        updates = [a for a in log() if a[0] == "update"]
        assert updates == [["update", "NodeName=cn[2-3]", "State=DOWN", "Reason=shoal: slurmd FATAL"]]
        # cn4 stops sending heartbeats: unresponsive after the timeout, DOWN; the others keep going.
        for _ in range(8):
            await asyncio.to_thread(post, [{"node": n, "kind": "heartbeat", "boot": "1", "programs": progs}
                                           for n in ("cn1", "cn2", "cn3")])
            await asyncio.sleep(0.25)
        state = json.loads(db.read_text())
        assert state["cn4"]["state"] == "DOWN" and "no heartbeat" in state["cn4"]["reason"]
        # cn2 and cn3 reported slurmd RUNNING again: resumed, as their reason was ours.
        assert state["cn2"]["state"] == state["cn3"]["state"] == "IDLE"
        assert state["cn1"]["state"] == "IDLE"
        assert ["update", "NodeName=cn[2-3]", "State=RESUME"] in log()
        # Without a backend there is nothing to swap: asking for it is a 400, not a crash.
        from shoal.state.client import StateAPIError

        try:
            await asyncio.to_thread(c.request, "PATCH", "/cfg/nodes", {"image": "layer1:abc"})
            raise AssertionError("image change accepted without a swap backend")
        except StateAPIError as exc:
            assert "HTTP 400" in exc.message
        stop.set()
        await svc

    asyncio.run(main())
    assert not sock.exists()


def test_state_package_never_imports_the_virtual_cluster() -> None:
    pkg = REPO / "shoal" / "state"
    for py in pkg.glob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            assert not any(m == "shoal.cluster" or m.startswith("shoal.cluster.") for m in mods), py
    code = (
        "import sys, importlib, pkgutil, shoal.state as s\n"
        "for m in pkgutil.iter_modules(s.__path__): importlib.import_module('shoal.state.' + m.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'shoal.cluster' or m.startswith('shoal.cluster.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
