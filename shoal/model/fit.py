"""Fit the cost model's three parameters per (method, workload), predict, and validate.

The fit minimises relative residuals (a 2 s run off by 1 s matters as much as a 200 s run off by
100 s) with bounded least squares; its uncertainty is a bootstrap over the observed runs, so a
band is wide exactly where the runs disagree with each other or with the model's shape.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

from shoal.errors import ShoalError
from shoal.model.terms import PHASES, Observation, Params, cpu_time, predict_time, shared_floor

BOOTSTRAP = 100
# eta is a factor over a physical floor, so it cannot be below 1; where the data never let the
# shared term bind, the fit leaves it at 1 (the floor: optimistic) and says it is unidentified.
# Launch terms are seconds and cannot be negative.
_LOWER = (1.0, 0.0, 0.0)
_UPPER = (1000.0, 600.0, 120.0)


class ModelError(ShoalError):
    exit_code = 2


@dataclass(frozen=True)
class Group:
    """One (method, workload): its parameters, bootstrap draws and the per-node template."""

    method: str
    workload: str
    params: Params
    draws: tuple[Params, ...]
    template: Observation  # medians of what one node measured, used to predict elsewhere
    n_obs: int
    shared_identified: bool  # False when no observation exercised a shared term
    rel_rmse: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.workload)


def _residuals(obs: Sequence[Observation]) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        p = Params(float(x[0]), float(x[1]), float(x[2]))
        return np.array([(predict_time(p, o) - o.seconds) / o.seconds for o in obs])

    return fn


def fit_params(obs: Sequence[Observation], start: Params | None = None) -> tuple[Params, bool]:
    """Least-squares parameters for one group; eta is pinned to 1 when nothing identifies it.

    ``start``: one starting point instead of several (bootstrap refits start from the full fit).
    """
    if not obs:
        raise ModelError("no observations to fit", hint="run a study with this method first")
    shared = any(shared_floor(o.method, ph, o) > 0 for o in obs for ph in PHASES)
    fn = _residuals(obs)
    if shared:
        # max(cpu, eta*shared) is flat in eta wherever CPU dominates, so one start can stall
        # there: start from several etas and keep the best fit
        starts = [[start.eta, start.l0, start.l1]] if start else \
            [[eta0, 0.5, 0.1] for eta0 in (1.0, 2.0, 4.0, 16.0)]
        best = min((least_squares(fn, x0=x0, bounds=(_LOWER, _UPPER)) for x0 in starts),
                   key=lambda r: float(r.cost))
        x = best.x
        p = Params(float(x[0]), float(x[1]), float(x[2]))
        # identified only if the shared term decides some phase of some run at the fit
        shared = any(p.eta * shared_floor(o.method, ph, o) > cpu_time(o, ph)
                     for o in obs for ph in PHASES)
    else:
        # eta multiplies zero everywhere: fit only the launch terms
        res = least_squares(lambda y: fn(np.array([1.0, y[0], y[1]])), x0=[0.5, 0.1],
                            bounds=(_LOWER[1:], _UPPER[1:]))
        x = np.array([1.0, *res.x])
    return Params(float(x[0]), float(x[1]), float(x[2])), shared


def _template(obs: Sequence[Observation]) -> Observation:
    """What one node needs, independent of N: medians over all runs of the group."""
    def med(get: Callable[[Observation], float]) -> float:
        return float(statistics.median(get(o) for o in obs))

    phases = {ph for o in obs for ph in o.cpu}
    return replace(
        obs[0],
        image_bytes=med(lambda o: o.image_bytes),
        read_bytes=med(lambda o: o.read_bytes),
        files_read=med(lambda o: o.files_read),
        local_bytes=med(lambda o: o.local_bytes),
        cpu={ph: float(statistics.median(o.cpu.get(ph, 0.0) for o in obs))
             for ph in sorted(phases)},
        seconds=0.0,
    )


def fit(observations: Iterable[Observation], *, seed: int = 0,
        bootstrap: int = BOOTSTRAP) -> list[Group]:
    by: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for o in observations:
        if o.seconds > 0:
            by[(o.method, o.workload)].append(o)
    if not by:
        raise ModelError("no usable runs (none with a positive time-to-solution)",
                         hint="check that the study's runs completed: shoal study status DIR")
    rng = np.random.default_rng(seed)
    groups = []
    for (method, workload), obs in sorted(by.items()):
        params, ident = fit_params(obs)
        draws = []
        for _ in range(bootstrap if len(obs) > 2 else 0):
            sample = [obs[i] for i in rng.integers(0, len(obs), len(obs))]
            draws.append(fit_params(sample, start=params)[0])
        rel = [(predict_time(params, o) - o.seconds) / o.seconds for o in obs]
        groups.append(Group(method, workload, params, tuple(draws), _template(obs), len(obs),
                            ident, math.sqrt(statistics.fmean(r * r for r in rel))))
    return groups


@dataclass(frozen=True)
class Prediction:
    method: str
    workload: str
    nodes: int
    seconds: float
    low: float
    high: float
    feasible: bool  # False when a node-local copy would not fit in the node's memory


def predict(group: Group, at: Observation, *, cores_per_node: float | None,
            node_memory_bytes: float | None = None) -> Prediction:
    """Time-to-solution of `group` at the nodes and fabric of `at`, with a 90 % bootstrap band."""
    mid = predict_time(group.params, at, cores_per_node=cores_per_node)
    draws = [predict_time(p, at, cores_per_node=cores_per_node) for p in group.draws]
    low, high = (float(np.percentile(draws, 5)), float(np.percentile(draws, 95))) if draws \
        else (mid, mid)
    feasible = node_memory_bytes is None or at.local_bytes <= node_memory_bytes
    return Prediction(group.method, group.workload, at.nodes, mid, min(low, mid), max(high, mid),
                      feasible)


def relative_errors(groups: Sequence[Group], held_out: Iterable[Observation]) \
        -> dict[tuple[str, str], list[float]]:
    """|predicted - measured| / measured per group, predicting on the emulator's own terms."""
    table = {g.key: g for g in groups}
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for o in held_out:
        g = table.get((o.method, o.workload))
        if g is not None and o.seconds > 0:
            out[g.key].append(abs(predict_time(g.params, o) - o.seconds) / o.seconds)
    return dict(out)


def leave_largest_n_out(obs: Sequence[Observation]) -> dict[tuple[str, str], list[float]]:
    """Fit each group without its largest node count, predict that node count."""
    errors: dict[tuple[str, str], list[float]] = {}
    by: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for o in obs:
        by[(o.method, o.workload)].append(o)
    for group_obs in by.values():
        top = max(o.nodes for o in group_obs)
        train = [o for o in group_obs if o.nodes < top]
        if len({o.nodes for o in train}) < 2:
            continue  # one node count cannot separate launch from shared terms
        errors.update(relative_errors(fit(train, bootstrap=0), [o for o in group_obs
                                                                 if o.nodes == top]))
    return errors


def leave_one_network_out(obs: Sequence[Observation]) -> dict[str, dict[tuple[str, str],
                                                                          list[float]]]:
    """For each network profile: fit on the others, predict its runs."""
    nets = sorted({o.network for o in obs})
    out = {}
    for net in nets if len(nets) > 1 else []:
        train = [o for o in obs if o.network != net]
        test = [o for o in obs if o.network == net]
        out[net] = relative_errors(fit(train, bootstrap=0), test)
    return out
