"""Expansion of a study spec into plain experiment records, before anything runs.

An ``Experiment`` is one combination of factors (image, method, workload, nodes); its id is the
first 12 hex digits of the sha256 of the canonical JSON of those factors, so the same combination
gets the same id in every study, on every machine, whatever the order of the spec's lists. A
``RunKey`` is one repetition of one experiment. Order is deterministic: the spec's list order,
factors nested image > method > workload > nodes, and runs ordered repetition-major (all
experiments once, then all again) so a study stopped early still covers the whole matrix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.study.spec import FACTORS, StudySpec

ID_LEN = 12


@dataclass(frozen=True)
class Experiment:
    image: str
    method: str
    workload: str
    nodes: int

    @property
    def factors(self) -> dict[str, str | int]:
        return {"image": self.image, "method": self.method, "workload": self.workload,
                "nodes": self.nodes}

    @property
    def id(self) -> str:
        return experiment_id(self.factors)

    def label(self) -> str:
        return f"{self.method}/{self.workload}/{self.image}/N={self.nodes}"


@dataclass(frozen=True)
class RunKey:
    experiment: Experiment
    rep: int

    @property
    def name(self) -> str:
        """File-name stem of this run: ``<experiment id>-r<rep>`` (``-w`` for the warm-up)."""
        if self.rep < 0:
            return f"{self.experiment.id}-w"
        return f"{self.experiment.id}-r{self.rep}"


def experiment_id(factors: Mapping[str, Any]) -> str:
    canonical = json.dumps(dict(factors), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_LEN]


def _matches(rule: Mapping[str, Any], assignment: Mapping[str, Any]) -> bool:
    return all(assignment.get(k) == v for k, v in rule.items())


def expand(spec: StudySpec) -> list[Experiment]:
    """Every experiment of SPEC: the cross product of its factors, zip groups varying together,
    exclude rules applied, duplicates dropped, in deterministic order."""
    zipped = {f: group for group in spec.zip for f in group}
    axes: list[list[dict[str, Any]]] = []
    for factor in FACTORS:
        group = zipped.get(factor)
        if group is None:
            axes.append([{factor: v} for v in spec.values(factor)])
        elif group[0] == factor:
            columns = [spec.values(f) for f in group]
            axes.append([dict(zip(group, row, strict=True)) for row in zip(*columns, strict=True)])
        # later members of a zip group are covered by the group's first factor
    out: list[Experiment] = []
    seen: set[str] = set()
    for combo in itertools.product(*axes):
        assignment: dict[str, Any] = {}
        for part in combo:
            assignment.update(part)
        if any(_matches(rule, assignment) for rule in spec.exclude):
            continue
        exp = Experiment(image=str(assignment["image"]), method=str(assignment["method"]),
                         workload=str(assignment["workload"]), nodes=int(assignment["nodes"]))
        if exp.id not in seen:
            seen.add(exp.id)
            out.append(exp)
    return out


WARMUP_REP = -1  # the discarded warm-up run of an experiment


def runs(experiments: Iterable[Experiment], repetitions: int | Callable[[Experiment], int],
         seed: int | None = None, warmup: bool = False) -> list[RunKey]:
    """The runs in the order they go: repetition-major, so a study stopped early still covers
    the whole matrix; within each repetition shuffled from SEED (a different order per
    repetition, the same on every resume), so drift of the machine over time (other load, a
    warming cache) is spread over all experiments instead of riding on the matrix order.
    With WARMUP, one discarded warm-up run per experiment (rep = WARMUP_REP) goes right before
    the experiment's first measured run: it warms that experiment's own path (binaries, the
    image's first read, Slurm's first step on those nodes), and a study stopped early still has
    measured runs of everything it reached."""
    exps = list(experiments)
    count = repetitions if callable(repetitions) else (lambda _e: repetitions)
    most = max((count(e) for e in exps), default=0)
    out: list[RunKey] = []
    for rep in range(most):
        block = [e for e in exps if rep < count(e)]
        if seed is not None:
            random.Random(f"{seed}:{rep}").shuffle(block)
        for e in block:
            if warmup and rep == 0:
                out.append(RunKey(e, WARMUP_REP))
            out.append(RunKey(e, rep))
    return out
