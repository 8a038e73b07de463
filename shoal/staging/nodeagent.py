"""The node agent: stages, verifies and cleans up an image on one node; one JSON line per call.

STANDARD LIBRARY ONLY. Nodes have no venv: the driver ships this module, shoal.staging.base, the
method modules and shoal.images.treedigest as one zipapp (shoal.bundle) to shared storage and
runs ``python3 /pfs/store/.shoal/agent-<hash>.pyz SUBCOMMAND ...`` with one task per node.

Subcommands (``--job`` defaults to $SLURM_JOB_ID, ``--store`` to /pfs/store):

    check   --method M --image I   fail up front (files, privilege, space); record the baseline
                                   counters a later ``stage`` continues from (collective methods)
    stage   --method M --image I   make the image usable at /tmp/shoal/<job>/<image> (or the shared
                                   dir); print the per-node record (times, bytes, peak local use)
    verify  --image I              tree digest of the staged image against the manifest's
    cleanup [--image I]            undo staging (all images of the job without --image); report
                                   anything left: mounts, loop devices, files
    bcast   --method M --image I --nodes A,B,...   this node's part of a pipelined broadcast
                                   (bcast methods' collective step: one srun over all nodes)
    registry-push --image I --registry URL   push the store's tarball as a one-layer OCI image
    workload --image I --workload W   run W in the staged image on this node (ch-run), timed
    job --method M --image I --workload W   one study run from its batch script: the steps above
                                   on every node, one record per node (shoal.staging.jobstep)
    prolog / epilog                the privileged hook for Slurm's Prolog/Epilog (run as root)

Privileged staging (mounts) through Slurm, for sites where job steps are not root: the site
installs, in its Prolog and Epilog scripts (shoal/cluster/files/ has them):

    /usr/bin/python3 /etc/slurm/shoal-nodeagent.py prolog      # and: ... epilog

The job asks in its comment (``sbatch --comment=shoal-stage=METHOD:IMAGE``, see
shoal.staging.privileged). The Prolog (root; SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_COMMENT set
by slurmd from the job record slurmctld keeps) makes the job's user area /tmp/shoal/<job> (fresh,
in a root-owned /tmp/shoal, handed to the user), and for a method with ``prolog = True`` mounts
the image of the admin's store read-only, nosuid, nodev at /run/shoal/jobs/<job>/<image>, a
directory only root can write, leaving its record beside it; the job's own ``stage`` step reports
that record. Where node root may not mount (a virtual cluster's confined nodes) the Prolog asks
shoal's mount broker, which re-reads the job record from slurmctld. The Epilog unmounts
/run/shoal/jobs/<job> and sweeps /tmp/shoal/<job> as the job's user. Prolog and Epilog always exit
0: a failing Prolog would drain the node; a failed staging is reported by the job's ``stage`` step.
"""

import argparse
import contextlib
import errno
import json
import os
import sys
import time
from typing import Any


def _lone_file() -> "None":
    """Run as a lone copy of this file (not the bundle): the methods are not importable.

    The Prolog and Epilog must still exit 0 (a failing Prolog drains the node); any other
    subcommand reports the problem as its record.
    """
    sub = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    msg = ("shoal node agent: run the bundle (shoal.bundle.write_bundle), not a lone copy "
           "of nodeagent.py: the method modules are missing")
    if sub in ("prolog", "epilog", ""):
        sys.stderr.write(msg + "\n")
        sys.exit(0)
    sys.stdout.write(json.dumps({"format": 1, "phase": sub, "ok": False, "error": msg}) + "\n")
    sys.exit(1)


try:
    from shoal.errors import DistError, ShoalError
    from shoal.staging import privileged as priv
    from shoal.staging.base import (
        DEFAULT_NAMES,
        DEFAULT_STORE,
        EXPORTS,
        STAGE_ROOT,
        Context,
        Method,
        Sampler,
        Staged,
        cpu_seconds,
        load_state,
        loop_backing,
        loop_read_bytes,
        mounts_under,
        net_rx_bytes,
        net_tx_bytes,
        proc_io,
        remove_tree,
        save_state,
        unmount,
        used_bytes,
    )
    from shoal.staging.jobstep import do_job, do_workload
    from shoal.staging.record import base_record, emit, fail, node_name
    from shoal.staging.registry import get_method, method_names
