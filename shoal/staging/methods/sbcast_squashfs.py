"""sbcast-squashfs: sbcast the SquashFS file to node-local storage, then loop-mount it there.

The mount needs CAP_SYS_ADMIN on the node, and the Prolog cannot help: the file arrives after it
ran. Real root (a site's job step as root) mounts directly. Anyone else, including a virtual
cluster's confined node root, hands the broadcast copy, as an open descriptor, to shoal's mount
broker (shoal/cluster/broker.py), which mounts it at /run/shoal/jobs/<job>/<image> only if the
job's comment asked for it and the copy is byte for byte the admin's store file (and then makes it
root-owned and read-only, so nobody changes what the kernel parses).
"""

from __future__ import annotations

import os
from typing import Any

from shoal.errors import DistError, PrivilegeError
from shoal.staging import privileged as priv
from shoal.staging.base import (
    Context,
    Method,
    Staged,
    check_space,
    mount_at,
    register,
    remove_tree,
    require_root,
)
from shoal.staging.methods.squashfs_kernel import loop_mount, loop_unmount


@register("sbcast-squashfs")
class SbcastSquashfs(Method):
    artifact = "sqfs"
    collective = "sbcast"
    privileged = True
    description = "sbcast the SquashFS file to node-local storage, loop-mount it there (root)"

    def check(self, ctx: Context) -> None:
        if not priv.can_mount() and not os.path.exists(priv.BROKER_USER_SOCKET):
            require_root(self.name)
            raise PrivilegeError(
                f"method {self.name}: this node's root may not mount and there is no mount broker",
                "run on a site whose job steps are real root, or use squashfs-kernel")
        check_space(ctx, self.local_bytes_needed(ctx))

    def local_bytes_needed(self, ctx: Context) -> int:
        return ctx.artifact_bytes("sqfs")

    def stage(self, ctx: Context) -> Staged:
        local = ctx.local_artifact("sqfs")
        if not os.path.isfile(local):
            raise DistError(f"sbcast did not deliver {local} to this node",
                            "look at the sbcast error in the driver's output")
        size = os.path.getsize(local)
        if priv.can_mount():
            staged = loop_mount(local, ctx.staged_dir)
        else:
            fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                answer = priv.broker_call({"op": "mount-local", "job": ctx.job,
                                           "image": ctx.image}, priv.BROKER_USER_SOCKET, fd=fd)
            except priv.Refused as exc:
                raise DistError(str(exc), "ask for the method in the job comment "
                                          "(shoal run does)") from None
            finally:
                os.close(fd)
            extra: dict[str, Any] = {k: answer[k] for k in
                                     ("loop_device", "loop_backing", "loop_read_base")
                                     if k in answer}
            extra["mounted_by"] = "broker"
            staged = Staged(str(answer["staged"]), extra=extra)
        staged.storage_bytes_read = 0  # the loop device reads the node-local copy
        staged.extra["broadcast_bytes"] = size
        return staged

    def cleanup(self, ctx: Context) -> dict[str, Any]:
        if ctx.staged_extra.get("mounted_by") == "broker":
            try:
                priv.broker_call({"op": "umount-local", "job": ctx.job, "image": ctx.image},
                                 priv.BROKER_USER_SOCKET)
            except priv.Refused as exc:
                raise DistError(str(exc), "the job's Epilog unmounts it") from None
            remove_tree(ctx.local_artifact("sqfs"))
            return {}
        m = mount_at(ctx.staged_dir)
        out = loop_unmount(ctx.staged_dir, m.source if m else None)
        out.pop("mount_bytes_read", None)  # node-local reads, not shared storage
        remove_tree(ctx.local_artifact("sqfs"))
        return out
