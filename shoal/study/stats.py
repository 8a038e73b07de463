"""Statistics of the study: medians with confidence intervals, and whether two differ.

The default interval for a median is the exact distribution-free one from order statistics:
[x(j), x(n+1-j)] covers the true median with probability P(j <= B <= n-j), B ~ Binomial(n, 1/2).
With few repetitions 95 % is out of reach (n = 5 gives at most 93.75 %, the full range), so the
interval records the coverage it really has instead of pretending. A percentile bootstrap (numpy,
fixed seed, so reports are reproducible) serves ratios of medians, where no exact form exists.

"Different" means the two intervals do not overlap: conservative, and easy to state in a report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SEED = 20240601
N_BOOT = 4000


@dataclass(frozen=True)
class Interval:
    estimate: float  # the median (or ratio of medians)
    low: float
    high: float
    n: int
    coverage: float  # the confidence the interval really has (may be below the one asked for)
    method: str  # "order", "bootstrap", "single"

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        e, lo, hi = self.estimate / scale, self.low / scale, self.high / scale
        return f"{_g(e, digits)} [{_g(lo, digits)}, {_g(hi, digits)}]"


def _g(x: float, digits: int) -> str:
    return f"{x:.{digits}g}"


def _binom_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2.0**n


def median_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The median of VALUES with its exact order-statistic confidence interval."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("median of no values")
    med = float(np.median(xs))
    if n == 1:
        return Interval(med, xs[0], xs[0], 1, 0.0, "single")
    best_j = 1
    for j in range(1, n // 2 + 1):
        cov = 1.0 - 2.0 * _binom_cdf(j - 1, n)
        if cov >= confidence:
            best_j = j  # a larger j gives a narrower interval still meeting the confidence
        else:
            break
    coverage = 1.0 - 2.0 * _binom_cdf(best_j - 1, n)
    return Interval(med, xs[best_j - 1], xs[n - best_j], n, coverage, "order")


def bootstrap_median_ci(values: Sequence[float], confidence: float = 0.95,
                        seed: int = SEED, n_boot: int = N_BOOT) -> Interval:
    xs = np.asarray(values, dtype=float)
    if xs.size == 0:
        raise ValueError("median of no values")
    rng = np.random.default_rng(seed)
    samples = rng.choice(xs, size=(n_boot, xs.size), replace=True)
    meds = np.median(samples, axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(meds, [alpha, 1.0 - alpha])
    return Interval(float(np.median(xs)), float(lo), float(hi), int(xs.size), confidence,
                    "bootstrap")


def ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
             seed: int = SEED, n_boot: int = N_BOOT) -> Interval:
    """median(A) / median(B) with a percentile-bootstrap interval (A and B resampled apart)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        raise ValueError("ratio of medians needs values on both sides")
    if float(np.median(xb)) == 0.0:
        raise ValueError("ratio of medians: the denominator's median is 0")
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(xa, size=(n_boot, xa.size), replace=True), axis=1)
    mb = np.median(rng.choice(xb, size=(n_boot, xb.size), replace=True), axis=1)
    keep = mb != 0
    ratios = ma[keep] / mb[keep]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    est = float(np.median(xa) / np.median(xb))
    return Interval(est, float(lo), float(hi), int(min(xa.size, xb.size)), confidence,
                    "bootstrap")


@dataclass(frozen=True)
class Comparison:
    a: Interval
    b: Interval

    @property
    def separated(self) -> bool:
        return not self.a.overlaps(self.b)

    @property
    def faster(self) -> str | None:
        """'a' or 'b' when the intervals are apart (smaller is faster), None when they overlap."""
        if not self.separated:
            return None
        return "a" if self.a.high < self.b.low else "b"

    @property
    def ratio(self) -> float:
        return self.a.estimate / self.b.estimate if self.b.estimate else math.inf


