"""Image build and export benchmark: cold vs cached build time, image size per format.

Runs in a private, temporary build cache (SHOAL_CACHE) so "cold" really is cold (debootstrap,
ch-image import, build) and the shared cache that running clusters use is never touched:

    .venv/bin/python bench/bench_images.py [--images mpihello,lammps,layer1] [--reps 3] [--json F]

Per image: cold build (first build in the empty cache; the base is built once, before, and
reported on its own row), cached build (mean of --reps calls that find the marker), and the
size of the tree and of each export (tar.gz, SquashFS) with the time each export took.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shoal import fsutil
from shoal.images import base, build, catalog
from shoal.images.store import ExportFormat, export_to
from shoal.images.treedigest import tree_digest


def bench(images: list[str], reps: int, keep: bool) -> dict[str, Any]:
    cache = Path(tempfile.mkdtemp(prefix="shoal-bench-cache-", dir="/var/tmp"))
    os.environ["SHOAL_CACHE"] = str(cache)
    out: dict[str, Any] = {"cache": str(cache), "images": {}}
    try:
        t0 = time.monotonic()
        base_dir = base.ensure_base()
        out["base_debootstrap_s"] = time.monotonic() - t0
        out["base_bytes"] = fsutil.dir_size(base_dir)
        t0 = time.monotonic()
        build.ensure_base_imported()
        out["base_import_s"] = time.monotonic() - t0
        for name in images:
            r: dict[str, Any] = {}
            t0 = time.monotonic()
            built = catalog.build_named(name)
            r["cold_s"] = time.monotonic() - t0
            cached = []
            for _ in range(reps):
                t0 = time.monotonic()
                again = catalog.build_named(name)
                cached.append(time.monotonic() - t0)
                assert again.cached, f"{name}: second build was not served from the cache"
            r["cached_s"] = statistics.mean(cached)
            r["cached_s_max"] = max(cached)
            d = tree_digest(built.path)
            r["tree_bytes"] = d.bytes
            r["file_count"] = d.file_count
            exports = cache / "exports"
            for fmt in (ExportFormat.TAR_GZ, ExportFormat.SQUASHFS):
                t0 = time.monotonic()
                (p,) = export_to(built.path, name, [fmt], exports)
                r[f"{fmt.value}_s"] = time.monotonic() - t0
                r[f"{fmt.value}_bytes"] = p.stat().st_size
                p.unlink()
            out["images"][name] = r
    finally:
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    return out


def show(res: dict[str, Any]) -> None:
    console = Console(width=max(Console().width, 110))
    console.print(
        f"base: debootstrap {res['base_debootstrap_s']:.1f} s, {res['base_bytes'] / 1e6:.0f} MB; "
        f"ch-image import {res['base_import_s']:.1f} s"
    )
    t = Table(title="image builds (cold = empty cache except the base) and exports")
    cols = [
        "image",
        "cold build s",
        "cached build s",
        "files",
        "tree MB",
        "tar.gz MB",
        "tar.gz s",
        "sqfs MB",
        "sqfs s",
    ]
    for c in cols:
        t.add_column(c, justify="left" if c == "image" else "right")
    for name, r in res["images"].items():
        t.add_row(
            name,
            f"{r['cold_s']:.1f}",
            f"{r['cached_s']:.3f}",
            str(r["file_count"]),
            f"{r['tree_bytes'] / 1e6:.1f}",
            f"{r['tar.gz_bytes'] / 1e6:.1f}",
            f"{r['tar.gz_s']:.1f}",
            f"{r['squashfs_bytes'] / 1e6:.1f}",
            f"{r['squashfs_s']:.1f}",
        )
    console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="mpihello,lammps,layer1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary build cache")
    a = ap.parse_args()
    os.environ.setdefault("USER", "root")
    res = bench([n for n in a.images.split(",") if n], a.reps, a.keep)
    show(res)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
