"""One study run inside its batch job: stage, run the workload, clean up, one record per node.

STANDARD LIBRARY ONLY. The study's batch script runs on the first node of the allocation, where
there is no venv, only python3, the Slurm clients and Charliecloud; it calls the node agent bundle:

    python3 /pfs/store/.shoal/agent-<hash>.pyz --store /pfs/store \\
        job --method M --image I --workload W [--timeout S] [--fanout K] [--compress]

``job`` (this module's ``do_job``) runs, each step bounded by what is left of --timeout:

1. the method's collective step when it has one: ``check`` on every node (fail before copying),
   then ``sbcast`` of the artifact from this batch step (timed here);
2. ``stage`` on every node (``srun --ntasks-per-node=1``; timed on the node, from ``check`` for
   collective methods so the broadcast counts as staging);
3. the workload: per-node workloads (catwalk, statwalk, pynamic) through the agent's
   ``workload`` subcommand on every node (``ch-run STAGED -- CMD``, timed on the node); MPI
   workloads (mpihello, lammps) as one ``srun --mpi=pmix ... ch-run STAGED -- CMD`` over the
   allocation, one rank per node, timed here; their figures of merit are rank 0's JSON line and
   are attached to EVERY node record, with ``workload_scope = "job"`` (per-node ones say "node");
4. ``cleanup`` on every node, always (figures only known at unmount, e.g. reads through a mount);

and prints ONE JSON line per node with the keys of the study's job contract
(shoal.study.jobscript), even when a step failed (ok = false, error = why), then exits 0 if every
node is ok. The workload runs only if every node staged the image: a partial allocation is not the
experiment that was asked for.

bytes_from_storage is what the node read from shared storage for the whole run: the copy while
staging (untar), the reads through a mount of a file on shared storage over the mount's life
(squashfs-kernel, squashfuse: loop device / squashfuse counters), the workload's reads for
shared-dir (every read in the container goes to shared storage), and for broadcast methods the
one read of the artifact by the batch node (sbcast reads it once for the job, on the first node).
"""

import contextlib
import json
import os
import pkgutil
import re
import sys
import time
from typing import Any

from shoal.errors import CommandTimeout, DistError, ShoalError
from shoal.runner import run
from shoal.slurm.hostlist import expand
from shoal.staging.base import Context, load_state, proc_io
from shoal.staging.record import base_record, fail, node_name
from shoal.staging.registry import get_method
from shoal.workloads import Workload, get_workload

STEP_MIN_TIMEOUT = 30.0
CLEANUP_TIMEOUT = 120.0
DEFAULT_JOB_TIMEOUT = 600.0
# PMIx's shared-memory data store warns about locks inside ch-run containers: hash instead
MPI_ENV = "ALL,PMIX_MCA_gds=hash"


def last_json(text: "str") -> "dict[str, Any] | None":
    """The last line of TEXT that is a JSON object (a workload's figures of merit)."""
    for line in reversed(text.splitlines()):
        s = line.strip()
        if s.startswith("{"):
            with contextlib.suppress(ValueError):
                d = json.loads(s)
                if isinstance(d, dict):
                    return d
    return None


_CANT_OPEN = re.compile(r"can't open file '([^']+)'")


def missing_agent(stderr: "str") -> "str":
    """Why a node ran nothing when python3 could not open the agent bundle (else "")."""
    m = _CANT_OPEN.search(stderr)
    if not m:
        return ""
    return (f"the node agent {m.group(1)} is not there on the node: the nodes must see the "
            f"image store at the path this side uses (set `store` in /etc/shoal/shoal.toml, "
            f"or SHOAL_STORE, to the store's path on the nodes)")


def tail(text: "str", n: "int" = 2) -> "str":
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-300:]


# srun relays a task's output in messages of at most this many bytes; with --label every message
# becomes its own labelled line, so a longer line arrives cut into pieces of exactly this size
SRUN_IO_MSG = 1024
_LABEL = re.compile(r"^\s*(\d+): ?(.*)$")


