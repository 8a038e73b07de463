"""A stream of short one-node jobs submitted from a cluster's login node while something else
happens (a rolling upgrade, a service restart): the load that must come through it unharmed.
Used by the state service's integration test and its benchmark (bench/bench_state.py)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType

from shoal.runner import run


class JobStream:
    """`with JobStream(prefix) as js:` submits `sbatch -N1 --wrap SCRIPT` every INTERVAL seconds
    through PREFIX (the login node's enter prefix) until the block ends; js.job_ids lists what
    was accepted. A refused submission (no node available for a moment) is not an error: the
    stream goes on, and whoever checks the jobs afterwards sees only the accepted ones."""

    def __init__(self, prefix: Sequence[str], *, script: str = "sleep 1", interval: float = 0.5) -> None:
        self.prefix = list(prefix)
        self.script = script
        self.interval = interval
        self.job_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._submit, name="jobstream", daemon=True)

    def _submit(self) -> None:
        argv = [*self.prefix, "sbatch", "--parsable", "-N1", "-o", "/dev/null", "--wrap", self.script]
        while not self._stop.is_set():
            out = run(argv, check=False)
            if out.returncode == 0:
                self.job_ids.append(int(out.stdout.strip().split(";")[0]))
            self._stop.wait(self.interval)

    def __enter__(self) -> JobStream:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
