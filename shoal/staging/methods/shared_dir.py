"""shared-dir: run straight from the unpacked image directory on shared storage (nothing local)."""

import os

from shoal.errors import DistError
from shoal.staging.base import Context, Method, Staged, register, require_exists


@register("shared-dir")
class SharedDir(Method):
    artifact = "dir"
    description = "use the unpacked image directory on shared storage in place"

    def check(self, ctx: "Context") -> "None":
        src = ctx.artifact("dir")
        require_exists(src, ctx)
        if not os.path.isdir(os.path.join(src, "etc")):
            raise DistError(f"{src} is not an image directory (no etc/)", "re-export the image")

    def stage(self, ctx: "Context") -> "Staged":
        return Staged(ctx.artifact("dir"))
