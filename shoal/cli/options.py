"""CLI conventions shared by every `shoal` command (one place, so all commands agree).

- ``--cluster NAME`` names a virtual cluster everywhere (``--name`` is an alias); the environment
  variable ``SHOAL_CLUSTER`` is the default. Commands that can also talk to the Slurm on PATH (a
  real site: run, dist, study) use it only when it is given or set.
- ``--json`` prints one JSON document to stdout and nothing else there (tables, progress and
  messages go to stderr); the documents are described in docs/JSON.md and checked against
  ``shoal.cli.jsonout.SCHEMAS``.
- Durations take Slurm's formats with Slurm's meaning (a bare number is minutes).
- Tables are never cut to the terminal width when stdout is not a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from shoal import limits
from shoal.slurm import timespec

F = TypeVar("F", bound=Callable[..., Any])

CLUSTER_ENV = "SHOAL_CLUSTER"
DEFAULT_CLUSTER = "shoal"


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); lines are not wrapped when the stream is piped."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=not stream.isatty())


def _full_width(con: Console, renderable: Any) -> Any:
    """A table as wide as its content when the stream is not a terminal: piped output is read
    by programs and people with wide windows, never cut to 80 columns with ellipses."""
    if con.is_terminal or not isinstance(renderable, Table):
        return renderable
    wide = con.options.update(max_width=100_000)
    need = Measurement.get(con, wide, renderable).maximum
    if need > con.width:
        renderable.width = need
    return renderable


_json_mode = [False]  # set by --json for the running command; reset by main() for each call


def set_json_mode(on: bool) -> None:
    _json_mode[0] = on


class LazyConsole:
    """A module-level console that looks at the streams when it prints (tests swap them); in
    --json mode its output goes to stderr so that stdout carries only the document."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    def _get(self) -> Console:
        return console(self.stderr or _json_mode[0])

    def real(self) -> Console:
        """A rich Console for code that wants one (progress bars, live displays)."""
        return self._get()

    def print(self, *args: Any, **kw: Any) -> None:
        con = self._get()
        items = [_full_width(con, a) for a in args]
        if any(isinstance(a, Table) and a.width and a.width > con.width for a in items):
            con = Console(stderr=con.stderr, highlight=False, soft_wrap=True,
                          width=max(a.width or 0 for a in items if isinstance(a, Table)))
        con.print(*items, **kw)

    def rule(self, *args: Any, **kw: Any) -> None:
        self._get().rule(*args, **kw)

    def status(self, *args: Any, **kw: Any) -> Any:
        return self._get().status(*args, **kw)


def cluster_option(*, required_default: bool) -> Callable[[F], F]:
    """--cluster NAME (alias --name), default from $SHOAL_CLUSTER.

    required_default: the cluster commands always act on a virtual cluster and fall back to
    'shoal'; run/dist/study fall back to the Slurm on PATH (None)."""
    default = DEFAULT_CLUSTER if required_default else None
    where = f"default ${CLUSTER_ENV}, else " + (f"{DEFAULT_CLUSTER!r}" if required_default
                                                else "the Slurm on PATH (a real site)")
    return click.option("--cluster", "--name", "cluster", envvar=CLUSTER_ENV, default=default,
                        show_envvar=False, metavar="NAME",
                        help=f"Virtual cluster name ({where}).")


def cluster_from_env() -> str | None:
    return os.environ.get(CLUSTER_ENV) or None


def _json_cb(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    set_json_mode(bool(value))
    return bool(value)


json_option = click.option("--json", "as_json", is_flag=True, is_eager=True, callback=_json_cb,
                           help="Print one JSON document to stdout (schema: docs/JSON.md).")


class SlurmTime(click.ParamType):  # type: ignore[type-arg]
    """A duration in Slurm's formats; the value is seconds (float)."""

    name = "TIME"

    def __init__(self, max_seconds: float, too_long: str) -> None:
        self.max_seconds = max_seconds
        self.too_long = too_long

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):  # already converted (click may convert twice)
            return value
        secs = timespec.parse_seconds(value)
        if secs is None or secs <= 0:
            self.fail(f"{value!r} is not a positive time; {timespec.HELP}", param, ctx)
        assert secs is not None
        if secs > self.max_seconds:
            self.fail(f"{value!r} is longer than {timespec.to_slurm(self.max_seconds)}; {self.too_long}",
                      param, ctx)
        return secs


# A step's timeout (staging, cleanup) and an allocation's time limit: both refuse NaN, zero and
# negatives; a step longer than a day is a hang, an allocation longer than a year a typo.
STEP_TIME = SlurmTime(limits.MAX_TIMEOUT_S, "a step that long is a hang, not a measurement")
SLURM_TIME = SlurmTime(365 * 86400.0, "give the allocation a time limit Slurm can schedule")
# A node count for an allocation shoal makes: refused at parse time (0, negative, absurd), not by sbatch.
NODE_COUNT = click.IntRange(1, limits.MAX_NODES)


def time_option(*names: str, default: str, help: str, step: bool = False) -> Callable[[F], F]:
    """A duration option; step=True bounds it as a step's timeout, else as an allocation's."""
    return click.option(*names, type=STEP_TIME if step else SLURM_TIME, default=default, show_default=True,
                        help=f"{help} ({timespec.HELP}).")
