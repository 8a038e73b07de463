"""Walk benchmark: catwalk/statwalk rates in a container on node-local tmpfs vs the limit.

    .venv/bin/python bench/bench_walks.py [--images bwsmall,mpihello] [--reps 3] [--json FILE]

A 1-node virtual cluster `bw` (storage bind, network unshaped: staging is not what is measured)
is booted; each image is staged on node1 with the `untar` method (shoal.staging.driver, as `shoal
run` does) into the node's tmpfs /tmp/shoal/<job>/<image>. Then, on node1 (inside its namespaces,
timed there with the node's clock around each command, one warm-up pass, then --reps passes;
median shown), the same tree is walked five ways:

  cat loop      `find DIR -xdev -type f -exec cat {} + >/dev/null`        the data limit
  stat loop     `find DIR -xdev -printf '%s %y\\n' >/dev/null` (lstat each)  the metadata limit
  host python3  python3 catwalk.py DIR / statwalk.py DIR outside any container
  container     ch-run DIR -- python3 catwalk.py / (resp. statwalk.py), what the study runs

The ratio limit-time / walk-time (1.0 = as fast as cat/find) is given for both the walk's own
time (the JSON "seconds" the script prints: from its start to its end, interpreter start-up
excluded) and the wall time of the whole command (python3 start-up, and ch-run's namespace and
mount set-up for the container). host python3 vs container separates container overhead from
Python overhead. tmpfs keeps every page in memory, so every pass is "warm" by nature.
The many-small image `bwsmall` (mpihello + 20,000 files of 1-8 KiB) is synthesized and exported
first if the store lacks it. The cluster is taken down at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shoal import paths
from shoal.cluster import enter, manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.state import ClusterDir
from shoal.runner import run
from shoal.staging import driver

NAME = "bw"
NODE = "node1"
SMALL = "bwsmall"
SCRIPTS_DIR = "/tmp/bw-walks"  # node-local; ch-run binds the node's /tmp, so the container sees it
MB = 1_000_000
WORKLOADS = Path(__file__).resolve().parent.parent / "shoal" / "workloads"
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


@dataclass
class Variant:
    """One way of walking the tree: the shell command run on the node and its kind."""

    walk: str  # "cat" or "stat"
    how: str  # "limit", "host python3", "container"
    command: str
    wall_s: list[float] = field(default_factory=list)
    own_s: list[float] = field(default_factory=list)  # the script's own "seconds" (python only)
    files: int = 0
    nbytes: int = 0


def ensure_images(names: list[str]) -> None:
    shoal = str(Path(sys.executable).parent / "shoal")
    for name in names:
        if (paths.store_root() / name / "manifest.json").is_file():
            continue
        if name != SMALL:
            raise SystemExit(f"image {name!r} is not in the store {paths.store_root()}: "
                             f"`shoal image build {name}` and `shoal image export {name}` first")
        with console.status(f"synthesizing {SMALL} (many-small, scale 1) and exporting"):
            run([shoal, "image", "synth", SMALL, "--profile", "many-small", "--force"],
                timeout=1800, what="shoal image synth")
            run([shoal, "image", "export", SMALL], timeout=1800, what="shoal image export")


def on_node(script: str, *, timeout: float = 600.0, input: str | None = None) -> str:
    prefix = enter.enter_prefix(ClusterDir(NAME).load(), NODE)
    return run([*prefix, "bash", "-c", script], timeout=timeout, input=input,
               what=f"on {NODE}: {script[:60]}").stdout


def timed(command: str) -> tuple[float, str]:
    """Run COMMAND on the node; (seconds by the node's clock, its stdout)."""
    # bash's $EPOCHREALTIME: no fork for the clock, so nothing but COMMAND is inside the interval
    out = on_node(f"a=$EPOCHREALTIME; {command}; rc=$?; b=$EPOCHREALTIME; echo \"@@ $a $b $rc\"")
    lines = out.strip().splitlines()
    tag, a, b, rc = lines[-1].split()
    if tag != "@@" or rc != "0":
        raise RuntimeError(f"{command!r} failed on {NODE} (exit {rc}): {out[-300:]}")
    return float(b) - float(a), "\n".join(lines[:-1])


def variants(tree: str) -> list[Variant]:
    d = shlex.quote(tree)
    cw, sw = f"{SCRIPTS_DIR}/catwalk.py", f"{SCRIPTS_DIR}/statwalk.py"
    return [
        Variant("cat", "limit", f"find {d} -xdev -type f -exec cat {{}} + >/dev/null"),
        Variant("cat", "host python3", f"python3 {cw} {d}"),
        Variant("cat", "container", f"ch-run {d} -- python3 {cw} /"),
        Variant("stat", "limit", f"find {d} -xdev -printf '%s %y\\n' >/dev/null"),
        Variant("stat", "host python3", f"python3 {sw} {d}"),
        Variant("stat", "container", f"ch-run {d} -- python3 {sw} /"),
    ]


def measure(vs: list[Variant], reps: int, progress: Progress, task: Any) -> None:
    for rep in range(reps + 1):  # pass 0 warms the dentry/inode caches and is not kept
        for v in vs:
            progress.update(task, description=f"{v.walk} {v.how} pass {rep}/{reps}")
            seconds, out = timed(v.command)
            if v.how != "limit":
                fom = json.loads(out.strip().splitlines()[-1])
                if fom.get("errors"):
                    raise RuntimeError(f"{v.command}: {fom['errors']} errors")
                v.files, v.nbytes = int(fom["files"]), int(fom["bytes"])
                if rep:
                    v.own_s.append(float(fom["seconds"]))
            if rep:
                v.wall_s.append(seconds)
            progress.advance(task)


def tree_counts(tree: str) -> tuple[int, int]:
    out = on_node(f"find {shlex.quote(tree)} -xdev -type f -printf '%s\\n' | "
                  "awk '{n++; s+=$1} END {print n, s}'")
    n, s = out.split()
    return int(n), int(float(s))


def bench_image(site: driver.Site, image: str, reps: int, progress: Progress, task: Any
                ) -> list[Variant]:
    alloc = driver.allocate(site, 1, time_limit="60")
    try:
        progress.update(task, description=f"{image}: staging with untar")
        res = driver.distribute(site, alloc, "untar", image)
        driver.raise_if_failed(res)
        tree = res.staged_path()
        try:
            files, nbytes = tree_counts(tree)
            vs = variants(tree)
            for v in vs:
                if v.how == "limit":
                    v.files, v.nbytes = files, nbytes
            measure(vs, reps, progress, task)
        finally:
            driver.cleanup(site, alloc, image)
    finally:
        driver.release(site, alloc.job)
    return vs


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def results_table(results: dict[str, list[Variant]], reps: int) -> Table:
    t = Table(title=f"walks on node-local tmpfs (1 node), median of {reps}; ratio = limit time / "
                    "this time (1.0 = as fast as cat/find)")
    cols = ("image", "walk", "how", "files", "MB", "wall s", "own s", "files/s (own)",
            "MB/s (own)", "ratio wall", "ratio own")
    for c in cols:
        t.add_column(c, justify="left" if c in ("image", "walk", "how") else "right")
    for image, vs in results.items():
        for v in vs:
            limit = next(x for x in vs if x.walk == v.walk and x.how == "limit")
            lim_s = med(limit.wall_s)
            wall = med(v.wall_s)
            own = med(v.own_s) if v.own_s else wall  # the limit has no inner time: wall
            t.add_row(
                image, v.walk, v.how, str(v.files), f"{v.nbytes / MB:.1f}", f"{wall:.3f}",
                f"{own:.3f}" if v.own_s else "-", f"{v.files / own:,.0f}",
                f"{v.nbytes / own / MB:,.0f}" if v.walk == "cat" else "-",
                f"{lim_s / wall:.2f}", f"{lim_s / own:.2f}" if v.own_s else "-",
            )
    return t


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=f"{SMALL},mpihello")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    images = args.images.split(",")
    signal.signal(signal.SIGTERM, _sigterm)
    ensure_images(images)
    results: dict[str, list[Variant]] = {}
    load0 = os.getloadavg()
    console.print(f"booting cluster {NAME} (1 node)")
    # booted(): a leftover of a killed earlier run goes first; the teardown survives Ctrl-C
    with manager.booted(ClusterConfig(name=NAME, nodes=1, accounting=False)):
        on_node(f"mkdir -p {SCRIPTS_DIR} && chmod 755 {SCRIPTS_DIR}")
        for script in ("catwalk.py", "statwalk.py"):
            on_node(f"cat > {SCRIPTS_DIR}/{script} && chmod 644 {SCRIPTS_DIR}/{script}",
                    input=(WORKLOADS / script).read_text())
        site = driver.site_for(NAME)
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=console) as progress:
            for image in images:
                task = progress.add_task(image, total=(args.reps + 1) * 6)
                results[image] = bench_image(site, image, args.reps, progress, task)
    console.print(results_table(results, args.reps))
    console.print(f"load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} "
                  f"(2 cores; other work on the machine slows every variant alike)")
    if args.json:
        args.json.write_text(json.dumps(
            {"format": 1, "reps": args.reps, "load_start": load0, "load_end": os.getloadavg(),
             "images": {k: [asdict(v) for v in vs] for k, vs in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
