"""squashfs-kernel: loop-mount the image's SquashFS file, which stays on shared storage.

Needs root on the node: the agent mounts directly when the step runs as root, or the Slurm Prolog
does it (``nodeagent.py prolog``) from the job's request; otherwise check fails before anything.
"""

import os
from typing import Any

from shoal.errors import DistError, PrivilegeError
from shoal.runner import run
from shoal.staging import privileged as priv
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


# ---- a broadcast copy (sbcast-squashfs, bcast-squashfs): mounted after the Prolog ran -----------


def require_local_mount(method: "str") -> "None":
    """check(): fail up front unless this step may mount or a mount broker can do it."""
    if priv.can_mount() or os.path.exists(priv.BROKER_USER_SOCKET):
        return
    require_root(method)
    raise PrivilegeError(
        f"method {method}: this node's root may not mount and there is no mount broker",
        "run on a site whose job steps are real root, or use squashfs-kernel")


def local_mount(ctx: "Context", local: "str") -> "Staged":
    """Loop-mount the node-local copy LOCAL of the image's SquashFS.

    Real root mounts it at the job's staged_dir. Anyone else (a user's job step, a virtual
    cluster's confined node root) hands it, as an open descriptor, to shoal's mount broker,
    which mounts it at /run/shoal/jobs/<job>/<image> only if the job's comment asked for this
    method and image and the copy is byte for byte the admin's store file; it then makes the
    copy root-owned and read-only, so nobody changes what the kernel parses.
    """
    if priv.can_mount():
        return loop_mount(local, ctx.staged_dir)
    fd = os.open(local, priv.FILE_NOFOLLOW)
    try:
        answer = priv.broker_call({"op": "mount-local", "job": ctx.job, "image": ctx.image},
                                  priv.BROKER_USER_SOCKET, fd=fd)
    except priv.Refused as exc:
        raise DistError(str(exc), "ask for the method in the job comment (shoal run does)") from None
    finally:
        os.close(fd)
    extra: "dict[str, Any]" = {k: answer[k] for k in ("loop_device", "loop_backing", "loop_read_base")
                             if k in answer}
    extra["mounted_by"] = "broker"
    return Staged(str(answer["staged"]), extra=extra)


def local_unmount(ctx: "Context") -> "dict[str, Any]":
    """Undo local_mount (the copy itself is the caller's to remove)."""
    if ctx.staged_extra.get("mounted_by") == "broker":
        try:
            priv.broker_call({"op": "umount-local", "job": ctx.job, "image": ctx.image},
                             priv.BROKER_USER_SOCKET)
        except priv.Refused as exc:
            raise DistError(str(exc), "the job's Epilog unmounts it") from None
        return {}
    m = mount_at(ctx.staged_dir)
    out = loop_unmount(ctx.staged_dir, m.source if m else None)
    out.pop("mount_bytes_read", None)  # node-local reads, not shared storage
    return out


@register("squashfs-kernel")
class SquashfsKernel(Method):
    artifact = "sqfs"
    phase = "mount"
    privileged = True
    prolog = True
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

    def root_mount(self, src: "str", dest: "str") -> "Staged":
        return loop_mount(src, dest)

    def root_unmount(self, dest: "str", extra: "dict[str, Any]") -> "dict[str, Any]":
        m = mount_at(dest)
        return loop_unmount(dest, m.source if m else None, int(extra.get("loop_read_base") or 0))