except ImportError:
    if __name__ == "__main__":
        _lone_file()
    raise

SYSTEM_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]


def image_digest(ctx: "Context") -> "str | None":
    with contextlib.suppress(ShoalError):
        d = ctx.manifest().get("tree_digest")
        return d if isinstance(d, str) else None
    return None


# ---- state -------------------------------------------------------------------------------------


def baseline(ctx: "Context") -> "dict[str, Any]":
    # w0: wall clock too, so records of different nodes can be laid on one time axis
    return {"t0": time.monotonic(), "w0": time.time(), "rx0": net_rx_bytes(),
            "tx0": net_tx_bytes(), "used0": used_bytes(ctx.job_dir)}


def make_job_dir(ctx: "Context") -> "None":
    os.makedirs(ctx.stage_root, mode=0o1777, exist_ok=True)
    os.makedirs(ctx.job_dir, mode=0o700, exist_ok=True)


# ---- subcommands -------------------------------------------------------------------------------


def do_check(ctx: "Context", method: "Method") -> "dict[str, Any]":
    rec = base_record("check", ctx, method.name)
    try:
        method.check(ctx)
        make_job_dir(ctx)
        save_state(ctx, {"method": method.name, "baseline": baseline(ctx), "by": "step"})
        rec["ok"] = True
    except Exception as exc:  # every failure becomes this node's record
        fail(rec, exc)
    return rec


def do_stage(ctx: "Context", method: "Method", by: "str" = "step") -> "dict[str, Any]":
    rec = base_record("stage", ctx, method.name)
    rec["image_digest"] = image_digest(ctx)
    state = load_state(ctx)
    if state and state.get("by") == "prolog" and isinstance(state.get("record"), dict):
        # the Prolog (root) staged it already: report its record, from this job step
        prec = dict(state["record"])
        prec["reported_by"] = "step"
        return prec
    io0 = proc_io()
    cpu0 = cpu_seconds()
    try:
        if method.collective and state and "baseline" in state:
            # the collective copy ran between check and now: it belongs to staging
            base = state["baseline"]
        else:
            method.check(ctx)
            make_job_dir(ctx)
            base = baseline(ctx)
        save_state(ctx, {"method": method.name, "baseline": base, "by": by})
        rec["start"] = base["t0"]
        t_call = time.monotonic()
        with Sampler(ctx.job_dir).running() as sampler:
            staged = method.stage(ctx)
        end = time.monotonic()
        rec["stage_call_seconds"] = round(end - t_call, 6)  # the method's own work (mount, unpack)
        wall_end = time.time()
        io1 = proc_io()
        w0 = base.get("w0")
        rec.update({
            "ok": True, "staged": staged.path, "end": end,
            # named as in the job record (shoal.staging.record.STAGE_KEYS)
            "stage_start": w0 if isinstance(w0, float) else wall_end - (end - base["t0"]),
            "stage_end": wall_end,
            "stage_seconds": round(end - base["t0"], 6),
            "stage_bytes_from_storage": staged.storage_bytes_read,
            # never below 0: an interface removed meanwhile takes its counters with it (on a
            # shared host netns, as in the unit tests, other people's veths come and go)
            "bytes_net_rx": max(0, net_rx_bytes() - base["rx0"]),
            "bytes_net_tx": max(0, net_tx_bytes() - int(base.get("tx0") or 0)),
            "peak_bytes": max(0, sampler.peak - base["used0"]),
            "io_read_bytes": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
            "io_rchar": io1.get("rchar", 0) - io0.get("rchar", 0),
            "staged_by": by,
        })
        rec.update(staged.extra)
        if ctx.phases:  # sub-phases the method timed itself (shoal.staging.accounting.phase)
            rec["phases"] = ctx.phases
        # this step's CPU, plus what a collective step spent on this node (bcast's process)
        rec["stage_cpu_seconds"] = round(cpu_seconds() - cpu0 + float(
            staged.extra.get("collective_cpu_seconds") or 0), 4)
        save_state(ctx, {"method": method.name, "baseline": base, "by": by,
                         "staged": staged.path, "extra": staged.extra, "record": rec})
    except Exception as exc:
        fail(rec, exc)
        # never leave a half-staged image behind
        try:
            method.cleanup(ctx)
        except Exception as cexc:  # report, keep the first error
            rec["cleanup_error"] = f"{type(cexc).__name__}: {cexc}"
    return rec


