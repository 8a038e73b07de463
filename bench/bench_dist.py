"""Distribution benchmark: staging time of every method at 1-16 nodes vs its physical limit.

    .venv/bin/python bench/bench_dist.py [--quick] [--nodes 1,2,4,8,16] [--methods M,...]
                                         [--images mpihello,bdlarge] [--walk lazy|all|none]
                                         [--json FILE] [--markdown] [--from-json FILE]

ONE virtual cluster `bd` (as many nodes as the largest count, 16 by default; network eth10g =
1 Gbit/s per link shaped with tbf, storage sshfs: /pfs and the image store are served by a storage
host over its own shaped link) is booted for the whole run and taken down at the end, also on an
error, Ctrl-C or SIGTERM. For each node count N, image and registered method, one allocation of
N nodes is made (its comment names the method and image where the method mounts, as `shoal run`
does: the Prolog protocol); in it the image is staged with the driver (shoal.staging.driver,
as `shoal run` does), then, for the lazy (mount) methods, catwalk (read every byte of the image)
runs in the container on every node (the first-access cost: the part of the work a lazy method
defers; `--walk all` also walks the node-local copies), then the nodes are cleaned up.
Staging time per node is timed on the node (from `check` for broadcast methods, so the sbcast
counts); the job waits for the slowest node, so the ratio uses the max.

Physical limits (docs/STUDY.md), B = per-link rate, the storage host's link is B too:
  untar                all N nodes read the tarball S from one server:   N * S / B
  sbcast, sbcast-sq.   non-pipelined k-ary tree from the controller:    L * w * S / B,
                       L = ceil(log_k N) (at least 1), w = min(k, N), k = --fanout
  squashfs-kernel, squashfuse, shared-dir: staging reads ~nothing (a superblock); no meaningful
                       limit. Their first-access limit is catwalk's: N * S_read / B with S_read
                       the SquashFS file (what a full read of the mount fetches) or the unpacked
                       tree (shared-dir). Copy methods walk node-local memory: no network limit.

The large image `bdlarge` (mpihello + 8 random 16 MiB files, ~205 MB compressed) is synthesized
and exported first if the store lacks it; its size is capped there so the whole run stays near
15 minutes on a 2-core machine (at 272 MB the 16-node runs alone took 6.7 min).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal import paths
from shoal.bundle import publish
from shoal.cluster import manager
from shoal.cluster.config import NETWORK_PROFILES, ClusterConfig
from shoal.errors import ShoalError
from shoal.runner import run
from shoal.staging import driver
from shoal.staging.privileged import stage_comment
from shoal.staging.registry import get_method, method_names

NAME = "bd"
NETWORK = "eth10g"
STORAGE = "sshfs"
LARGE = "bdlarge"
LARGE_SCALE = 0.25  # few-large: 8 files of 64 MiB * scale = 128 MiB of random data
ALL_NODES = (1, 2, 4, 8, 16)
QUICK_NODES = (1, 4, 16)
MB = 1_000_000
LAZY = ("squashfs-kernel", "squashfuse", "shared-dir")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 190)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    tar_bytes: int
    sqfs_bytes: int
    tree_bytes: int

    def artifact_bytes(self, kind: str) -> int:
        return {"tar": self.tar_bytes, "sqfs": self.sqfs_bytes, "dir": self.tree_bytes}[kind]


@dataclass
class Row:
    image: str
    method: str
    nodes: int
    stage_s: list[float] = field(default_factory=list)  # per node, timed on the node
    walk_s: list[float] = field(default_factory=list)  # catwalk per node, ch-run included
    walk_bytes: list[int] = field(default_factory=list)
    rx_bytes: list[int] = field(default_factory=list)  # staging: bytes into the node's interface
    storage_bytes: list[int] = field(default_factory=list)
    collective_s: float | None = None
    driver_s: float = 0.0
    stage_limit_s: float | None = None
    walk_limit_s: float | None = None
    error: str | None = None


def image_info(name: str) -> ImageInfo:
    m = json.loads((paths.store_root() / name / "manifest.json").read_text())
    exports, sizes = m["exports"], m["sizes"]
    return ImageInfo(name, int(sizes[exports["tar.gz"]]), int(sizes[exports["squashfs"]]),
                     int(m["bytes"]))


def ensure_images(names: list[str]) -> None:
    """Every image must be in the store with all three exports; bdlarge is made when missing."""
    shoal = str(Path(sys.executable).parent / "shoal")
    for name in names:
        entry = paths.store_root() / name
        if (entry / "manifest.json").is_file():
            continue
        if name != LARGE:
            raise SystemExit(f"image {name!r} is not in the store {paths.store_root()}: "
                             f"`shoal image build {name}` and `shoal image export {name}` first")
        with console.status(f"synthesizing {LARGE} (few-large, scale {LARGE_SCALE}) and exporting"):
            run([shoal, "image", "synth", LARGE, "--profile", "few-large", "--scale",
                 str(LARGE_SCALE), "--force"], timeout=1800, what="shoal image synth")
            run([shoal, "image", "export", LARGE], timeout=1800, what="shoal image export")


def tree_levels(n: int, k: int) -> int:
    """ceil(log_k n), at least 1 (one hop from the controller), computed in integers."""
    levels, reach = 1, k
    while reach < n:
        levels += 1
        reach *= k
    return levels


def limits(method: str, img: ImageInfo, n: int, link_bps: float, fanout: int
           ) -> tuple[float | None, float | None]:
    """(staging limit, first-access catwalk limit) in seconds; None where no network limit."""
    art = get_method(method).artifact
    s = img.artifact_bytes(art)
    if method in LAZY:
        return None, n * s / link_bps
    if get_method(method).collective == "sbcast":
        return tree_levels(n, fanout) * min(fanout, n) * s / link_bps, None
    return n * s / link_bps, None  # untar, and any later copy-from-storage method


def run_one(site: driver.Site, alloc: driver.Allocation, agent: str, method: str, img: ImageInfo,
            fanout: int, walk: bool, timeout: float) -> Row:
    row = Row(img.name, method, len(alloc.nodes))
    staged = False
    try:
        res = driver.distribute(site, alloc, method, img.name, fanout=fanout, timeout=timeout)
        row.driver_s, row.collective_s = res.seconds, res.collective_seconds
        recs = [res.records.get(n, {}) for n in alloc.nodes]
        if res.failed:
            row.error = "; ".join(f"{n}: {w}" for n, w in sorted(res.failed.items()))[:300]
            return row
        staged = True
        row.stage_s = [float(r["stage_seconds"]) for r in recs]
        row.rx_bytes = [int(r.get("bytes_net_rx") or 0) for r in recs]
        row.storage_bytes = [int(r.get("stage_bytes_from_storage") or 0) for r in recs]
        if walk:
            wrecs, wfailed = driver.agent_step(
                site, alloc, alloc.nodes, agent, "workload", "--job", alloc.job, "--image",
                img.name, "--workload", "catwalk", "--timeout", str(timeout), timeout=timeout + 30)
            if wfailed:
                row.error = "catwalk: " + "; ".join(f"{n}: {w}" for n, w in sorted(wfailed.items()))
            else:
                row.walk_s = [float(wrecs[n]["seconds"]) for n in alloc.nodes]
                row.walk_bytes = [int(wrecs[n]["fom"].get("bytes", 0)) for n in alloc.nodes]
    except ShoalError as exc:
        row.error = exc.message[:300]
    finally:
        if staged:
            try:
                driver.cleanup(site, alloc, img.name, timeout=timeout)
            except ShoalError as exc:
                row.error = (row.error or "") + f" cleanup: {exc.message}"[:200]
    return row


def med_max(xs: list[float]) -> tuple[str, str]:
    if not xs:
        return "-", "-"
    return f"{statistics.median(xs):.1f}", f"{max(xs):.1f}"


def ratio(xs: list[float], limit: float | None) -> str:
    if not xs or not limit:
        return "-"
    return f"{max(xs) / limit:.1f}x"


def results_table(rows: list[Row], images: dict[str, ImageInfo], link_bps: float, fanout: int,
                  elapsed: float) -> Table:
    t = Table(title=f"staging time per node vs physical limit: {NETWORK} ({link_bps * 8 / 1e9:g} "
                    f"Gbit/s per link, storage {STORAGE}), sbcast fan-out {fanout}; "
                    f"run took {elapsed / 60:.1f} min")
    cols = ("image", "method", "N", "stage med s", "stage max s", "sbcast s", "limit s",
            "max/limit", "rx MB/node", "catwalk med s", "catwalk max s", "walk limit s", "max/limit ",
            "stage+walk max s")
    for c in cols:
        t.add_column(c, justify="left" if c in ("image", "method") else "right",
                     no_wrap=c in ("image", "method"))
    for r in rows:
        img = images[r.image]
        if r.error:
            t.add_row(img.name, r.method, str(r.nodes), f"[red]FAILED: {r.error}[/]", *[""] * 10)
            continue
        smed, smax = med_max(r.stage_s)
        wmed, wmax = med_max(r.walk_s)
        slim = f"{r.stage_limit_s:.1f}" if r.stage_limit_s is not None else "lazy"
        wlim = walk_limit(r)
        total = (max(r.stage_s) + max(r.walk_s)) if r.walk_s else None
        rx = f"{statistics.median(r.rx_bytes) / MB:.0f}" if r.rx_bytes else "-"
        copy = f"{r.collective_s:.1f}" if r.collective_s is not None else "-"
        t.add_row(img.name, r.method, str(r.nodes), smed, smax, copy, slim,
                  ratio(r.stage_s, r.stage_limit_s), rx, wmed, wmax, wlim,
                  ratio(r.walk_s, r.walk_limit_s), f"{total:.1f}" if total is not None else "-")
    return t


def walk_limit(r: Row) -> str:
    if r.walk_limit_s is not None:
        return f"{r.walk_limit_s:.1f}"
    return "local" if r.walk_s else "-"  # a copy method walks node memory: no network limit


def markdown(rows: list[Row], images: dict[str, ImageInfo]) -> str:
    """The results as a Markdown table (what docs/PERFORMANCE.md holds)."""
    head = ("image", "method", "N", "stage med s", "stage max s", "sbcast s", "limit s",
            "max/limit", "catwalk med s", "catwalk max s", "walk limit s", "walk max/limit")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:"
                                                          for i in range(len(head))) + "|"]
    for r in rows:
        if r.error:
            out.append(f"| {r.image} | {r.method} | {r.nodes} | FAILED: {r.error} |" + " |" * 8)
            continue
        smed, smax = med_max(r.stage_s)
        wmed, wmax = med_max(r.walk_s)
        cells = [r.image, r.method, str(r.nodes), smed, smax,
                 f"{r.collective_s:.1f}" if r.collective_s is not None else "-",
                 f"{r.stage_limit_s:.1f}" if r.stage_limit_s is not None else "lazy",
                 ratio(r.stage_s, r.stage_limit_s), wmed, wmax,
                 walk_limit(r),
                 ratio(r.walk_s, r.walk_limit_s)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def images_table(images: dict[str, ImageInfo]) -> Table:
    t = Table(title="images (S per artifact)")
    for c in ("image", "tar.gz MB", "SquashFS MB", "unpacked MB"):
        t.add_column(c, justify="left" if c == "image" else "right")
    for i in images.values():
        t.add_row(i.name, f"{i.tar_bytes / MB:.1f}", f"{i.sqfs_bytes / MB:.1f}",
                  f"{i.tree_bytes / MB:.1f}")
    return t


def reprint(path: Path, md: bool) -> int:
    doc = json.loads(path.read_text())
    images = {k: ImageInfo(**v) for k, v in doc["images"].items()}
    rows = [Row(**r) for r in doc["rows"]]
    link_bps = (doc["network"]["rate_mbit"] or 0) * 1e6 / 8
    console.print(images_table(images))
    console.print(results_table(rows, images, link_bps, doc["fanout"], doc["elapsed_s"]))
    load0, load1 = doc.get("load_start"), doc.get("load_end")
    if load0 and load1:
        console.print(f"load average at start {load0[0]:.1f}, at end {load1[0]:.1f} "
                      "(2 cores; includes this run's own nodes)")
    if md:
        print(markdown(rows, images))
    return 0


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every finally (allocation, cluster) runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"node counts {','.join(map(str, QUICK_NODES))} only")
    ap.add_argument("--nodes", default=None, help="comma-separated node counts (default 1,2,4,8,16)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered)")
    ap.add_argument("--images", default=f"mpihello,{LARGE}")
    ap.add_argument("--fanout", type=int, default=driver.DEFAULT_FANOUT, help="sbcast fan-out")
    ap.add_argument("--walk", choices=("lazy", "all", "none"), default="lazy",
                    help="run catwalk after staging for the lazy (mount) methods only, for every "
                         "method (copy methods then walk node-local memory), or for none")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per driver step")
    ap.add_argument("--json", type=Path, default=None, help="write every per-node figure here")
    ap.add_argument("--markdown", action="store_true", help="also print the results as Markdown")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="only print the tables of an earlier run's --json file")
    args = ap.parse_args()
    if args.from_json:
        return reprint(args.from_json, args.markdown)
    counts = [int(x) for x in args.nodes.split(",")] if args.nodes else \
        list(QUICK_NODES if args.quick else ALL_NODES)
    known = method_names()
    methods = args.methods.split(",") if args.methods else known
    bad = [m for m in methods if m not in known]
    if bad:
        ap.error(f"unknown method(s) {', '.join(bad)}; known: {', '.join(known)}")
    image_names = args.images.split(",")
    link_bps = (NETWORK_PROFILES[NETWORK].rate_mbit or 0) * 1e6 / 8
    signal.signal(signal.SIGTERM, _sigterm)

    ensure_images(image_names)
    images = {n: image_info(n) for n in image_names}
    console.print(images_table(images))
    rows: list[Row] = []
    t_start = time.monotonic()
    load0 = os.getloadavg()
    console.print(f"booting cluster {NAME}: {max(counts)} nodes, {NETWORK}, {STORAGE}")
    # booted(): a leftover of a killed earlier run goes first; the teardown survives Ctrl-C
    with manager.booted(ClusterConfig(name=NAME, nodes=max(counts), network=NETWORK,
                                      storage=STORAGE, accounting=False)) as up:
        console.print(f"cluster {NAME} up in {up.boot_seconds:.1f} s")
        site = driver.site_for(NAME)
        agent = f"{site.store_nodes}/.shoal/{publish(site.store_local)}"
        total = len(counts) * len(images) * len(methods)
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("allocating", total=total)
            for n in counts:
                for img in images.values():
                    for method in methods:
                        progress.update(task, description=f"N={n} {img.name} {method}")
                        walk = args.walk == "all" or (args.walk == "lazy" and method in LAZY)
                        # one allocation per run: a mount is made only for a job whose comment
                        # asks for that method and image (the Prolog protocol, docs/SECURITY.md)
                        comment = (stage_comment(method, img.name)
                                   if get_method(method).privileged else None)
                        alloc = driver.allocate(site, n, time_limit="60", comment=comment)
                        try:
                            row = run_one(site, alloc, agent, method, img, args.fanout, walk,
                                          args.timeout)
                        finally:
                            driver.release(site, alloc.job)
                            driver.wait_released(site, alloc.job)
                        row.stage_limit_s, row.walk_limit_s = limits(
                            method, img, n, link_bps, args.fanout)
                        rows.append(row)
                        if row.error:
                            progress.console.print(f"[red]N={n} {img.name} {method}: "
                                                   f"{row.error}[/]")
                        progress.advance(task)
    elapsed = time.monotonic() - t_start
    rows.sort(key=lambda r: (image_names.index(r.image), methods.index(r.method), r.nodes))
    console.print(results_table(rows, images, link_bps, args.fanout, elapsed))
    console.print(f"load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} "
                  "(2 cores; includes this run's own nodes)")
    if args.markdown:
        print(markdown(rows, images))
    if args.json:
        doc: dict[str, Any] = {
            "format": 1, "network": NETWORK_PROFILES[NETWORK].as_dict(), "storage": STORAGE,
            "fanout": args.fanout, "elapsed_s": elapsed, "load_start": load0,
            "load_end": os.getloadavg(),
            "images": {k: asdict(v) for k, v in images.items()},
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
