"""Durations as Slurm writes them, with Slurm's meaning: the one parser for every time shoal takes.

Slurm (sbatch --time): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; a bare number
is MINUTES. shoal also takes unit forms, which cannot be misread: ``90s``, ``10m``, ``2h``,
``1h30m``, ``1d``. A TOML integer or float is a bare number, hence minutes too.
"""

from __future__ import annotations

import math
import re
from typing import Any

HELP = "Slurm time: MIN, MIN:SEC, H:M:S, D-H[:M[:S]] (a bare number is minutes) or 90s/10m/2h"

_UNITS = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")
_DAYS = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?::(\d+))?$")
_COLON = re.compile(r"^(\d+(?:\.\d+)?)(?::(\d+))?(?::(\d+))?$")


def parse_seconds(value: Any) -> float | None:
    """Seconds of a Slurm-style duration (see the module doc); None if VALUE is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) * 60.0 if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower().replace(" ", "")
    if not text:
        return None
    m = _DAYS.match(text)
    if m:
        days, hours, mins, secs = (int(g) if g else 0 for g in m.groups())
        return float(((days * 24 + hours) * 60 + mins) * 60 + secs)
    m = _COLON.match(text)
    if m:
        a, b, c = m.groups()
        if c is not None:  # H:M:S
            return float(a) * 3600 + int(b) * 60 + int(c)
        if b is not None:  # M:S
            return float(a) * 60 + int(b)
        return float(a) * 60  # M: Slurm's bare number
    m = _UNITS.match(text)
    if m and any(m.groups()):
        fd, fh, fm, fs = (float(g) if g else 0.0 for g in m.groups())
        return ((fd * 24 + fh) * 60 + fm) * 60 + fs
    return None


def to_slurm(seconds: float) -> str:
    """A time limit for sbatch --time: D-HH:MM:SS, rounded up to whole seconds."""
    total = max(1, math.ceil(seconds))
    d, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def show(seconds: float) -> str:
    """Human form for help and messages: 90 s, 10 min, 1 h 30 min."""
    if seconds < 120 and seconds != int(seconds / 60) * 60:
        return f"{seconds:g} s"
    mins = seconds / 60
    return f"{mins:g} min" if mins < 120 else f"{mins / 60:g} h"