def do_verify(ctx: "Context") -> "dict[str, Any]":
    state = load_state(ctx)
    rec = base_record("verify", ctx, state.get("method") if state else None)
    try:
        if not state or not state.get("staged"):
            raise DistError(f"image {ctx.image!r} is not staged on this node for job {ctx.job}",
                            "stage it first: shoal dist --method M IMAGE")
        want = image_digest(ctx)
        if want is None:
            raise DistError(f"the manifest of {ctx.image!r} has no tree_digest",
                            "re-export the image with a current shoal")
        from shoal.images.treedigest import tree_digest

        t0 = time.monotonic()
        try:
            got = tree_digest(state["staged"]).digest
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            # a damaged SquashFS (or tarball) mounts or unpacks, then fails on the first bad
            # block read: say that, not "[Errno 5] Input/output error"
            where = exc.filename or state["staged"]
            raise DistError(
                f"image {ctx.image!r} is corrupted: reading {where} in the staged tree failed "
                f"with an I/O error (its {state.get('method') or 'staged'} source on storage is "
                "damaged)", f"check the store: shoal image verify {ctx.image}; then re-export it",
            ) from None
        rec.update({"expected": want, "digest": got, "seconds": round(time.monotonic() - t0, 6)})
        rec["ok"] = got == want
        if not rec["ok"]:
            rec["error"] = (f"image {ctx.image!r} is corrupted: staged tree digest {got} differs "
                            f"from the manifest's {want}")
            rec["hint"] = "the image was corrupted in transit or on storage: shoal image verify"
    except Exception as exc:
        fail(rec, exc)
    return rec


def recorded_loops(job_dir: "str") -> "list[tuple[str, str | None]]":
    """(loop device, its backing file) recorded by stage in the job's state files."""
    out: "list[tuple[str, str | None]]" = []
    with contextlib.suppress(OSError):
        for name in os.listdir(job_dir):
            if name.endswith(".state.json"):
                with contextlib.suppress(OSError, ValueError), \
                        open(os.path.join(job_dir, name)) as f:
                    extra = json.load(f).get("extra") or {}
                if isinstance(extra.get("loop_device"), str):
                    out.append((extra["loop_device"], extra.get("loop_backing")))
    return out


def detach_loops(loops: "list[tuple[str, str | None]]") -> "None":
    """Detach recorded loop devices still bound to the file they were set up for."""
    from shoal.runner import run

    for dev, backing in loops:
        if _still_bound(dev, backing):
            run(["losetup", "-d", dev], check=False, timeout=30)


def sweep(job_dir: "str") -> "list[str]":
    """Unmount and remove everything under job_dir; return what could not be removed."""
    problems: "list[str]" = []
    loops = recorded_loops(job_dir)
    for m in sorted(mounts_under(job_dir), key=lambda m: m.target.count("/"), reverse=True):
        try:
            unmount(m.target, fuse=m.fstype.startswith("fuse"))
            if m.source.startswith("/dev/loop") and loop_backing(m.source):
                from shoal.runner import run

                run(["losetup", "-d", m.source], check=False, timeout=30)
        except Exception as exc:
            problems.append(f"mount {m.target}: {exc}")
    detach_loops(loops)
    try:
        if os.path.isdir(job_dir) and not os.path.islink(job_dir):
            for name in os.listdir(job_dir):
                remove_tree(os.path.join(job_dir, name))
        # the job's own directory sits in the root-owned /tmp/shoal the Prolog made: the Epilog
        # removes it; where no Prolog made it (a site without one) the job may
        with contextlib.suppress(PermissionError):
            remove_tree(job_dir)
    except Exception as exc:
        problems.append(f"{job_dir}: {exc}")
    return problems


def _still_bound(dev: "str", backing: "str | None") -> "bool":
    # another node or job may have taken the device number for another file since
    now = loop_backing(dev)
    return now is not None and (backing is None or now == backing)


