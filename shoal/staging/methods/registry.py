"""registry: every node pulls the image from an OCI registry over HTTP and unpacks it.

The registry is a real one (Debian's docker-registry, i.e. distribution 2.8) on the virtual
cluster's storage host (shoal.cluster.storage): read-only on the cluster network, writable only on
the storage host's loopback, where the driver pushes the store's tarball once per image version
(the declared ``prepare`` step, not part of staging: a site fills its registry ahead of the jobs).
The node asks for the layer whose digest the store's manifest lists, unpacks it as it streams and
refuses it unless the streamed bytes hash to that digest; ``verify`` compares the tree with the
store's tree digest. Every node pulls the whole image from the one server: N x S through one link,
the load the original work rejected this method for (docs/PERFORMANCE.md has the figure).
"""

from typing import Any

from shoal.errors import DistError
from shoal.staging.base import Context, Method, Staged, check_space, image_bytes, register, remove_tree
from shoal.staging.methods.bcast import artifact_sha256


@register("registry")
class Registry(Method):
    artifact = "tar"
    prepare = "registry-push"
    description = "pull the image from the cluster's OCI registry over HTTP, unpack as it streams"

    def check(self, ctx: "Context") -> None:
        artifact_sha256(ctx, "tar")
        check_space(ctx, self.local_bytes_needed(ctx))

    def local_bytes_needed(self, ctx: "Context") -> int:
        return image_bytes(ctx)

    def stage(self, ctx: "Context") -> "Staged":
        from shoal.staging import oci

        try:
            got = oci.pull(oci.registry_url(), ctx.image, artifact_sha256(ctx, "tar"),
                           ctx.staged_dir)
        except oci.RegistryError as exc:
            raise DistError(f"registry pull of {ctx.image!r}: {exc}",
                            "is the image pushed (shoal dist/run push it) and the registry up "
                            f"(${oci.REGISTRY_ENV}, default {oci.DEFAULT_REGISTRY})?") from None
        # the registry's blobs live on the storage host: what it served is a shared-storage read
        return Staged(ctx.staged_dir, storage_bytes_read=int(str(got["pulled_bytes"])),
                      extra={"registry_bytes": got["pulled_bytes"],
                             "registry_pull_seconds": got["pull_seconds"]})

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        remove_tree(ctx.staged_dir)
        return {}
