"""Where shoal keeps things on the host (the one place defaults for locations live).

SHOAL_STATE  (default /var/lib/shoal)   cluster state dirs, the image store
SHOAL_CACHE  (default /var/cache/shoal) debootstrap base, Charliecloud build storage
SHOAL_STORE  (default $SHOAL_STATE/store) the image store

Each variable wins over the site configuration (/etc/shoal/shoal.toml: store, state, cache; see
shoal.siteconfig), which wins over the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

# The directory holding the shoal package (site-packages when installed, the checkout when editable).
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
# Kept for code that means the checkout (examples/, results/): the same directory in a checkout.
REPO_ROOT = PACKAGE_PARENT


def _site(key: str) -> str | None:
    from shoal import siteconfig

    value = getattr(siteconfig.load(), key)
    return value if isinstance(value, str) else None


def state_root() -> Path:
    return Path(os.environ.get("SHOAL_STATE") or _site("state") or "/var/lib/shoal")


def cache_root() -> Path:
    return Path(os.environ.get("SHOAL_CACHE") or _site("cache") or "/var/cache/shoal")


def clusters_root() -> Path:
    return state_root() / "clusters"


def store_root() -> Path:
    """The image store on the host; every virtual cluster mounts it at /pfs/store."""
    return Path(os.environ.get("SHOAL_STORE") or _site("store") or str(state_root() / "store"))


# Inside a virtual cluster (controller and nodes) the store is seen here.
CLUSTER_STORE_PATH = "/pfs/store"


def recipes_dir() -> Path:
    """Build contexts of the images shoal knows by name (layer1, workloads): package data."""
    return PACKAGE_PARENT / "shoal" / "images" / "recipes"
