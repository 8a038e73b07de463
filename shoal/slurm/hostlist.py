"""Slurm host lists: expand ``n[1-3,07],login`` into names and fold names back into ranges."""

from __future__ import annotations

import re

from shoal.errors import SlurmError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand(hostlist: str | None) -> list[str]:
    """Expand a Slurm host list (``node[01-03,7],other``) into host names, in order."""
    if not hostlist or hostlist in ("(null)", "None"):
        return []
    names: list[str] = []
    for part in _split_top(hostlist):
        names.extend(_expand_one(part, hostlist))
    return names


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_one(part: str, whole: str) -> list[str]:
    m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", part)
    if not m:
        return [part]
    prefix, ranges, rest = m.groups()
    out: list[str] = []
    for rng in ranges.split(","):
        r = _RANGE.match(rng.strip())
        if not r:
            raise SlurmError(f"cannot parse host list {whole!r} (range {rng!r})")
        lo_s, hi_s = r.group(1), r.group(2) or r.group(1)
        width = len(lo_s) if lo_s.startswith("0") else 0
        for i in range(int(lo_s), int(hi_s) + 1):
            for tail in _expand_one(rest, whole) if rest else [""]:
                out.append(f"{prefix}{i:0{width}d}{tail}")
    return out


def compress(names: list[str]) -> str:
    """Fold names into a host list (``n[1-3,5]``); the inverse of expand for simple names."""
    groups: dict[tuple[str, int], list[int]] = {}
    plain: list[str] = []
    order: list[tuple[str, int] | str] = []
    for name in names:
        m = re.match(r"^(.*?)(\d+)$", name)
        if not m:
            plain.append(name)
            order.append(name)
            continue
        prefix, digits = m.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        key = (prefix, width)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(digits))
    out: list[str] = []
    for item in order:
        if isinstance(item, str):
            out.append(item)
            continue
        prefix, width = item
        nums = sorted(set(groups[item]))
        if len(nums) == 1:
            out.append(f"{prefix}{nums[0]:0{width}d}")
            continue
        spans: list[str] = []
        start = prev = nums[0]
        for n in [*nums[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            spans.append(
                f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}"
            )
            if n is not None:
                start = prev = n
        out.append(f"{prefix}[{','.join(spans)}]")
    return ",".join(out)
