"""squashfs-kernel: loop-mount the image's SquashFS file, which stays on shared storage.

Needs root on the node: the agent mounts directly when the step runs as root, or the Slurm Prolog
does it (``nodeagent.py prolog``) from the job's request; otherwise check fails before anything.
"""

import os
from typing import Any

from shoal.errors import DistError
from shoal.runner import run
from shoal.staging.base import (
    Context,
    Method,
    Staged,
    loop_backing,
    loop_read_bytes,
    mount_at,
    register,
    require_exists,
    require_root,
    unmount,
)


def loop_mount(src: "str", dest: "str") -> "Staged":
    os.makedirs(dest, exist_ok=True)
    # a loop device of our own: `mount -o loop` would reuse one already bound to the same file,
    # which on nodes sharing a kernel (the virtual cluster) mixes the nodes' read counters and
    # keeps the device alive after this node's unmount
    dev = run(["losetup", "--find", "--show", "--read-only", src], timeout=60,
              what=f"losetup {src}").stdout.strip()
    # a reused loop device keeps its counters from earlier files: count from here
    base = loop_read_bytes(dev) or 0
    try:
        run(["mount", "-t", "squashfs", "-o", "ro,nosuid,nodev", dev, dest], timeout=120,
            what=f"mounting {src} ({dev})")
    except BaseException:
        run(["losetup", "-d", dev], check=False, timeout=30)
        raise
    if mount_at(dest) is None:
        raise DistError(f"mount of {src} on {dest} did not appear", None)
    extra = {"loop_device": dev, "loop_backing": loop_backing(dev), "loop_read_base": base}
    return Staged(dest, storage_bytes_read=(loop_read_bytes(dev) or 0) - base, extra=extra)


def loop_unmount(dest: "str", dev: "str | None", read_base: "int" = 0) -> "dict[str, Any]":
    out: "dict[str, Any]" = {}
    if dev:
        # what the job read through the mount over its whole life (the workload's real reads)
        now = loop_read_bytes(dev)
        out["mount_bytes_read"] = None if now is None else now - read_base
    unmount(dest)
    if os.path.isdir(dest):
        os.rmdir(dest)
    if dev and loop_backing(dev):
        run(["losetup", "-d", dev], timeout=30, what=f"losetup -d {dev}")
    return out


@register("squashfs-kernel")
class SquashfsKernel(Method):
    artifact = "sqfs"
    phase = "mount"
    privileged = True
    description = "loop-mount the SquashFS file on shared storage (root or Prolog)"

    def check(self, ctx: "Context") -> "None":
        require_exists(ctx.artifact("sqfs"), ctx)
        require_root(self.name)

    def stage(self, ctx: "Context") -> "Staged":
        return loop_mount(ctx.artifact("sqfs"), ctx.staged_dir)

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        m = mount_at(ctx.staged_dir)
        return loop_unmount(ctx.staged_dir, m.source if m else None,
                            int(ctx.staged_extra.get("loop_read_base") or 0))
