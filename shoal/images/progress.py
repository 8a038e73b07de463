"""Progress display for long image steps (debootstrap, ch-image build, exports).

A spinner with elapsed time on stderr while a step runs, and one line with its duration after.
Quiet when stderr is not a terminal except for that final line, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    start = time.monotonic()
    ok = False
    try:
        with console.status(f"{label} ...", spinner="dots"):
            yield
        ok = True
    finally:
        took = time.monotonic() - start
        mark = "[green]done[/]" if ok else "[red]failed[/]"
        console.print(f"{label}: {mark} in {took:.1f} s")
