"""The one way shoal runs a command.

argv lists only (never a shell string), logged shell-quoted, stdin closed unless input is given, a
timeout that kills the whole process group, and a CommandError carrying argv/stdout/stderr/code.
Slurm, Charliecloud, iproute2 and mount are reached only through here, so tests can swap the runner
(``use_runner``) for recorded output, and dry-run is a branch here, not a second code path.
"""

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from shoal.errors import CommandError, CommandTimeout, DependencyError, join_argv

log = logging.getLogger("shoal.run")

DEFAULT_TIMEOUT = 300.0


class Completed(NamedTuple):
    """A finished command (a NamedTuple, not a dataclass: this module runs on Python 3.6)."""

    argv: "list[str]"
    returncode: "int"
    stdout: "str"
    stderr: "str"
    seconds: "float"


class Runner:
    """Runs commands for real (or, with dry_run, only logs them and reports success)."""

    def __init__(self, dry_run: "bool" = False) -> "None":
        self.dry_run = dry_run

    def run(
        self,
        argv: "Sequence[str]",
        *,
        check: "bool" = True,
        timeout: "float | None" = DEFAULT_TIMEOUT,
        input: "str | bytes | None" = None,
        env: "Mapping[str, str] | None" = None,
        cwd: "str | os.PathLike[str] | None" = None,
        hint: "str | None" = None,
        what: "str | None" = None,
        capture: "bool" = True,
    ) -> "Completed":
        args = [os.fspath(a) for a in argv]
        log.debug("run: %s", join_argv(args))
        if self.dry_run:
            return Completed(args, 0, "", "", 0.0)
        full_env = None
        if env is not None:
            full_env = dict(os.environ)
            full_env.update(env)
        data = input.encode() if isinstance(input, str) else input
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE if capture else None,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise DependencyError(
                f"program not found: {args[0]}",
                "run 'make setup' to install shoal's Debian packages",
            ) from exc
        try:
            out_b, err_b = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out_b, err_b = proc.communicate()
            raise CommandTimeout(args, timeout or 0, _dec(out_b), _dec(err_b)) from None
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        done = Completed(args, proc.returncode, _dec(out_b), _dec(err_b), time.monotonic() - start)
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, done.stdout, done.stderr, hint=hint, what=what)
        return done


    def spawn(
        self,
        argv: "Sequence[str]",
        *,
        log_path: "str | os.PathLike[str]",
        env: "Mapping[str, str] | None" = None,
    ) -> "int":
        """Start a long-running process detached in its own session; output goes to log_path.

        Returns its pid (0 in dry-run). The caller owns the process and must stop it by pid.
        """
        args = [os.fspath(a) for a in argv]
        log.debug("spawn: %s", join_argv(args))
        if self.dry_run:
            return 0
        full_env = dict(os.environ)
        if env is not None:
            full_env.update(env)
        with open(log_path, "ab") as out:
            try:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise DependencyError(
                    f"program not found: {args[0]}",
                    "run 'make setup' to install shoal's Debian packages",
                ) from exc
        _children.append(proc)
        return proc.pid


# Popen objects of spawned daemons, kept so they are reaped (no zombies) when they exit.
_children: "list[subprocess.Popen[bytes]]" = []


def wait(pid: "int", timeout: "float") -> "int":
    """Exit code of spawned process `pid`, waiting up to `timeout` s (0 in dry-run; raises
    CommandTimeout and kills its process group when it takes longer)."""
    proc = next((p for p in _children if p.pid == pid), None)
    if proc is None:
        return 0
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(pid)
        proc.wait()
        raise CommandTimeout([str(a) for a in proc.args], timeout, "", "") from None  # type: ignore[union-attr]
    _children.remove(proc)
    return code


def stop(pid: int) -> None:
    """Kill spawned process `pid` with its whole process group and reap it (no-op if it is not
    one of ours or already collected)."""
    proc = next((p for p in _children if p.pid == pid), None)
    if proc is None:
        return
    _kill_group(pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.returncode is not None:
        _children.remove(proc)


def reap() -> "None":
    """Collect exited spawned processes."""
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


def _dec(b: "bytes | None") -> "str":
    return b.decode(errors="replace") if b else ""


def _kill_group(pid: "int") -> "None":
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


_current = Runner()


def get_runner() -> "Runner":
    return _current


@contextlib.contextmanager
def use_runner(runner: "Runner") -> "Iterator[Runner]":
    """Swap the process-wide runner (tests: recorded output; CLI: --dry-run)."""
    global _current
    old, _current = _current, runner
    try:
        yield runner
    finally:
        _current = old


def run(
    argv: "Sequence[str]",
    *,
    check: "bool" = True,
    timeout: "float | None" = DEFAULT_TIMEOUT,
    input: "str | bytes | None" = None,
    env: "Mapping[str, str] | None" = None,
    cwd: "str | os.PathLike[str] | None" = None,
    hint: "str | None" = None,
    what: "str | None" = None,
    capture: "bool" = True,
) -> "Completed":
    """Run argv with the current runner (see Runner.run)."""
    return _current.run(
        argv, check=check, timeout=timeout, input=input, env=env, cwd=cwd, hint=hint,
        what=what, capture=capture,
    )


def spawn(
    argv: "Sequence[str]",
    *,
    log_path: "str | os.PathLike[str]",
    env: "Mapping[str, str] | None" = None,
) -> "int":
    """Start a daemon with the current runner (see Runner.spawn)."""
    return _current.spawn(argv, log_path=log_path, env=env)