def unlabel(text: "str") -> "list[str]":
    """Lines of `srun --label` output with the labels removed and cut lines joined again.

    Without --label, lines longer than SRUN_IO_MSG from different tasks interleave beyond repair
    (agent records of ~1 KB did); with it, consecutive pieces of one task are rejoined while a
    piece has the full message size. Lines without a label are kept as they are.
    """
    out: "list[str]" = []
    open_line: "dict[str, int]" = {}  # task -> index in out of its line still being continued
    for line in text.splitlines():
        m = _LABEL.match(line)
        if m is None:
            out.append(line)
            continue
        task, piece = m.group(1).lstrip("0") or "0", m.group(2)
        if task in open_line:
            out[open_line[task]] += piece
        else:
            out.append(piece)
            open_line[task] = len(out) - 1
        if len(piece.encode()) < SRUN_IO_MSG:
            del open_line[task]
    return out


def parse_records(text: "str") -> "dict[str, dict[str, Any]]":
    """The agent's JSON records in srun output (plain or --label), by node (others: noise)."""
    out: "dict[str, dict[str, Any]]" = {}
    for line in unlabel(text):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("node"), str):
            out[rec["node"]] = rec
    return out


def run_agent(argv: "list[str]", nodes: "list[str]", timeout: "float", what: "str", label: "str" = "",
              env: "dict[str, str] | None" = None
              ) -> "tuple[dict[str, dict[str, Any]], dict[str, str], str]":
    """Run one srun step of the agent (one task per node); (records by node, failures by node,
    why srun itself failed or ""). Failure texts start with `label`."""
    stdout, why = "", ""
    try:
        done = run(argv, timeout=timeout, check=False, what=what, env=env)
        stdout = done.stdout
        if done.returncode != 0:
            why = missing_agent(done.stderr) or tail(done.stderr)
    except CommandTimeout as exc:
        stdout = exc.stdout
        why = f"no answer within {timeout:g} s"
    records = parse_records(stdout)
    failed: "dict[str, str]" = {}
    for node in nodes:
        rec = records.get(node)
        if rec is None:
            failed[node] = f"{label}no record from the node ({why or 'srun gave no output'})"
        elif not rec.get("ok"):
            failed[node] = f"{label}{rec.get('error') or 'failed'}"
    return records, failed, why


def user_env() -> "dict[str, str] | None":
    # ch-run refuses to start without $USER (batch jobs of daemons may not set it)
    if os.environ.get("USER"):
        return None
    return {"USER": "root" if os.geteuid() == 0 else str(os.geteuid())}


# ---- per node: the `workload` subcommand -----------------------------------------------------


