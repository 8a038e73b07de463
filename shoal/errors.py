"""The exception tree of shoal (one root, one top-level handler in shoal.cli.main).

    ShoalError                 expected failure: one-line message + hint, non-zero exit
    ├── ConfigError            bad TOML / bad value (quotes key, value and where)
    ├── DependencyError        missing Debian package or program
    ├── PrivilegeError         needs root (or a privilege the caller lacks)
    ├── CommandError           a subprocess failed (argv, exit code, stdout, stderr)
    │   └── CommandTimeout     ... or ran past its timeout (its process group was killed)
    ├── ClusterError           virtual cluster faults (taken name, node down, ...)
    ├── ImageError             image store, build, export, verify
    ├── DistError              image distribution on the nodes of an allocation
    ├── SlurmError             Slurm client answers we cannot use
    └── StudyError             study spec, run, report

Foreign exceptions (OSError, sqlite3.Error, tomllib.TOMLDecodeError) are translated where they
enter our code; anything else reaching the top is a bug and shows a traceback.
"""

import shlex
from collections.abc import Sequence


def join_argv(argv: "Sequence[str]") -> "str":
    """shlex.join (Python 3.8+) for the nodes' Python 3.6."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class ShoalError(Exception):
    """An expected failure the user can act on."""

    exit_code = 1

    def __init__(self, message: "str", hint: "str | None" = None) -> "None":
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> "str":
        return self.message


class ConfigError(ShoalError):
    exit_code = 2


class DependencyError(ShoalError):
    exit_code = 3


class PrivilegeError(ShoalError):
    exit_code = 4


class CommandError(ShoalError):
    """A command exited non-zero. Carries everything needed to understand why."""

    def __init__(
        self,
        argv: "Sequence[str]",
        returncode: "int",
        stdout: "str",
        stderr: "str",
        hint: "str | None" = None,
        what: "str | None" = None,
    ) -> "None":
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = _tail(stderr) or _tail(stdout)
        label = what or join_argv(self.argv)
        msg = f"{label} failed (exit {returncode})"
        if tail:
            msg += f": {tail}"
        super().__init__(msg, hint)


class CommandTimeout(CommandError):
    def __init__(self, argv: "Sequence[str]", timeout: "float", stdout: "str", stderr: "str") -> "None":
        super().__init__(argv, -9, stdout, stderr, hint="raise the timeout or check what it waits for")
        self.message = f"{join_argv(argv)} timed out after {timeout:g} s"


class ClusterError(ShoalError):
    pass


class ImageError(ShoalError):
    pass


class DistError(ShoalError):
    pass


class SlurmError(ShoalError):
    pass


class StudyError(ShoalError):
    pass


def _tail(text: "str", lines: "int" = 3, width: "int" = 400) -> "str":
    """Last non-empty lines of a command's output, joined on one line."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    joined = " | ".join(kept)
    return joined[-width:]
