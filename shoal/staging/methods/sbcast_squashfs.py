"""sbcast-squashfs: sbcast the SquashFS file to node-local storage, then loop-mount it there.

The mount needs CAP_SYS_ADMIN on the node, and the Prolog cannot help: the file arrives after it
ran. Real root (a site's job step as root) mounts directly. Anyone else, including a virtual
cluster's confined node root, hands the broadcast copy, as an open descriptor, to shoal's mount
broker (shoal/cluster/broker.py), which mounts it at /run/shoal/jobs/<job>/<image> only if the
job's comment asked for it and the copy is byte for byte the admin's store file (and then makes it
root-owned and read-only, so nobody changes what the kernel parses).
"""

import os
from typing import Any

from shoal.errors import DistError
from shoal.staging.base import (
    Context,
    Method,
    Staged,
    check_space,
    register,
    remove_tree,
)
from shoal.staging.methods.squashfs_kernel import local_mount, local_unmount, require_local_mount


@register("sbcast-squashfs")
class SbcastSquashfs(Method):
    artifact = "sqfs"
    phase = "mount"
    collective = "sbcast"
    privileged = True
    description = "sbcast the SquashFS file to node-local storage, loop-mount it there (root)"

    def check(self, ctx: "Context") -> "None":
        require_local_mount(self.name)
        check_space(ctx, self.local_bytes_needed(ctx))

    def local_bytes_needed(self, ctx: "Context") -> "int":
        return ctx.artifact_bytes("sqfs")

    def stage(self, ctx: "Context") -> "Staged":
        local = ctx.local_artifact("sqfs")
        if not os.path.isfile(local):
            raise DistError(f"sbcast did not deliver {local} to this node",
                            "look at the sbcast error in the driver's output")
        size = os.path.getsize(local)
        staged = local_mount(ctx, local)
        staged.storage_bytes_read = 0  # the loop device reads the node-local copy
        staged.extra["broadcast_bytes"] = size
        return staged

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        out = local_unmount(ctx)
        remove_tree(ctx.local_artifact("sqfs"))
        return out