def do_workload(ctx: "Context", name: "str", timeout: "float") -> "dict[str, Any]":
    """Run workload NAME in the image staged for this job on this node; time it here."""
    state = load_state(ctx) or {}
    rec = base_record("workload", ctx, state.get("method"))
    rec["workload"] = name
    try:
        wl = get_workload(name)
        staged = state.get("staged")
        if not isinstance(staged, str):
            raise DistError(f"image {ctx.image!r} is not staged on this node for job {ctx.job}",
                            "the stage step failed or did not run")
        script = ""
        if wl.script:
            data = pkgutil.get_data("shoal.workloads", wl.script)
            if data is None:
                raise DistError(f"workload script {wl.script} missing from the agent bundle")
            # the host's /tmp is the container's /tmp (ch-run binds it): the path is the same
            wdir = os.path.join(ctx.job_dir, "workloads")
            os.makedirs(wdir, exist_ok=True)
            script = os.path.join(wdir, wl.script)
            with open(script, "wb") as f:
                f.write(data)
            os.chmod(wdir, 0o755)
            os.chmod(script, 0o644)
        io0 = proc_io()
        w0, t0 = time.time(), time.monotonic()
        argv = [a.format(script=script, t0=f"{w0:.6f}") for a in wl.argv]
        ranks = max(1, int(os.environ.get("SLURM_CPUS_ON_NODE") or "1")) if wl.per_core else 1

        def one(_: "int") -> "Any":
            return run(["ch-run", staged, "--", *argv], timeout=timeout, check=False,
                       env=user_env(), what=f"workload {name}")

        if ranks == 1:
            outs = [one(0)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=ranks) as pool:
                outs = list(pool.map(one, range(ranks)))
        seconds = time.monotonic() - t0
        io1 = proc_io()
        # the slowest rank decides; a failed one wins over any success
        done = max(outs, key=lambda d: (d.returncode != 0, d.seconds))
        fom = last_json(done.stdout)
        if fom is not None and ranks > 1:
            fom = dict(fom, ranks=ranks)
        rec.update({
            "seconds": round(seconds, 6), "wall_start": w0, "wall_end": time.time(),
            "fom": fom or {}, "returncode": done.returncode,
            # the container's reads: on shared-dir every one of them goes to shared storage
            "rchar": io1.get("rchar", 0) - io0.get("rchar", 0),
            "read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
        })
        if done.returncode != 0:
            rec["error"] = f"workload {name} exited {done.returncode}: " \
                           f"{tail(done.stderr) or tail(done.stdout)}"
        elif fom is None:
            rec["error"] = f"workload {name} printed no JSON figures of merit: {tail(done.stdout)}"
        else:
            rec["ok"] = True
    except CommandTimeout:
        rec["error"] = f"workload {name} ran past {timeout:g} s"
    except Exception as exc:
        fail(rec, exc)
    return rec


# ---- batch side: the `job` subcommand --------------------------------------------------------


class Steps:
    """Job steps from the batch script: srun of the agent on every node, one record each."""

    def __init__(self, agent: "str", store: "str", nodes: "list[str]", deadline: "float") -> "None":
        self.agent = agent
        self.store = store
        self.nodes = nodes
        self.deadline = deadline
        self.log: "list[str]" = []

    def left(self, minimum: "float" = STEP_MIN_TIMEOUT) -> "float":
        return max(minimum, self.deadline - time.monotonic())

    def srun(self, *cmd: "str", mpi: "str" = "none", export: "str | None" = None) -> "list[str]":
        n = len(self.nodes)
        argv = ["srun", f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1",
                f"--nodelist={','.join(self.nodes)}", "--kill-on-bad-exit=0", f"--mpi={mpi}"]
        if export:
            argv.append(f"--export={export}")
        return [*argv, *cmd]

    def agent_step(self, sub: "str", *args: "str", timeout: "float | None" = None,
                   env: "dict[str, str] | None" = None
                   ) -> "tuple[dict[str, dict[str, Any]], dict[str, str]]":
        """Run the agent's SUB on every node; (records by node, failures by node)."""
        # --label: records longer than srun's 1 KiB messages can be put together again
        argv = self.srun("--label", "python3", self.agent, "--store", self.store, sub, *args)
        limit = timeout if timeout is not None else self.left()
        records, failed, why = run_agent(argv, self.nodes, limit, f"node agent {sub}", f"{sub}: ",
                                         env=env)
        if why:
            self.log.append(f"{sub}: {why}")
        return records, failed


# ---- the bcast methods' collective step (shoal.staging.bcast), from here or from the driver ----

BCAST_FANOUT = 1  # a chain: every link carries the image once, the best pipeline for full-duplex links
BCAST_CHUNK = 512 * 1024
BCAST_GRACE = 30.0  # srun's own limit is the agents' limit plus this (launch, output)


def bcast_args(job: "str", image: "str", method: "str", nodes: "list[str]", *, fanout: "int", chunk: "int",
               timeout: "float", rate: "float" = 0.0) -> "list[str]":
    """The agent's `bcast` arguments; the first node is the root (the one storage reader)."""
    args = ["bcast", "--job", job, "--image", image, "--method", method, "--nodes",
            ",".join(nodes), "--fanout", str(fanout), "--chunk", str(chunk),
            "--timeout", f"{timeout:.0f}"]
    if rate > 0:
        args += ["--rate", f"{rate:g}"]
    return args


