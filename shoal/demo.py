"""`make demo`: the whole study pipeline once, on a fresh virtual cluster, in about 4 minutes.

Builds (cached) and exports the images examples/quick.toml names, boots the 4-node virtual cluster
"demo" (a leftover "demo" cluster of a crashed run is removed first), runs the quick study into
results/demo-<timestamp>, writes the report (markdown, HTML, plots), prints its path and the
answers table, and takes the cluster down, also on failure and Ctrl-C.

    .venv/bin/python -m shoal.demo [--spec FILE] [--out DIR] [--keep-cluster]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from shoal.errors import ShoalError
from shoal.paths import REPO_ROOT

CLUSTER = "demo"
console = Console(highlight=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shoal.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=REPO_ROOT / "examples" / "quick.toml")
    ap.add_argument("--out", type=Path, default=None,
                    help="results directory (default results/demo-<timestamp>)")
    ap.add_argument("--keep-cluster", action="store_true", help="leave the cluster running")
    args = ap.parse_args(argv)
    out: Path = args.out or REPO_ROOT / "results" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.monotonic()
    booted = False
    rc = 0
    try:
        from shoal.cli.study import print_report, run_study
        from shoal.cluster import manager
        from shoal.cluster.config import validate
        from shoal.cluster.state import ClusterDir
        from shoal.images import progress
        from shoal.images.catalog import ensure_in_store
        from shoal.images.layer1 import ensure_layer1
        from shoal.study.report import write_report
        from shoal.study.session import load_run_spec

        spec = load_run_spec(args.spec)
        console.rule(f"shoal demo: {spec.name} study ({args.spec})")
        with progress.step("node image layer1 (cached after the first build)"):
            ensure_layer1()
        for image in spec.images:
            with progress.step(f"image {image}: build (cached) and export into the store"):
                ensure_in_store(image)
        if ClusterDir(CLUSTER).exists():
            console.print(f"removing the cluster {CLUSTER!r} a previous run left behind")
            manager.down(CLUSTER)
        cfg = validate({"name": CLUSTER, "nodes": spec.cluster.nodes or 4,
                        "network": spec.cluster.network or "none",
                        **({"storage": spec.cluster.storage} if spec.cluster.storage else {})})
        booted = True  # from here on a half-booted cluster must go too
        with console.status(f"booting cluster {CLUSTER!r}: {cfg.nodes} nodes, network "
                            f"{cfg.network} ..."):
            res = manager.up(cfg, progress=False)
        console.print(f"cluster {CLUSTER!r}: {len(res.state.nodes)} nodes idle in "
                      f"{res.boot_seconds:.1f} s")
        run_study(args.spec, out, CLUSTER)
        rep = write_report(out)
        console.rule("report")
        print_report(rep, out)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: jobs cancelled, taking the cluster down")
        rc = 130
    except ShoalError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"[dim]hint:[/] {exc.hint}")
        rc = exc.exit_code or 1
    finally:
        if booted and not args.keep_cluster:
            from shoal.cluster import manager

            with console.status(f"taking cluster {CLUSTER!r} down ..."):
                left = manager.down(CLUSTER)
            if left:
                console.print(f"[red]left behind:[/] {', '.join(left)}")
                rc = rc or 1
            else:
                console.print(f"cluster {CLUSTER!r} is down")
    console.print(f"demo {'finished' if rc == 0 else 'stopped'} in "
                  f"{time.monotonic() - t0:.0f} s" + (f"; results in {out}" if out.exists()
                                                      else ""))
    return rc


if __name__ == "__main__":
    sys.exit(main())
