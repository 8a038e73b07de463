"""Workloads that run inside any container image (standard library only, one file each).

Each is a standalone script (`python3 catwalk.py [ROOT]`) that prints one JSON line of figures of
merit; ``script_path(name)`` gives the file to copy or bind into a container.
"""

from __future__ import annotations

from pathlib import Path

WORKLOADS = ("catwalk", "statwalk", "startread")


def script_path(name: str) -> Path:
    """The standalone script of workload NAME (a file needing only python3's standard library)."""
    if name not in WORKLOADS:
        raise KeyError(name)
    return Path(__file__).resolve().parent / f"{name}.py"
