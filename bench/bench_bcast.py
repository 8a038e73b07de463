"""Broadcast and registry benchmark: bcast vs sbcast vs the floors, registry load.

    .venv/bin/python bench/bench_bcast.py [--nodes 16,32] [--reps 2] [--chunk 524288]
                                          [--fanout 1] [--json FILE] [--no-registry] [--no-tar]

ONE virtual cluster `bcastb` (as many nodes as the largest count; network eth10g = 1 Gbit/s per
link shaped with tbf, storage sshfs: the image store is served by the storage host, which also
runs the registry) is booted for the whole run and taken down at the end, also on an error or
Ctrl-C. For each node count N one allocation of N nodes is held; in it, side by side, per
repetition and in a shuffled order:

- sbcast-squashfs: the driver's collective step is `sbcast` of the 70 MB SquashFS file; its copy
  time is the sbcast command's wall time;
- bcast-squashfs: the collective step is one srun of the agent's `bcast` over the nodes (chain by
  default); its copy time is the step's wall time (srun launch included, like sbcast's), and the
  in-step copy time is from the root's first read to the last node's verified last byte; the
  loop mount is timed separately (the `stage` step);
- bcast (tarball, unpacked as it streams): copy end and unpack end on each node separately;
- registry: every node pulls the 70 MB layer from the storage host and unpacks; the storage host's
  bytes sent (its netns interface counter) and the slowest node's pull time, against N*S/B.

Floors for bcast's copy (stated, and printed):
- network: S/B + hops * chunk/B (a pipeline of `hops` links, each chunk stored and forwarded);
- CPU: every node hashes (SHA-256), writes (tmpfs) and forwards (sendfile out, recv in) S bytes,
  all N nodes on this machine's cores: N * S * (c_hash + c_write + c_forward) / cores, with the
  per-byte costs measured here, in this process, before the cluster boots.
CPU seconds per node come from the nodes' own records (getrusage of the agent and its tar).
The machine is shared with other sessions: os.getloadavg() is printed beside every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shoal import paths
from shoal.cluster import manager
from shoal.cluster.config import NETWORK_PROFILES, ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.staging import bcast as bc
from shoal.staging import driver
from shoal.staging.privileged import stage_comment
from shoal.staging.registry import get_method

NAME = "bcastb"
NETWORK = "eth10g"
IMAGE = "mpihello"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


# ---- the CPU floor: per-byte costs on this machine ---------------------------------------------


def per_byte_costs(chunk: int, total: int = 256 << 20) -> dict[str, float]:
    """CPU seconds per byte of SHA-256, writing to tmpfs, and a TCP forward over loopback
    (sendfile out of a tmpfs file + recv_into, both ends), as a node does them."""
    buf = os.urandom(chunk)
    n = total // chunk
    t = time.process_time()
    h = hashlib.sha256()
    for _ in range(n):
        h.update(buf)
        h.digest()
    c_hash = (time.process_time() - t) / (n * chunk)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    with tempfile.NamedTemporaryFile(dir=shm) as f:
        t = time.process_time()
        for _ in range(n):
            os.write(f.fileno(), buf)
        c_write = (time.process_time() - t) / (n * chunk)
        f.flush()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def receive() -> None:
            conn, _ = srv.accept()
            mv = memoryview(bytearray(chunk))
            while conn.recv_into(mv):
                pass
            conn.close()

        rt = threading.Thread(target=receive)
        rt.start()
        out = socket.create_connection(("127.0.0.1", port))
        t = time.process_time()  # process-wide: both threads' CPU
        with open(f.name, "rb") as src:
            off = 0
            while off < n * chunk:
                off += out.sendfile(src, off, min(chunk, n * chunk - off))
        out.close()
        rt.join()
        c_fwd = (time.process_time() - t) / (n * chunk)
        srv.close()
    return {"hash": c_hash, "write": c_write, "forward": c_fwd}


# ---- measurements ------------------------------------------------------------------------------


def storage_tx(name: str) -> int:
    state = ClusterDir(name).load()
    text = Path(f"/proc/{state.storage_pid}/net/dev").read_text()
    return sum(int(ln.split(":")[1].split()[8]) for ln in text.splitlines()[2:]
               if ":" in ln and ln.split(":")[0].strip() != "lo")


def run_one(site: driver.Site, alloc: driver.Allocation, method: str, chunk: int,
            fanout: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    tx0 = storage_tx(NAME)
    res = driver.distribute(site, alloc, method, IMAGE, timeout=600, chunk=chunk,
                            fanout=fanout if method.startswith("bcast") else None)
    served = storage_tx(NAME) - tx0
    row: dict[str, Any] = {"method": method, "nodes": len(alloc.nodes), "ok": res.ok,
                           "failed": res.failed, "collective_s": res.collective_seconds,
                           "driver_s": res.seconds, "load": round(load, 2),
                           "storage_tx_bytes": served}
    recs = res.records
    row["stage_max_s"] = max((float(r.get("stage_seconds") or 0) for r in recs.values()),
                             default=None)
    row["cpu_per_node"] = {n: r.get("stage_cpu_seconds") for n, r in sorted(recs.items())}
    b = res.extra.get("bcast") or {}
    if b:
        # the copy starts when the root begins its one read of shared storage (agents that are
        # still starting then count against the copy: they delay their part of the pipeline)
        root = next(x for x in b.values() if x.get("rank") == 0)
        t0 = float(root["wall_start"])
        ends = [float(x["copy_end"]) for x in b.values() if x.get("copy_end")]
        row["copy_in_step_s"] = max(ends) - t0 if len(ends) == len(b) else None
        unp = [float(x["unpack_end"]) for x in b.values() if x.get("unpack_end")]
        row["unpack_end_s"] = max(unp) - t0 if unp and len(unp) == len(b) else None
        row["bcast_cpu_per_node"] = {n: x.get("cpu_seconds") for n, x in sorted(b.items())}
        row["tar_cpu_per_node"] = {n: x.get("cpu_children_seconds") for n, x in sorted(b.items())}
        row["hops"] = next(iter(b.values())).get("hops")
        # a re-fed node or a lost one explains an outlier
        row["refed"] = sorted(n for n, x in b.items() if x.get("refed"))
        row["lost"] = {k: v for x in b.values() for k, v in (x.get("lost") or {}).items()}
        # the loop mount alone (bcast-squashfs' stage), slowest node
        mounts = [float(r.get("stage_call_seconds") or r.get("mount_seconds") or 0)
                  for r in recs.values()]
        row["mount_s"] = max(mounts) if mounts else None
    if method == "registry":
        row["pull_max_s"] = max(float(r.get("registry_pull_seconds") or 0) for r in recs.values())
        row["registry_push"] = res.extra.get("registry_push")
    driver.cleanup(site, alloc, IMAGE, timeout=300, raise_on_left=False)
    return row


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="16,32")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=bc.DEFAULT_CHUNK)
    ap.add_argument("--fanout", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-registry", action="store_true")
    ap.add_argument("--no-tar", action="store_true")
    args = ap.parse_args()
    counts = [int(x) for x in args.nodes.split(",")]
    manifest = json.loads((paths.store_root() / IMAGE / "manifest.json").read_text())
    s_sqfs = manifest["sizes"][f"{IMAGE}.sqfs"]
    s_tar = manifest["sizes"][f"{IMAGE}.tar.gz"]
    rate_mbit = NETWORK_PROFILES[NETWORK].rate_mbit or 0
    link = rate_mbit * 1e6 / 8
    cores = os.cpu_count() or 1
    console.print(f"measuring per-byte CPU costs (chunk {args.chunk}) ... load {os.getloadavg()}")
    costs = per_byte_costs(args.chunk)
    console.print({k: f"{v * 1e9:.3f} ns/B" for k, v in costs.items()})
    methods = ["sbcast-squashfs", "bcast-squashfs"] + ([] if args.no_tar else ["bcast"]) + \
        ([] if args.no_registry else ["registry"])
    rows: list[dict[str, Any]] = []
    t_start = time.monotonic()
    load0 = os.getloadavg()
    with manager.booted(ClusterConfig(name=NAME, nodes=max(counts), network=NETWORK,
                                      storage="sshfs", accounting=False)) as up:
        console.print(f"cluster {NAME} up in {up.boot_seconds:.1f} s, load {os.getloadavg()}")
        site = driver.site_for(NAME)
        rnd = random.Random(12)
        for n in counts:
            # the job's comment vouches for the loop mounts of the broadcast copies (the mount
            # broker reads it back from slurmctld; either squashfs broadcast method may name it)
            alloc = driver.allocate(site, n, time_limit="60",
                                    comment=stage_comment("bcast-squashfs", IMAGE))
            try:
                if "registry" in methods:  # fill the registry first: not part of any timing
                    driver.prepare(NAME, get_method("registry"), IMAGE, site.store_local)
                for rep in range(args.reps):
                    order = list(methods)
                    rnd.shuffle(order)
                    for m in order:
                        row = run_one(site, alloc, m, args.chunk, args.fanout)
                        row["rep"] = rep
                        rows.append(row)
                        console.print(
                            f"N={n} rep {rep} {m}: ok={row['ok']} collective "
                            f"{row['collective_s'] or 0:.2f} s, in-step copy "
                            f"{row.get('copy_in_step_s') or 0:.2f} s, stage max "
                            f"{row['stage_max_s'] or 0:.2f} s, storage sent "
                            f"{row['storage_tx_bytes'] / 1e6:.0f} MB, load {row['load']}"
                            + (f" FAILED {row['failed']}" if not row["ok"] else ""))
            finally:
                driver.release(site, alloc.job)
    wall = time.monotonic() - t_start
    out = {"costs_s_per_byte": costs, "cores": cores, "link_bytes_s": link, "rows": rows,
           "s_sqfs": s_sqfs, "s_tar": s_tar, "chunk": args.chunk, "fanout": args.fanout,
           "load_start": load0, "load_end": os.getloadavg(), "wall_s": wall}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    report(out, counts)
    return 0


def report(out: dict[str, Any], counts: list[int]) -> None:
    rows = out["rows"]
    link, cores, chunk = out["link_bytes_s"], out["cores"], out["chunk"]
    c = out["costs_s_per_byte"]
    per_byte = c["hash"] + c["write"] + c["forward"]
    t = Table(title="bcast vs sbcast (SquashFS, copy only) and the floors")
    for col in ("N", "sbcast copy s", "bcast copy s (step)", "bcast copy s (in step)",
                "speed-up", "net floor s", "CPU floor s", "bcast / max floor", "mount s",
                "bcast CPU s/node", "load"):
        t.add_column(col, justify="right")
    for n in counts:
        sb = [r["collective_s"] for r in rows if r["nodes"] == n and r["ok"]
              and r["method"] == "sbcast-squashfs"]
        bs = [r for r in rows if r["nodes"] == n and r["ok"] and r["method"] == "bcast-squashfs"]
        if not sb or not bs:
            continue
        step = med([r["collective_s"] for r in bs])
        inner = med([r["copy_in_step_s"] for r in bs if r.get("copy_in_step_s")])
        hops = bs[0].get("hops") or (n - 1)
        s = out["s_sqfs"]
        net = s / link + hops * chunk / link
        cpu = n * s * per_byte / cores
        floor = max(net, cpu)
        cpu_node = med([v for r in bs for v in r["bcast_cpu_per_node"].values() if v is not None])
        t.add_row(str(n), f"{med(sb):.2f}", f"{step:.2f}", f"{inner:.2f}",
                  f"{med(sb) / step:.1f}x", f"{net:.2f}", f"{cpu:.2f}",
                  f"{inner / floor:.2f}x (step {step / floor:.2f}x)",
                  f"{med([r['mount_s'] for r in bs if r.get('mount_s') is not None]):.2f}",
                  f"{cpu_node:.3f}", f"{med([r['load'] for r in bs]):.1f}")
    console.print(t)
    t2 = Table(title="bcast (tarball unpacked as it streams): copy and unpack apart")
    for col in ("N", "copy s (in step)", "last unpack end s", "step s", "bcast CPU s/node",
                "tar CPU s/node", "load"):
        t2.add_column(col, justify="right")
    for n in counts:
        bs = [r for r in rows if r["nodes"] == n and r["ok"] and r["method"] == "bcast"]
        if bs:
            t2.add_row(str(n), f"{med([r['copy_in_step_s'] for r in bs]):.2f}",
                       f"{med([r['unpack_end_s'] for r in bs if r.get('unpack_end_s')]):.2f}",
                       f"{med([r['collective_s'] for r in bs]):.2f}",
                       f"{med([v for r in bs for v in r['bcast_cpu_per_node'].values()]):.3f}",
                       f"{med([v for r in bs for v in r['tar_cpu_per_node'].values()]):.3f}",
                       f"{med([r['load'] for r in bs]):.1f}")
    console.print(t2)
    t3 = Table(title="registry: the N-to-1 load on the storage host")
    for col in ("N", "served MB", "N*S MB", "slowest pull s", "stage max s", "N*S/B s",
                "stage / (N*S/B)", "CPU s/node", "load"):
        t3.add_column(col, justify="right")
    for n in counts:
        rs = [r for r in rows if r["nodes"] == n and r["ok"] and r["method"] == "registry"]
        if rs:
            s = out["s_tar"]
            lim = n * s / link
            st = med([r["stage_max_s"] for r in rs])
            t3.add_row(str(n), f"{med([r['storage_tx_bytes'] for r in rs]) / 1e6:.0f}",
                       f"{n * s / 1e6:.0f}", f"{med([r['pull_max_s'] for r in rs]):.2f}",
                       f"{st:.2f}", f"{lim:.2f}", f"{st / lim:.2f}x",
                       f"{med([v for r in rs for v in r['cpu_per_node'].values() if v]):.2f}",
                       f"{med([r['load'] for r in rs]):.1f}")
    console.print(t3)
    console.print(f"per-byte CPU (ns/B): hash {c['hash'] * 1e9:.3f}, write {c['write'] * 1e9:.3f},"
                  f" forward {c['forward'] * 1e9:.3f}; cores {cores}; B = {link / 1e6:.0f} MB/s;"
                  f" chunk {chunk}; load {out['load_start']} -> {out['load_end']};"
                  f" wall {out['wall_s']:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--from-json":
        data = json.loads(Path(sys.argv[2]).read_text())
        report(data, sorted({r["nodes"] for r in data["rows"]}))
        sys.exit(0)
    sys.exit(main())
