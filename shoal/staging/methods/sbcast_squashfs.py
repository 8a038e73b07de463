"""sbcast-squashfs: sbcast the SquashFS file to node-local storage, then loop-mount it there.

Needs root on the node for the mount (the Prolog cannot help: the file arrives after it ran).
"""

import os
from typing import Any

from shoal.errors import DistError
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
    phase = "mount"
    collective = "sbcast"
    privileged = True
    description = "sbcast the SquashFS file to node-local storage, loop-mount it there (root)"

    def check(self, ctx: "Context") -> "None":
        require_root(self.name)
        check_space(ctx, self.local_bytes_needed(ctx))

    def local_bytes_needed(self, ctx: "Context") -> "int":
        return ctx.artifact_bytes("sqfs")

    def stage(self, ctx: "Context") -> "Staged":
        local = ctx.local_artifact("sqfs")
        if not os.path.isfile(local):
            raise DistError(f"sbcast did not deliver {local} to this node",
                            "look at the sbcast error in the driver's output")
        staged = loop_mount(local, ctx.staged_dir)
        staged.storage_bytes_read = 0  # the loop device reads the node-local copy
        staged.extra["broadcast_bytes"] = os.path.getsize(local)
        return staged

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        m = mount_at(ctx.staged_dir)
        out = loop_unmount(ctx.staged_dir, m.source if m else None)
        out.pop("mount_bytes_read", None)  # node-local reads, not shared storage
        remove_tree(ctx.local_artifact("sqfs"))
        return out