def bcast_env() -> "dict[str, str]":
    """A fresh secret per broadcast: the nodes authenticate each other with it (srun passes the
    environment to every task; only the job's user and root can read it there)."""
    import secrets

    from shoal.staging.bcast import TOKEN_ENV

    return {TOKEN_ENV: secrets.token_hex(32)}


def bcast_failures(records: "dict[str, dict[str, Any]]", failed: "dict[str, str]") -> "dict[str, str]":
    """Failures by node; a node that left no record (killed) is named with what its neighbours
    saw of it (e.g. "node1 lost node2 after sending it 31457280 bytes: ...")."""
    said: "dict[str, list[str]]" = {}
    for node in sorted(records):
        lost = records[node].get("lost")
        if isinstance(lost, dict):
            for name, why in lost.items():
                said.setdefault(str(name), []).append(str(why))
    return {n: (f"bcast: {'; '.join(said[n][:3])}" if n not in records and n in said else why)
            for n, why in failed.items()}


def _sbcast(steps: "Steps", ctx: "Context", kind: "str", fanout: "int", compress: "bool") -> "float":
    argv = ["sbcast", f"--jobid={ctx.job}", "-f", f"--fanout={fanout}"]
    if compress:
        argv.append("--compress")
    t0 = time.monotonic()
    run([*argv, ctx.artifact(kind), ctx.local_artifact(kind)], timeout=steps.left(),
        what="sbcast", hint="is the artifact readable here and /tmp writable on the nodes?")
    return time.monotonic() - t0


def _mpi_workload(steps: "Steps", wl: "Workload", staged: "str") -> "dict[str, Any]":
    """One MPI job over the allocation; its record (timed here, rank 0's figures)."""
    argv = steps.srun("ch-run", staged, "--", *wl.argv, mpi="pmix", export=MPI_ENV)
    w0, t0 = time.time(), time.monotonic()
    rec: "dict[str, Any]" = {"ok": False, "error": None, "wall_start": w0}
    limit = steps.left()
    try:
        done = run(argv, timeout=limit, check=False, env=user_env(), what=f"workload {wl.name}")
    except CommandTimeout:
        rec["error"] = f"workload {wl.name} ran past {limit:g} s"
        return rec
    rec["seconds"] = round(time.monotonic() - t0, 6)
    rec["wall_end"] = time.time()
    fom = last_json(done.stdout) or {}
    hosts = sorted({f[len("host="):] for ln in done.stdout.splitlines()
                    for f in ln.split() if f.startswith("host=")})
    if hosts:
        fom["hosts"] = len(hosts)
    rec["fom"] = fom
    rec["returncode"] = done.returncode
    if done.returncode != 0:
        rec["error"] = f"workload {wl.name} exited {done.returncode}: " \
                       f"{tail(done.stderr) or tail(done.stdout)}"
    elif not fom or fom.get("ring_passed") is False:
        rec["error"] = f"workload {wl.name} gave no passing figures of merit: " \
                       f"{tail(done.stdout)}"
    else:
        rec["ok"] = True
    return rec


