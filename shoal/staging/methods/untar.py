"""untar: read the image tarball from shared storage and unpack it into node-local tmpfs."""

import os
from typing import Any

from shoal.runner import run
from shoal.staging.base import (
    Context,
    Method,
    Staged,
    check_space,
    image_bytes,
    register,
    remove_tree,
    require_exists,
)

UNPACK_TIMEOUT = 3600.0


def unpack(tarball: "str", dest: "str") -> "None":
    os.makedirs(dest, exist_ok=True)
    # store tarballs (like ch-convert's) hold "./..." paths: no top-level directory to strip. As
    # root, tar keeps owners and modes (image files stay root-owned); as a user it cannot and won't.
    run(["tar", "--numeric-owner", "-x", "-z", "-f", tarball, "-C", dest], timeout=UNPACK_TIMEOUT,
        what=f"unpacking {tarball}")


@register("untar")
class Untar(Method):
    artifact = "tar"
    description = "read the tarball from shared storage, unpack into node-local tmpfs"

    def check(self, ctx: "Context") -> "None":
        require_exists(ctx.artifact("tar"), ctx)
        check_space(ctx, self.local_bytes_needed(ctx))

    def local_bytes_needed(self, ctx: "Context") -> "int":
        return image_bytes(ctx)

    def stage(self, ctx: "Context") -> "Staged":
        src = ctx.artifact("tar")
        unpack(src, ctx.staged_dir)
        # tar (through gzip) reads the whole file: that is what this node asked of shared storage
        return Staged(ctx.staged_dir, storage_bytes_read=os.path.getsize(src))

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        remove_tree(ctx.staged_dir)
        return {}
