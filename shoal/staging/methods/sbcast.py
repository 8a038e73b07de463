"""sbcast: Slurm's sbcast copies the tarball to node-local storage (fan-out tree), then unpack.

The copy is the driver's collective step (``sbcast -f [--fanout=K] [--compress] SRC DEST``, run
once from the allocation's submit side); the node reads nothing from shared storage.
"""

import os
from typing import Any

from shoal.errors import DistError
from shoal.staging.base import (
    Context,
    Method,
    Staged,
    check_space,
    image_bytes,
    register,
    remove_tree,
)
from shoal.staging.methods.untar import unpack


@register("sbcast")
class Sbcast(Method):
    artifact = "tar"
    collective = "sbcast"
    description = "sbcast the tarball to node-local storage, unpack there"

    def check(self, ctx: "Context") -> "None":
        check_space(ctx, self.local_bytes_needed(ctx))

    def local_bytes_needed(self, ctx: "Context") -> "int":
        # the tarball and the tree are both on the node until the tarball is removed
        return image_bytes(ctx) + ctx.artifact_bytes("tar")

    def stage(self, ctx: "Context") -> "Staged":
        local = ctx.local_artifact("tar")
        if not os.path.isfile(local):
            raise DistError(f"sbcast did not deliver {local} to this node",
                            "look at the sbcast error in the driver's output")
        size = os.path.getsize(local)
        unpack(local, ctx.staged_dir)
        os.unlink(local)
        return Staged(ctx.staged_dir, storage_bytes_read=0, extra={"broadcast_bytes": size})

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        remove_tree(ctx.staged_dir)
        remove_tree(ctx.local_artifact("tar"))
        return {}