def _num(v: "Any") -> "float | None":
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: "Any") -> "int | None":
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def merge(node: "str", *, method: "str", image: "str", workload: "str", job: "str", batch_node: "str",
          stage: "dict[str, Any] | None", work: "dict[str, Any] | None", scope: "str",
          clean: "dict[str, Any] | None", error: "str | None", collective_s: "float | None",
          collective_bytes: "int", job_stage_s: "float | None",
          acct: "dict[str, Any] | None" = None) -> "dict[str, Any]":
    """The node's record in the study's job contract (shoal.study.jobscript).

    ACCT: this node's accounting fields and the run's (``run_accounting``); where they measured
    the node's bytes from the storage host, those replace the method-based estimate."""
    s = stage or {}
    w = work or {}
    c = clean or {}
    figures: "dict[str, Any]" = {}
    for v in (c.get("figures") or {}).values():
        if isinstance(v, dict):
            figures.update(v)
    storage = _int(s.get("stage_bytes_from_storage"))
    mount_reads = _int(figures.get("mount_bytes_read"))
    if mount_reads is not None:
        storage = mount_reads  # the mount's whole life: staging and the workload's reads
    elif method == "shared-dir" and _int(w.get("rchar")) is not None:
        storage = (storage or 0) + int(w["rchar"])
    if collective_s is not None and node == batch_node:
        storage = (storage or 0) + collective_bytes
    rec: "dict[str, Any]" = {
        "node": node, "ok": error is None, "error": error, "method": method, "image": image,
        "job": job, "image_digest": s.get("image_digest"),
        "stage_start": _num(s.get("stage_start")), "stage_end": _num(s.get("stage_end")),
        "stage_seconds": _num(s.get("stage_seconds")),
        "bytes_from_storage": storage,
        "bytes_net_rx": _int(s.get("bytes_net_rx")),
        "bytes_net_tx": _int(s.get("bytes_net_tx")),
        "stage_cpu_seconds": _num(s.get("stage_cpu_seconds")),
        "peak_bytes": _int(s.get("peak_bytes")),
        "workload": workload, "workload_seconds": _num(w.get("seconds")),
        "fom": w.get("fom") if isinstance(w.get("fom"), dict) else {},
        "workload_scope": scope,
        "workload_start": _num(w.get("wall_start")), "workload_end": _num(w.get("wall_end")),
        "workload_rchar": _int(w.get("rchar")),
        "stage_bytes_from_storage": _int(s.get("stage_bytes_from_storage")),
        "collective_seconds": collective_s, "job_stage_seconds": job_stage_s,
        "staged": s.get("staged"), "staged_by": s.get("staged_by"),
        "broadcast_bytes": _int(s.get("broadcast_bytes")),
        "mount_bytes_read": mount_reads,
        "fuse_peak_rss_bytes": _int(figures.get("fuse_peak_rss_bytes")),
        "cleanup_ok": bool(c.get("ok")) if c else None,
        "cleanup_left": c.get("left") if c else None,
    }
    if isinstance(s.get("phases"), dict):
        rec["stage_subphases"] = s["phases"]
    if acct:
        rec["bytes_estimate_from_storage"] = storage
        rec.update(acct)
        if acct.get("storage_rx_bytes") is not None:
            rec["bytes_from_storage"] = acct["storage_rx_bytes"]
        if acct.get("net_rx_bytes") is not None:
            rec["bytes_net_rx"] = acct["net_rx_bytes"]
    return rec


def _delta(a: "dict[str, Any]", b: "dict[str, Any]", key: "str") -> "int | None":
    x, y = _int(a.get(key)), _int(b.get(key))
    return None if x is None or y is None else y - x


