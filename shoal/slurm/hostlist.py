"""Slurm host lists: the one implementation in shoal (expand and fold), node side included.

``expand`` is ``scontrol show hostnames``; ``compress`` is ``scontrol show hostlist`` (order kept,
adjacent hosts folded) and, with ``sort=True``, ``scontrol show hostlistsorted``. Both are checked
against output captured from Slurm 22.05 (tests/unit/data/scontrol_hostlist_22.05.tsv).

Runs on the nodes too (it ships in the agent bundle): Python 3.6, so annotations are strings.
"""

import re

from shoal.errors import SlurmError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_SUFFIX = re.compile(r"^(.*?)(\d+)$")


def expand(hostlist: "str | None") -> "list[str]":
    """Expand a Slurm host list (``node[01-03,7],other``) into host names, in order."""
    if not hostlist or hostlist in ("(null)", "None"):
        return []
    names: "list[str]" = []
    for part in _split_top(hostlist):
        names.extend(_expand_one(part, hostlist))
    return names


def _split_top(text: "str") -> "list[str]":
    """Split on commas that are not inside brackets."""
    parts: "list[str]" = []
    depth = 0
    cur: "list[str]" = []
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


def _expand_one(part: "str", whole: "str") -> "list[str]":
    m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", part)
    if not m:
        return [part]
    prefix, ranges, rest = m.groups()
    out: "list[str]" = []
    for rng in ranges.split(","):
        r = _RANGE.match(rng.strip())
        if not r:
            raise SlurmError(f"cannot parse host list {whole!r} (range {rng!r})")
        lo_s, hi_s = r.group(1), r.group(2) or r.group(1)
        width = len(lo_s) if lo_s.startswith("0") else 0
        for i in range(int(lo_s), int(hi_s) + 1):
            for tail in _expand_one(rest, whole) if rest else [""]:
                out.append("{}{:0{}d}{}".format(prefix, i, width, tail))
    return out


class _Range:
    """Hosts prefix+lo .. prefix+hi; ``width`` > 0 only for zero-padded numbers (``n007``)."""

    __slots__ = ("hi", "lo", "prefix", "width")

    def __init__(self, prefix: "str", lo: "int | None", width: "int") -> "None":
        self.prefix = prefix
        self.lo = lo
        self.hi = lo
        self.width = width

    def text(self) -> "str":
        if self.lo is None:
            return ""
        lo = "{:0{}d}".format(self.lo, self.width)
        return lo if self.lo == self.hi else "{}-{:0{}d}".format(lo, self.hi, self.width)


def _host(name: "str") -> "tuple[str, int | None, int, int]":
    """(prefix, number or None, padded width or 0, digit count) of one host name."""
    m = _SUFFIX.match(name)
    if not m:
        return name, None, 0, 0
    prefix, digits = m.groups()
    padded = len(digits) > 1 and digits.startswith("0")
    return prefix, int(digits), len(digits) if padded else 0, len(digits)


def _width_ok(r: "_Range", width: "int", ndigits: "int") -> "bool":
    # Slurm folds n9,n10 (neither padded) and n09,n10 (same width); never n1 with n01
    if r.width == 0:
        return width == 0
    return (width or ndigits) == r.width


def compress(names: "list[str]", sort: "bool" = False) -> "str":
    """Fold names into a host list as ``scontrol show hostlist`` does (``sort``: hostlistsorted).

    Order is kept and duplicates stay (Slurm's own behaviour): ``n3,n1,n2`` -> ``n[3,1-2]``.
    """
    hosts = [_host(n) for n in names]
    if sort:
        hosts.sort(key=lambda h: (h[0], h[1] is not None, h[2] or h[3], h[1] or 0))
    ranges: "list[_Range]" = []
    for prefix, num, width, ndigits in hosts:
        last = ranges[-1] if ranges else None
        if (last is not None and num is not None and last.hi is not None and last.prefix == prefix
                and num == last.hi + 1 and _width_ok(last, width, ndigits)):
            last.hi = num
            continue
        ranges.append(_Range(prefix, num, width))
    out: "list[str]" = []
    i = 0
    while i < len(ranges):
        r = ranges[i]
        if r.lo is None:
            out.append(r.prefix)
            i += 1
            continue
        group = [r]
        while (i + len(group) < len(ranges) and ranges[i + len(group)].prefix == r.prefix
               and ranges[i + len(group)].lo is not None):
            group.append(ranges[i + len(group)])
        if len(group) == 1 and r.lo == r.hi:
            out.append(r.prefix + r.text())
        else:
            out.append("{}[{}]".format(r.prefix, ",".join(g.text() for g in group)))
        i += len(group)
    return ",".join(out)