def leftovers(ctx: "Context", loops: "list[tuple[str, str | None]]") -> "list[str]":
    left = [f"mount {m.target}" for m in mounts_under(ctx.job_dir)]
    left += [f"loop device {d} -> {b}" for d, b in loops if _still_bound(d, b)]
    if os.path.lexists(ctx.job_dir):
        left += [f"file {os.path.join(ctx.job_dir, n)}" for n in sorted(os.listdir(ctx.job_dir))]
    return left


def do_cleanup(ctx: "Context", image: "str | None") -> "dict[str, Any]":
    rec = base_record("cleanup", ctx, None)
    rec["image"] = image
    errors: "list[str]" = []
    loops: "list[tuple[str, str | None]]" = []
    deferred: "list[str]" = []
    figures: "dict[str, Any]" = {}
    if os.path.isdir(ctx.job_dir):
        images = [image] if image else sorted(
            n[: -len(".state.json")] for n in os.listdir(ctx.job_dir) if n.endswith(".state.json"))
        for name in images:
            ictx = Context(ctx.job, name, ctx.store, ctx.options, ctx.stage_root)
            state = load_state(ictx) or {}
            mname = state.get("method")
            extra = state.get("extra") or {}
            ictx.staged_extra = extra
            if not mname:
                continue
            rec["method"] = mname if rec["method"] in (None, mname) else "several"
            if state.get("by") == "prolog":
                deferred.append(name)  # the Epilog (root) unmounts what the Prolog mounted
                continue
            if isinstance(extra.get("loop_device"), str):
                loops.append((extra["loop_device"], extra.get("loop_backing")))
            method = get_method(mname)
            try:
                figures[name] = method.cleanup(ictx)
                os.unlink(ictx.state_file)
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        if not image:
            errors += sweep(ctx.job_dir)
    with contextlib.suppress(priv.Refused):
        deferred += [n for n in priv.root_job_images(ctx.job)
                     if n not in deferred and (image is None or n == image)]
    # the job's own directory only (/tmp/shoal stays: the Prolog trusts it as node-init made it)
    with contextlib.suppress(OSError):
        os.rmdir(ctx.job_dir)
    rec["figures"] = figures
    rec["deferred_to_epilog"] = deferred
    left: "list[str]" = []
    if image:
        ictx = Context(ctx.job, image, ctx.store, ctx.options, ctx.stage_root)
        left += [f"mount {m.target}" for m in mounts_under(ictx.staged_dir)]
        left += [f"loop device {d}" for d, b in loops if _still_bound(d, b)]
        if os.path.lexists(ictx.staged_dir) and image not in deferred:
            left.append(f"file {ictx.staged_dir}")
    else:
        left = leftovers(ctx, loops)
    rec["left"] = left
    rec["ok"] = not errors and not rec["left"]
    if errors:
        rec["error"] = "; ".join(errors)
    elif rec["left"]:
        rec["error"] = "left on the node: " + ", ".join(rec["left"])
    return rec


def do_bcast(ctx: "Context", method: "Method", nodes: "list[str]", *, fanout: "int", chunk: "int",
             port: "int", rate: "float", timeout: "float") -> "dict[str, Any]":
    """This node's part of the bcast methods' collective step (shoal.staging.bcast)."""
    from shoal.staging import bcast
    from shoal.staging.methods.bcast import artifact_sha256, record_path

    rec = base_record("bcast", ctx, method.name)
    try:
        if method.collective != "bcast":
            raise DistError(f"method {method.name} does not broadcast", "use bcast or bcast-squashfs")
        if not os.path.isdir(ctx.job_dir):
            raise DistError(f"{ctx.job_dir} missing: the broadcast runs after `check`",
                            "run the agent's check step on every node first")
        me = node_name()
        if me not in nodes:
            raise DistError(f"this node ({me}) is not in the broadcast's node list", None)
        rank = nodes.index(me)
        kind = method.artifact
        if ctx.artifact_bytes(kind) <= 0:
            raise DistError(f"the manifest of {ctx.image!r} has no size for "
                            f"{ctx.artifact_name(kind)}", "re-export the image")
        token = os.environ.get(bcast.TOKEN_ENV, "").encode()
        step = os.environ.get("SLURM_STEP_ID", "0")
        b = bcast.Broadcast(
            nodes, rank, ctx.local_artifact(kind), ctx.artifact_bytes(kind),
            artifact_sha256(ctx, kind), token, time.monotonic() + timeout,
            src=ctx.artifact(kind) if rank == 0 else None, chunk=chunk, fanout=fanout,
            port=port or bcast.default_port(ctx.job, step), rate=rate,
            unpack_dir=ctx.staged_dir if kind == "tar" else None, keep_dest=kind != "tar")
        out = b.run()
        rec.update(out)
        tmp = f"{record_path(ctx)}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.replace(tmp, record_path(ctx))
        if not rec["ok"]:
            # a partial tree is removed here; the node's cleanup removes the rest
            method.cleanup(ctx)
    except (bcast.BcastError, ShoalError) as exc:
        fail(rec, exc if isinstance(exc, ShoalError) else DistError(str(exc)))
    except Exception as exc:
        fail(rec, exc)
    return rec


