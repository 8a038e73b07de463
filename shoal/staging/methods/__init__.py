"""The distribution methods, one module each; importing this package registers them all.

A new method (a registry pull, a pipelined broadcast) is one more module here, imported below, and
one more line in shoal.bundle.MODULES; every test parametrized over the registry covers it.
"""

from shoal.staging.methods import (  # noqa: F401
    bcast,
    registry,
    sbcast,
    sbcast_squashfs,
    shared_dir,
    squashfs_kernel,
    squashfuse,
    untar,
)