def compare(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    return Comparison(median_ci(a, confidence), median_ci(b, confidence))


def label(ci: Interval) -> str:
    """How sure an interval is, as the report prints it: its true coverage for order-statistic
    intervals (75 % for [min, max] of 3 runs), the nominal level and n for bootstrap ones (which
    cover less than nominal at small n)."""
    if ci.method == "single":
        return "n=1, no interval"
    if ci.method == "order":
        return f"{ci.coverage * 100:.4g} % exact"
    return f"nominal {ci.coverage * 100:.4g} % bootstrap, n={ci.n}"


def _boot_medians(xs: Sequence[float], rng: np.random.Generator, n_boot: int) -> np.ndarray:
    arr = np.asarray(xs, dtype=float)
    return np.asarray(np.median(rng.choice(arr, size=(n_boot, arr.size), replace=True), axis=1))


def log_contrast_ci(a1: Sequence[float], b1: Sequence[float], a2: Sequence[float],
                    b2: Sequence[float], confidence: float = 0.95, seed: int = SEED,
                    n_boot: int = N_BOOT) -> Interval:
    """Interaction on log time: [log a1 - log b1] - [log a2 - log b2], medians, returned as the
    factor exp(contrast) with a percentile bootstrap interval (each cell resampled apart).

    1 means method a's advantage over b is the same under condition 1 and 2 (no interaction);
    an interval excluding 1 means the methods' ratio depends on the condition (the workload)."""
    cells = [a1, b1, a2, b2]
    if any(len(c) == 0 for c in cells) or any(min(c) <= 0 for c in cells):
        raise ValueError("log contrast needs positive values in all four cells")
    rng = np.random.default_rng(seed)
    m = [np.log(_boot_medians(c, rng, n_boot)) for c in cells]
    boot = (m[0] - m[1]) - (m[2] - m[3])
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    est = (math.log(float(np.median(a1))) - math.log(float(np.median(b1)))) - (
        math.log(float(np.median(a2))) - math.log(float(np.median(b2))))
    return Interval(math.exp(est), math.exp(float(lo)), math.exp(float(hi)),
                    min(len(c) for c in cells), confidence, "bootstrap")


def slope_ci(points: Sequence[tuple[float, Sequence[float]]], confidence: float = 0.95,
             seed: int = SEED, n_boot: int = N_BOOT) -> Interval:
    """Least-squares slope of time against node count over the medians at each count, with a
    percentile bootstrap interval (runs resampled within each node count)."""
    pts = [(float(x), list(v)) for x, v in points if len(v)]
    if len({x for x, _ in pts}) < 2:
        raise ValueError("a slope needs at least two node counts")
    xs = np.asarray([x for x, _ in pts])

    def fit(ys: np.ndarray) -> float:
        return float(np.polyfit(xs, ys, 1)[0])

    est = fit(np.asarray([float(np.median(v)) for _, v in pts]))
    rng = np.random.default_rng(seed)
    boot_y = np.stack([_boot_medians(v, rng, n_boot) for _, v in pts], axis=1)
    xc = xs - xs.mean()
    slopes = (boot_y - boot_y.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(slopes, [alpha, 1.0 - alpha])
    return Interval(est, float(lo), float(hi), min(len(v) for _, v in pts), confidence,
                    "bootstrap")


EQUIVALENT = "equivalent"
DIFFERENT_BEYOND_MARGIN = "beyond margin"
DIFFERENT_WITHIN_MARGIN = "different, size not settled"
INCONCLUSIVE = "inconclusive"


def equivalence(a: Sequence[float], b: Sequence[float], margin: float, seed: int = SEED,
                n_boot: int = N_BOOT) -> tuple[str, Interval]:
    """Two one-sided tests on the ratio median(A)/median(B) against a relative MARGIN.

    The 90 % interval of the ratio (each one-sided test at 5 %) inside [1/(1+margin), 1+margin]:
    EQUIVALENT (no difference larger than the margin); entirely outside it: a difference
    larger than the margin; excluding 1 but reaching into the margin: a difference whose size
    against the margin is not settled; otherwise INCONCLUSIVE (more repetitions needed)."""
    ci = ratio_ci(a, b, confidence=0.90, seed=seed, n_boot=n_boot)
    lo_m, hi_m = 1.0 / (1.0 + margin), 1.0 + margin
    if lo_m <= ci.low and ci.high <= hi_m:
        return EQUIVALENT, ci
    if ci.low > hi_m or ci.high < lo_m:
        return DIFFERENT_BEYOND_MARGIN, ci
    if ci.low > 1.0 or ci.high < 1.0:
        return DIFFERENT_WITHIN_MARGIN, ci
    return INCONCLUSIVE, ci