def do_registry_push(ctx: "Context", url: "str") -> "dict[str, Any]":
    """Push the store's tarball of ctx.image to the registry at URL (run where it is writable)."""
    from shoal.staging import oci
    from shoal.staging.methods.bcast import artifact_sha256

    rec = base_record("registry-push", ctx, "registry")
    try:
        rec.update(oci.push(url, ctx.image, ctx.artifact("tar"), artifact_sha256(ctx, "tar")))
        rec["ok"] = True
    except oci.RegistryError as exc:
        fail(rec, DistError(str(exc), "is the registry running? (shoal cluster status)"))
    except Exception as exc:
        fail(rec, exc)
    return rec


def _env_id(name: "str") -> "int | None":
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def prolog_stage(store: "str", job: "str", image: "str", method: "Method") -> "dict[str, Any]":
    """Mount IMAGE for JOB as root, onto a directory root made under privileged.MOUNT_ROOT.

    Directly when this process may mount (a site's Prolog, real root), else through the mount
    broker (a virtual cluster's node root has no CAP_SYS_ADMIN; the broker re-reads the request
    from slurmctld and acts only on what the job record says).
    """
    ctx = Context(job, image, store, {}, priv.MOUNT_ROOT)
    rec = base_record("stage", ctx, method.name)
    rec["image_digest"] = image_digest(ctx)
    rx0, t0, w0 = net_rx_bytes(), time.monotonic(), time.time()
    try:
        src = priv.store_artifact(store, image, EXPORTS[method.artifact],
                                  DEFAULT_NAMES[method.artifact].format(image=image))
        dest = priv.mount_dir(job, image)
        if priv.can_mount():
            staged = method.root_mount(src, dest)
            extra = dict(staged.extra)
        else:
            answer = priv.broker_call({"op": "mount", "job": job})
            extra = {k: answer[k] for k in ("loop_device", "loop_backing", "loop_read_base",
                                            "fuse_pid") if k in answer}
            staged = Staged(dest, extra=extra)
            extra["mounted_by"] = "broker"
        end = time.monotonic()
        base = extra.get("loop_read_base") or 0
        dev = extra.get("loop_device")
        read = (loop_read_bytes(dev) or 0) - base if isinstance(dev, str) else 0
        rec.update({
            # the stage record's names (shoal.staging.record.STAGE_KEYS)
            "ok": True, "staged": dest, "start": t0, "end": end, "stage_start": w0,
            "stage_end": time.time(), "stage_seconds": round(end - t0, 6),
            "stage_bytes_from_storage": read, "bytes_net_rx": net_rx_bytes() - rx0,
            "peak_bytes": 0, "staged_by": "prolog",
        })
        rec.update(extra)
    except priv.Refused as exc:
        rec["error"], rec["hint"] = str(exc), "ask for a plain image name of the admin's store"
        extra = {}
    except Exception as exc:
        fail(rec, exc)
        extra = {}
    return {"method": method.name, "by": "prolog", "staged": rec.get("staged"), "extra": extra,
            "record": rec}


