"""The answers of the study as data: what report.md renders as prose and answers.json stores.

One ``Answer`` per question: its verdict in prose (rendered from the data below, for report.md and
the CLI), a machine-readable ``code``, the ``effect`` (a ratio or slope) with its ``interval``
where one number answers the question, the ``Finding`` of every comparison it rests on (group,
verdict, effect, interval with its true coverage, experiment ids), the experiments it cites and
the caveats that touch it. Tests assert on these fields, not on the English; ``to_dict`` is the
JSON schema of answers.json (``ANSWERS_FORMAT``). shoal.study.answers computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.study import stats

ANSWERS_FORMAT = 1
NOT_SUPPORTED = "not supported by the data"


def interval_dict(ci: stats.Interval | None) -> dict[str, Any] | None:
    """An interval as JSON, labelled with the coverage it really has."""
    if ci is None:
        return None
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n,
            "coverage": ci.coverage, "method": ci.method, "label": stats.label(ci)}


@dataclass
class Finding:
    """One comparison an answer rests on."""

    group: dict[str, Any]  # workload, image, nodes, methods compared ...
    verdict: str  # machine-readable: a method name, "overlap", "equivalent", "interaction", ...
    effect: float | None = None  # ratio or slope the verdict is about
    interval: stats.Interval | None = None
    experiments: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "verdict": self.verdict, "effect": self.effect,
                "interval": interval_dict(self.interval), "experiments": self.experiments}


@dataclass
class Answer:
    number: int
    question: str
    verdict: str  # prose, rendered from the fields below
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    cites: list[str] = field(default_factory=list)  # experiment ids
    code: str = "not_supported"  # machine-readable verdict
    effect: float | None = None
    interval: stats.Interval | None = None
    findings: list[Finding] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=dict)  # e.g. Q2 without sbcast-squashfs

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "question": self.question, "verdict": self.verdict,
                "code": self.code, "effect": self.effect, "interval": interval_dict(self.interval),
                "experiments": sorted(set(self.cites)),
                "findings": [f.to_dict() for f in self.findings], "caveats": self.caveats,
                "variants": self.variants}
