"""A stream of short one-node jobs submitted from a cluster's login node while something else
happens (a rolling upgrade, a service restart): the load that must come through it unharmed.
Used by the state service's integration test and its benchmark (bench/bench_state.py)."""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

from shoal.errors import ShoalError
from shoal.slurm.client import SlurmClient


class JobStream:
    """`with JobStream(client) as js:` submits `sbatch -N1 --wrap SCRIPT` every INTERVAL seconds
    through CLIENT (the login node's, `shoal.cluster.enter.slurm_client`) until the block ends;
    js.job_ids lists what was accepted. A refused submission (no node available for a moment) is
    not an error: the stream goes on, and whoever checks the jobs afterwards sees only the
    accepted ones."""

    def __init__(self, client: SlurmClient, *, script: str = "sleep 1", interval: float = 0.5) -> None:
        self.client = client
        self.script = script
        self.interval = interval
        self.job_ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._submit, name="jobstream", daemon=True)

    def _submit(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ShoalError):  # refused for a moment: the stream goes on
                self.job_ids.append(self.client.submit_command(self.script, ["-N1", "-o", "/dev/null"]))
            self._stop.wait(self.interval)

    def __enter__(self) -> JobStream:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
