#!/usr/bin/env python3
"""Pynamic-style driver: import every generated module, call every function, report times.

STANDARD LIBRARY ONLY. Prints one JSON line:
{"workload": "pynamic", "modules": M, "functions": F, "calls": M*F, "startup_seconds": ...,
 "import_seconds": ..., "visit_seconds": ..., "total_seconds": ..., "checksum_ok": true,
 "startup_source": ...}

startup_seconds is from the start of the process to the first line of main. The process start comes
from --t0 (seconds since the epoch, e.g. `--t0 $(date +%s.%N)` in the launcher) when given, else from
the kernel's start time of this process (/proc/self/stat, clock-tick resolution, usually 10 ms); under
ch-run the process is ch-run itself before it execs python3, so container setup is included.
Exits 1 if the visit checksum differs from the generator's: some function did not run right.
"""

import time

_T_MAIN_WALL = time.time()
_T_MAIN_BOOT = time.clock_gettime(time.CLOCK_BOOTTIME)

import argparse  # noqa: E402  (imports after the timestamps on purpose)
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

MASK = (1 << 64) - 1


def process_age_at_main():
    """Seconds from the kernel's start of this process to _T_MAIN_BOOT, or None."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        # field 22 (starttime) counted after the parenthesised command name
        fields = stat.rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        return _T_MAIN_BOOT - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description="import and visit Pynamic-style modules")
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--t0", type=float, default=None, help="launch time, seconds since the epoch")
    args = ap.parse_args(argv)
    if args.t0 is not None:
        startup, source = _T_MAIN_WALL - args.t0, "t0"
    else:
        startup, source = process_age_at_main(), "proc-starttime"
    with open(os.path.join(args.dir, "pynamic.json")) as f:
        meta = json.load(f)
    sys.path.insert(0, args.dir)
    t0 = time.monotonic()
    mods = [importlib.import_module(name) for name in meta["module_names"]]
    t1 = time.monotonic()
    x = meta["x"]
    total = 0
    calls = 0
    for mod in mods:
        for j in range(meta["functions"]):
            total = (total + getattr(mod, f"f{j}")(x)) & MASK
            calls += 1
    t2 = time.monotonic()
    ok = total == meta["checksum"]
    print(json.dumps({
        "workload": "pynamic",
        "modules": len(mods),
        "functions": meta["functions"],
        "calls": calls,
        "startup_seconds": None if startup is None else round(startup, 6),
        "startup_source": source,
        "import_seconds": round(t1 - t0, 6),
        "visit_seconds": round(t2 - t1, 6),
        "total_seconds": round(t2 - t0 + (startup or 0.0), 6),
        "checksum_ok": ok,
    }), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
