"""bcast, bcast-squashfs: a pipelined broadcast among the job's nodes (shoal.staging.bcast).

The copy is the driver's collective step: one ``srun`` of the agent's ``bcast`` subcommand over
the allocation; the first node reads the artifact from shared storage once and every node
forwards chunks down a chain (or a tree of the chosen fan-out) while it writes them to node-local
memory. ``bcast`` unpacks the tarball as it streams (the tarball itself is dropped once the node's
subtree is done); ``bcast-squashfs`` keeps the SquashFS file and loop-mounts it in ``stage``
(root, like sbcast-squashfs: the file arrives after any Prolog ran). ``stage`` only takes what the
broadcast left: its record (``<image>.bcast.json``, checked against the store's manifest once
more) and the unpacked tree or the file.
"""

import json
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
    require_exists,
)
from shoal.staging.methods.squashfs_kernel import local_mount, local_unmount, require_local_mount

# what stage copies from the broadcast's record into the node's stage record
# (kept short: the whole record must stay a readable line; the bcast step's records have it all)
RECORD_KEYS = ("bcast_seconds", "copy_seconds", "unpack_tail_seconds", "fed_by", "sent_bytes")


def record_path(ctx: "Context") -> "str":
    return os.path.join(ctx.job_dir, f"{ctx.image}.bcast.json")


def artifact_sha256(ctx: "Context", kind: "str") -> "str":
    """The artifact's SHA-256 as the store's manifest has it (the only digest trusted)."""
    files = ctx.manifest().get("files")
    name = ctx.artifact_name(kind)
    want = files.get(name) if isinstance(files, dict) else None
    if not isinstance(want, str) or len(want) != 64:
        raise DistError(f"the manifest of {ctx.image!r} has no sha256 for {name}",
                        "re-export the image with a current shoal")
    return want


def broadcast_record(ctx: "Context", kind: "str") -> "dict[str, Any]":
    """The broadcast's record on this node, refused unless it delivered the manifest's bytes."""
    try:
        with open(record_path(ctx)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        raise DistError(f"the broadcast left no record on this node ({record_path(ctx)})",
                        "look at the bcast step's error in the driver's output") from None
    if not isinstance(rec, dict) or not rec.get("ok"):
        why = rec.get("error") if isinstance(rec, dict) else None
        raise DistError(f"the broadcast failed on this node: {why}", None)
    if rec.get("sha256") != artifact_sha256(ctx, kind):
        raise DistError("the broadcast's copy does not match the store's manifest",
                        "run the broadcast again")
    return rec


class _Bcast(Method):
    collective = "bcast"

    def check(self, ctx: "Context") -> "None":
        require_exists(ctx.artifact(self.artifact), ctx)
        artifact_sha256(ctx, self.artifact)
        check_space(ctx, self.local_bytes_needed(ctx))

    def _extra(self, rec: "dict[str, Any]") -> "dict[str, Any]":
        out = {k: rec.get(k) for k in RECORD_KEYS}
        out["broadcast_bytes"] = rec.get("bytes")
        # the broadcast's process: hashing, writing, forwarding, and tar (its child) unpacking
        out["collective_cpu_seconds"] = round(float(rec.get("cpu_seconds") or 0) +
                                              float(rec.get("cpu_children_seconds") or 0), 4)
        return out


@register("bcast")
class Bcast(_Bcast):
    artifact = "tar"
    description = "pipelined broadcast of the tarball among the nodes, unpacked as it streams"

    def local_bytes_needed(self, ctx: "Context") -> "int":
        # the tarball is kept until this node's subtree has it, beside the growing tree
        return image_bytes(ctx) + ctx.artifact_bytes("tar")

    def stage(self, ctx: "Context") -> "Staged":
        rec = broadcast_record(ctx, "tar")
        if not os.path.isdir(os.path.join(ctx.staged_dir, "etc")):
            raise DistError(f"the broadcast left no unpacked image at {ctx.staged_dir}", None)
        return Staged(ctx.staged_dir, storage_bytes_read=int(rec.get("storage_bytes_read") or 0),
                      extra=self._extra(rec))

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        remove_tree(ctx.staged_dir)
        remove_tree(ctx.local_artifact("tar"))
        remove_tree(record_path(ctx))
        return {}


@register("bcast-squashfs")
class BcastSquashfs(_Bcast):
    artifact = "sqfs"
    phase = "mount"  # the broadcast copy is the collective phase; this mounts it
    privileged = True
    description = "pipelined broadcast of the SquashFS file among the nodes, loop-mounted (root)"

    def check(self, ctx: "Context") -> "None":
        require_local_mount(self.name)
        super().check(ctx)

    def local_bytes_needed(self, ctx: "Context") -> "int":
        return ctx.artifact_bytes("sqfs")

    def stage(self, ctx: "Context") -> "Staged":
        rec = broadcast_record(ctx, "sqfs")
        local = ctx.local_artifact("sqfs")
        if not os.path.isfile(local) or os.path.getsize(local) != rec.get("bytes"):
            raise DistError(f"the broadcast left no complete {local} on this node", None)
        # the privileged part: the same loop mount as sbcast-squashfs (root, or the broker)
        staged = local_mount(ctx, local)
        staged.storage_bytes_read = int(rec.get("storage_bytes_read") or 0)
        staged.extra.update(self._extra(rec))
        return staged

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        out = local_unmount(ctx)
        remove_tree(ctx.local_artifact("sqfs"))
        remove_tree(record_path(ctx))
        return out
