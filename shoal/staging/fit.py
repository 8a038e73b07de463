"""Does a staging fit? Node-local copies on a virtual cluster all land in this machine's memory.

untar and sbcast put a copy of the image into every node's tmpfs; on a virtual cluster those
tmpfs are all this one machine's memory (untar of the 191 MB mpihello tree on 256 nodes: 49 GB).
The driver (`shoal run`) and the study (before it submits anything) ask here first; the memory
figures come from shoal.cluster.capacity.
"""

from __future__ import annotations

from pathlib import Path

from shoal.cluster.capacity import check_copies
from shoal.staging.base import Context
from shoal.staging.registry import get_method, method_names


def local_bytes(method: str, image: str, store: Path) -> int:
    """Bytes one node keeps of `image` staged with `method` (0: nothing is copied)."""
    return get_method(method).local_bytes_needed(Context("0", image, str(store)))


def check_node_local_copies(method: str, image: str, nodes: int, store: Path,
                            tmpfs_size: str | None = None,
                            available_mb: float | None = None) -> int:
    """Refuse a staging whose node-local copies cannot fit (see check_copies); returns the bytes
    one node needs."""
    per_node = local_bytes(method, image, store)
    if per_node > 0:
        lazy = [m for m in method_names() if _copies_nothing(m, image, store)]
        alt = f"use a method that copies nothing ({', '.join(lazy)})" if lazy else \
            "use a method that copies nothing"
        check_copies(f"{method} of {image}", per_node, nodes, tmpfs_size, alt, available_mb)
    return per_node


def _copies_nothing(method: str, image: str, store: Path) -> bool:
    try:
        return local_bytes(method, image, store) <= 0
    except Exception:  # a method that cannot size this image is not offered as the way out
        return False