def do_prolog(store: "str", stage_root: "str") -> "int":
    """Slurm Prolog (root, every node of every job): the job's user area, and the mount the job
    asked for in its comment. Always exits 0: a failing Prolog would drain the node; a failed
    staging is reported by the job's own ``stage`` step from the record left here."""
    try:
        job = priv.job_id(os.environ.get("SLURM_JOB_ID"))
    except priv.Refused:
        return 0
    uid = _env_id("SLURM_JOB_UID")
    gid = _env_id("SLURM_JOB_GID")
    if uid is None:
        return 0
    try:
        priv.user_job_dir(stage_root, job, uid, gid if gid is not None else uid)
    except (priv.Refused, OSError) as exc:
        sys.stderr.write(f"shoal prolog: job {job}: user area: {exc}\n")
    try:
        req = priv.parse_comment(os.environ.get("SLURM_JOB_COMMENT"))
        if req is None:
            return 0
        method = get_method(req[0])
        if not method.prolog:
            return 0  # asked for so the mount broker accepts the job's own step (sbcast-squashfs)
        state = prolog_stage(store, job, req[1], method)
        priv.save_root_state(job, req[1], state)
        sys.stderr.write(f"shoal prolog: job {job}: {json.dumps(state['record'])}\n")
    except Exception as exc:  # never fail the Prolog (it would drain the node)
        sys.stderr.write(f"shoal prolog: job {job}: {type(exc).__name__}: {exc}\n")
    return 0


def epilog_unmount(job: "str") -> "list[str]":
    """Undo the Prolog's mounts of JOB (root-owned MOUNT_ROOT/JOB: no user path involved)."""
    problems: "list[str]" = []
    jdir = os.path.join(priv.MOUNT_ROOT, job)  # set from --mount-root
    if not os.path.isdir(jdir) or os.path.islink(jdir):
        return problems
    if not priv.can_mount() and os.path.exists(priv.BROKER_SOCKET):
        try:
            priv.broker_call({"op": "umount", "job": job})
        except priv.Refused as exc:
            problems.append(str(exc))
    else:
        for image in priv.root_job_images(job):
            state = priv.load_root_state(job, image) or {}
            with contextlib.suppress(DistError):
                method = get_method(str(state.get("method")))
                try:
                    method.root_unmount(os.path.join(jdir, image), state.get("extra") or {})
                except Exception as exc:
                    problems.append(f"{image}: {exc}")
    if mounts_under(jdir):
        problems.append(f"{jdir} still has mounts")
        return problems
    remove_tree(jdir)
    return problems


def do_epilog(stage_root: "str") -> "int":
    try:
        job = priv.job_id(os.environ.get("SLURM_JOB_ID"))
    except priv.Refused:
        return 0
    uid = _env_id("SLURM_JOB_UID")
    gid = _env_id("SLURM_JOB_GID")
    problems: "list[str]" = []
    try:
        problems += epilog_unmount(job)
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    if uid is not None:
        try:
            problems += priv.remove_user_job_dir(stage_root, job, uid,
                                                 gid if gid is not None else uid, sweep)
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
    if problems:
        sys.stderr.write(f"shoal epilog: job {job}: {'; '.join(problems)}\n")
    return 0