def run_accounting(clock: "Any", nodes: "list[str]", first: "dict[str, dict[str, Any]]",
                   last: "dict[str, dict[str, Any]]", end_wall: "float | None",
                   fab: "dict[str, Any]") -> "dict[str, dict[str, Any]]":
    """Per node: the run's one clock, its phases, CPU seconds, memory and bytes, and the bound.

    Time to solution runs from the job step's start (the clock's first mark, before any launch)
    to the last node's workload end. Phase times are the batch side's marks (every node's step
    of a phase is inside them); CPU and memory per phase come from each node's cgroup at the
    marks; bytes from each node's interface counters at its first and last agent step.
    """
    from shoal.staging.accounting import classify_bound, host_cores, utilisation

    table = clock.phase_table()
    win = clock.window("workload")
    start = clock.start["w"]
    run: "dict[str, Any]" = {
        "job_start": start,
        "time_to_solution": None if end_wall is None else round(end_wall - start, 6),
        "cluster_cpu_s": win["cluster_cpu_s"], "host_cpu_util": win["host_cpu_util"],
        "storage_served_bytes": win["storage_served_bytes"],
        "storage_received_bytes": win["storage_received_bytes"],
        "link_mbit": fab.get("link_mbit"), "storage_mbit": fab.get("storage_mbit"),
        "storage_kind": fab.get("storage"), "host_cores": fab.get("host_cores") or host_cores(),
    }
    for ph, ent in table.items():
        run[f"phase_{ph}_s"] = ent["seconds"]
    per: "dict[str, dict[str, Any]]" = {}
    busiest: "int | None" = None
    for n in nodes:
        a = (first.get(n) or {}).get("c0") or {}
        b = (last.get(n) or {}).get("c1") or {}
        rec: "dict[str, Any]" = {
            "net_rx_bytes": _delta(a, b, "net_rx"), "net_tx_bytes": _delta(a, b, "net_tx"),
            "storage_rx_bytes": _delta(a, b, "storage_rx"),
        }
        cpu_total = 0.0
        peaks: "list[int]" = []
        for ph, ent in table.items():
            u = ent["nodes"].get(n) or {}
            rec[f"cpu_{ph}_s"] = u.get("cpu_s")
            rec[f"mem_peak_{ph}_bytes"] = u.get("memory_peak_bytes")
            if u.get("cpu_s") is not None:
                cpu_total += u["cpu_s"]
            if u.get("memory_peak_bytes") is not None:
                peaks.append(u["memory_peak_bytes"])
        rec["cpu_s"] = round(cpu_total, 6) if table else None
        rec["memory_peak_bytes"] = max(peaks) if peaks else None
        moved = [v for v in (rec["net_rx_bytes"], rec["net_tx_bytes"]) if v is not None]
        if moved:
            busiest = max(busiest or 0, max(moved))
        per[n] = rec
    util = utilisation(win["seconds"], win["cluster_cpu_s"], run["host_cores"], busiest,
                       fab.get("link_mbit"), win["storage_served_bytes"], fab.get("storage_mbit"))
    run.update({f"util_{k}": None if v is None else round(v, 4) for k, v in util.items()})
    run["busiest_link_bytes"] = busiest
    run["bound"] = classify_bound(util, win["host_cpu_util"], run["host_cores"])
    return {n: {**run, **per[n]} for n in nodes}


