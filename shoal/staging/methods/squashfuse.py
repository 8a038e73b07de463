"""squashfuse: FUSE-mount the SquashFS file on shared storage, unprivileged.

The squashfuse daemon outlives the agent's job step: with proctrack/linuxproc it is reparented
and left alone; on a site with proctrack/cgroup Slurm kills it at the end of the step, so there
the mount belongs in the same step as the program (as ``ch-run image.sqfs`` does it).
"""

import os
import shutil
from typing import Any

from shoal.errors import DependencyError, DistError
from shoal.runner import run
from shoal.staging.base import Context, Method, Staged, mount_at, register, require_exists, unmount


def fuse_pid(mountpoint: "str") -> "int | None":
    """The squashfuse process serving mountpoint (found by its command line)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"squashfuse" and \
                mountpoint.encode() in argv[1:]:
            return int(entry)
    return None


def proc_figures(pid: "int") -> "dict[str, int]":
    out: "dict[str, int]" = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("rchar", "read_bytes"):
                    out[k] = int(v)
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return out


ROOT_FUSE_OPTIONS = "ro,allow_other,nosuid,nodev"


@register("squashfuse")
class Squashfuse(Method):
    artifact = "sqfs"
    prolog = True
    phase = "mount"
    description = "FUSE-mount the SquashFS file on shared storage (unprivileged)"

    def check(self, ctx: "Context") -> "None":
        require_exists(ctx.artifact("sqfs"), ctx)
        if shutil.which("squashfuse") is None:
            raise DependencyError("squashfuse not found on the node", "install squashfuse")
        if not os.path.exists("/dev/fuse"):
            raise DistError("/dev/fuse missing on the node", "load the fuse module")

    def stage(self, ctx: "Context") -> "Staged":
        src = ctx.artifact("sqfs")
        os.makedirs(ctx.staged_dir, exist_ok=True)
        run(["squashfuse", src, ctx.staged_dir], timeout=120, what=f"squashfuse {src}")
        if mount_at(ctx.staged_dir) is None:
            raise DistError(f"squashfuse did not mount {src} on {ctx.staged_dir}", None)
        pid = fuse_pid(ctx.staged_dir)
        extra: "dict[str, Any]" = {"fuse_pid": pid}
        figs = proc_figures(pid) if pid else {}
        return Staged(ctx.staged_dir, storage_bytes_read=figs.get("rchar", 0),
                      extra=dict(extra, fuse_rss_bytes=figs.get("VmRSS")))

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        out: "dict[str, Any]" = {}
        pid = fuse_pid(ctx.staged_dir)
        if pid:
            figs = proc_figures(pid)
            # squashfuse reads the file on behalf of the job: its rchar is the job's shared reads
            out["mount_bytes_read"] = figs.get("rchar")
            out["fuse_peak_rss_bytes"] = figs.get("VmHWM")
        unmount(ctx.staged_dir, fuse=True)
        if os.path.isdir(ctx.staged_dir):
            os.rmdir(ctx.staged_dir)
        return out

    def root_mount(self, src: "str", dest: "str") -> "Staged":
        # root's FUSE mount: other users may read it (allow_other), and like every mount root
        # makes for a job it honours no setuid bit or device file of the image
        run(["squashfuse", "-o", ROOT_FUSE_OPTIONS, src, dest], timeout=120,
            what=f"squashfuse {src}")
        if mount_at(dest) is None:
            raise DistError(f"squashfuse did not mount {src} on {dest}", None)
        return Staged(dest, extra={"fuse_pid": fuse_pid(dest)})

    def root_unmount(self, dest: "str", extra: "dict[str, Any]") -> "dict[str, Any]":
        unmount(dest, fuse=True)
        if os.path.isdir(dest):
            os.rmdir(dest)
        return {}