def main(argv: "list[str] | None" = None) -> "int":
    ap = argparse.ArgumentParser(prog="nodeagent", description="shoal node agent")
    ap.add_argument("--store", default=DEFAULT_STORE)
    ap.add_argument("--stage-root", default=STAGE_ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--mount-root", default=priv.MOUNT_ROOT, help=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd")
    sub.required = True  # add_subparsers(required=) is Python 3.7+
    for name in ("check", "stage", "verify", "cleanup"):
        p = sub.add_parser(name)
        p.add_argument("--job", default=os.environ.get("SLURM_JOB_ID"))
        p.add_argument("--image", required=name not in ("cleanup",))
        if name in ("check", "stage"):
            p.add_argument("--method", required=True)
    w = sub.add_parser("workload", help="run a workload in the staged image on this node")
    w.add_argument("--job", default=os.environ.get("SLURM_JOB_ID"))
    w.add_argument("--image", required=True)
    w.add_argument("--workload", required=True)
    w.add_argument("--timeout", type=float, default=600.0)
    bc = sub.add_parser("bcast", help="this node's part of a pipelined broadcast (srun, all nodes)")
    bc.add_argument("--job", default=os.environ.get("SLURM_JOB_ID"))
    bc.add_argument("--image", required=True)
    bc.add_argument("--method", required=True)
    bc.add_argument("--nodes", required=True, help="comma-separated, the first one is the root")
    bc.add_argument("--fanout", type=int, default=1, help="children per node (1: a chain)")
    bc.add_argument("--chunk", type=int, default=512 * 1024, help="bytes per chunk")
    bc.add_argument("--port", type=int, default=0, help="TCP port (default: from job and step)")
    bc.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: pacing
    bc.add_argument("--timeout", type=float, default=600.0)
    rp = sub.add_parser("registry-push", help="push a store image to a writable registry")
    rp.add_argument("--image", required=True)
    rp.add_argument("--registry", required=True, help="http://HOST:PORT")
    j = sub.add_parser("job", help="one study run from a batch script (shoal.staging.jobstep)")
    j.add_argument("--method", required=True)
    j.add_argument("--image", required=True)
    j.add_argument("--workload", required=True)
    j.add_argument("--timeout", type=float, default=600.0, help="seconds for all steps")
    j.add_argument("--fanout", type=int, default=8, help="sbcast fan-out")
    j.add_argument("--compress", action="store_true", help="sbcast --compress")
    j.add_argument("--bcast-fanout", type=int, default=1, help="bcast: children per node")
    j.add_argument("--chunk", type=int, default=512 * 1024, help="bcast: bytes per chunk")
    sub.add_parser("prolog")
    sub.add_parser("epilog")
    sub.add_parser("methods")
    args = ap.parse_args(argv)
    priv.MOUNT_ROOT = args.mount_root
    if args.cmd == "job":
        # the steps it starts on the nodes run this same bundle
        return do_job(agent=os.path.abspath(sys.argv[0]), store=args.store,
                      method_name=args.method, image=args.image, workload=args.workload,
                      timeout=args.timeout, fanout=args.fanout, compress=args.compress,
                      bcast_fanout=args.bcast_fanout, chunk=args.chunk)
    if args.cmd in ("prolog", "epilog"):
        # slurmd starts the Prolog/Epilog with a bare environment: losetup, mount and umount
        # live in the sbin directories
        have = os.environ.get("PATH", "").split(":")
        os.environ["PATH"] = ":".join(dict.fromkeys([p for p in have if p] + SYSTEM_PATH))
    if args.cmd == "prolog":
        return do_prolog(args.store, args.stage_root)
    if args.cmd == "epilog":
        return do_epilog(args.stage_root)
    if args.cmd == "methods":
        emit({"methods": method_names()})
        return 0
    if args.cmd == "registry-push":
        rec = do_registry_push(Context("push", args.image, args.store), args.registry)
        emit(rec)
        return 0 if rec["ok"] else 1
    if not args.job:
        ap.error("no --job and no SLURM_JOB_ID")
    ctx = Context(str(args.job), args.image or "", args.store, {}, args.stage_root)
    # the node's interface (and storage connection) counters around every step: the job step
    # adds them up over the whole run (shoal.staging.accounting)
    from shoal.staging.accounting import counters

    c0 = counters()
    if args.cmd in ("check", "stage"):
        try:
            method = get_method(args.method)
        except DistError as exc:
            emit(fail(base_record(args.cmd, ctx, args.method), exc))
            return 1
        rec = do_check(ctx, method) if args.cmd == "check" else do_stage(ctx, method)
    elif args.cmd == "bcast":
        try:
            method = get_method(args.method)
        except DistError as exc:
            emit(fail(base_record(args.cmd, ctx, args.method), exc))
            return 1
        rec = do_bcast(ctx, method, [n for n in args.nodes.split(",") if n],
                       fanout=args.fanout, chunk=args.chunk, port=args.port, rate=args.rate,
                       timeout=args.timeout)
    elif args.cmd == "verify":
        rec = do_verify(ctx)
    elif args.cmd == "workload":
        rec = do_workload(ctx, args.workload, args.timeout)
    else:
        rec = do_cleanup(ctx, args.image)
    rec["c0"], rec["c1"] = c0, counters()
    emit(rec)
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