def do_job(*, agent: "str", store: "str", method_name: "str", image: "str", workload: "str",
           timeout: "float" = DEFAULT_JOB_TIMEOUT, fanout: "int" = 8, compress: "bool" = False,
           bcast_fanout: "int" = BCAST_FANOUT, chunk: "int" = BCAST_CHUNK, out: "Any" = None) -> "int":
    """The whole run of one experiment repetition from the batch script (see module doc)."""
    out = out or sys.stdout
    job = os.environ.get("SLURM_JOB_ID", "")
    nodes = expand(os.environ.get("SLURM_JOB_NODELIST"))
    if not job or not nodes:
        sys.stderr.write("shoal job: run me inside a Slurm batch job (SLURM_JOB_ID unset)\n")
        return 2
    from shoal.staging.accounting import Clock, fabric

    batch_node = node_name()
    # the one clock of every method: from here (before any launch) to the last workload end
    clock = Clock(nodes)
    t_start = time.monotonic()
    steps = Steps(agent, store, nodes, t_start + timeout)
    first: "dict[str, dict[str, Any]]" = {}  # each node's first agent record (counters at start)
    end_wall: "float | None" = None
    errors: "dict[str, str]" = {}
    stage: "dict[str, dict[str, Any]]" = {}
    work: "dict[str, dict[str, Any]]" = {}
    clean: "dict[str, dict[str, Any]]" = {}
    collective_s: "float | None" = None
    collective_bytes = 0
    job_stage_s: "float | None" = None
    scope = "node"
    common = ("--job", job, "--image", image)
    try:
        method = get_method(method_name)
        wl = get_workload(workload)
        scope = "job" if wl.kind == "mpi" else "node"
        ctx = Context(job, image, store)
        if method.collective:
            if method.collective not in ("sbcast", "bcast"):
                raise DistError(f"method {method.name} asks for unknown collective "
                                f"{method.collective!r}")
            first, errors = steps.agent_step("check", *common, "--method", method.name)
            if not errors and method.collective == "sbcast":
                try:
                    collective_s = _sbcast(steps, ctx, method.artifact, fanout, compress)
                    collective_bytes = os.path.getsize(ctx.artifact(method.artifact))
                except ShoalError as exc:
                    errors = {n: f"sbcast: {exc.message}" for n in nodes}
            elif not errors:
                # the root's one read of shared storage is in its stage record (not counted here)
                t0 = time.monotonic()
                limit = steps.left()
                brecs, errors = steps.agent_step(
                    *bcast_args(job, image, method.name, nodes, fanout=bcast_fanout,
                                chunk=chunk, timeout=max(10.0, limit - BCAST_GRACE)),
                    timeout=limit, env=bcast_env())
                collective_s = round(time.monotonic() - t0, 6)
                errors = bcast_failures(brecs, errors)
            clock.mark("collective")
        if not errors:
            stage, errors = steps.agent_step("stage", *common, "--method", method.name)
            for n, r in stage.items():
                first.setdefault(n, r)
            clock.mark(method.phase)
        job_stage_s = round(time.monotonic() - t_start, 6)
        if not errors:
            if wl.kind == "node":
                work, errors = steps.agent_step(
                    "workload", *common, "--workload", wl.name,
                    "--timeout", f"{max(10.0, steps.left() - 5):.0f}")
            else:
                paths_ = {str(r.get("staged")) for r in stage.values()}
                if len(paths_) != 1:
                    raise DistError(f"nodes staged at different paths: {sorted(paths_)}")
                mrec = _mpi_workload(steps, wl, paths_.pop())
                work = {n: mrec for n in nodes}
                if not mrec["ok"]:
                    errors = {n: str(mrec["error"]) for n in nodes}
            ends = [float(r["wall_end"]) for r in work.values()
                    if isinstance(r.get("wall_end"), (int, float))]
            end_wall = max(ends) if ends and len(work) == len(nodes) else None
            clock.mark("workload")
        else:
            bad = ", ".join(sorted(errors))
            for n in nodes:
                errors.setdefault(n, f"workload not run: staging failed on {bad}")
    except ShoalError as exc:
        errors = {n: errors.get(n) or exc.message for n in nodes}
    except Exception as exc:  # every failure still gives every node its record
        errors = {n: errors.get(n) or f"{type(exc).__name__}: {exc}" for n in nodes}
    finally:
        # everything of the job on every node: this is the job's own allocation
        clean, cfailed = steps.agent_step("cleanup", "--job", job,
                                          timeout=max(CLEANUP_TIMEOUT, steps.left(0)))
        clock.mark("cleanup")
        for n, why in cfailed.items():
            errors.setdefault(n, why)
    for line in steps.log:
        sys.stderr.write(f"shoal job: {line}\n")
    acct: "dict[str, dict[str, Any]]" = {}
    try:
        acct = run_accounting(clock, nodes, first, clean, end_wall, fabric())
    except Exception as exc:  # accounting must never cost the run its records
        sys.stderr.write(f"shoal job: accounting failed: {type(exc).__name__}: {exc}\n")
    for n in nodes:
        rec = merge(n, method=method_name, image=image, workload=workload, job=job,
                    batch_node=batch_node, stage=stage.get(n), work=work.get(n), scope=scope,
                    clean=clean.get(n), error=errors.get(n), collective_s=collective_s,
                    collective_bytes=collective_bytes, job_stage_s=job_stage_s,
                    acct=acct.get(n))
        out.write(json.dumps(rec, sort_keys=True) + "\n")
    out.flush()
    return 1 if errors else 0
