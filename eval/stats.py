"""Error bars for accuracies and for differences between methods, in numpy only.

A run grades the same problems under every method, so the comparisons that matter are paired:
method and baseline on one problem are not independent draws. Everything here works on 0/1
outcomes per problem (True/False; None means "not gradable" and is dropped before this module).

    >>> wilson_interval(27, 120)                      # 22.5% of 120 problems
    (0.1594..., 0.3075...)
    >>> mcnemar_p(5, 1)                               # 5 problems lost, 1 gained
    0.21875
    >>> d = paired_difference({"a": True, "b": False, "c": True}, {"a": True, "b": True, "c": False})
    >>> d.n, d.diff, d.only_method, d.only_baseline
    (3, 0.0, 1, 1)

Bootstrap intervals resample problems with replacement. For data with few distinct values
(0/1 outcomes, paired differences in {-1, 0, 1}) resampling n problems is the same as drawing
the count of each value from a multinomial with the observed frequencies, so B resamples cost
B multinomial draws instead of B x n indices; the result is the ordinary percentile bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
N_RESAMPLES = 10_000


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default); (nan, nan) when n = 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not zero-width at 0/n or n/n:

        >>> wilson_interval(0, 10)
        (0.0, 0.2775...)
        >>> wilson_interval(5, 10)
        (0.2365..., 0.7634...)
    """
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:  # k and n may be fractional (an effective count, `average_interval`)
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the bounds at 0/n and n/n are exactly 0 and 1; the formula leaves rounding noise there
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement, same size) of `values`; shape (B,)."""
    vals, counts = np.unique(values, return_counts=True)  # (U,), (U,)
    n = int(counts.sum())
    draws = rng.multinomial(n, counts / n, size=n_resamples)  # (B, U) counts of each distinct value
    return draws @ vals / n  # (B,)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_interval(values: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per problem).

    The alternative to `wilson_interval` for a single set; `stratified_interval` is the one for an
    average over sets. Reproducible for a given seed:

        >>> bootstrap_interval([1] * 5 + [0] * 5, seed=0)
        (0.2, 0.8)
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return _percentiles(_bootstrap_means(v, np.random.default_rng(seed), n_resamples), level)


def stratified_interval(groups: Sequence[Sequence[float]], n_resamples: int = N_RESAMPLES, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the average of per-group means, resampling within each group.

    Each set keeps its size in every resample, so a 30-problem set weighs as much in the average
    as a 500-problem one (as in the reported "average over sets") and contributes its own, larger
    noise:

        >>> stratified_interval([[1, 0] * 250, [1] * 3 + [0] * 27], seed=0)   # 50% and 10%
        (0.248, 0.364)
    """
    arrays = [np.asarray(g, dtype=float) for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.mean([_bootstrap_means(a, rng, n_resamples) for a in arrays], axis=0)  # (B,)
    return _percentiles(means, level)


def average_interval(groups: Sequence[Sequence[float]], n_resamples: int = N_RESAMPLES, seed: int = 0,
                     z: float = Z95) -> tuple[float, float]:
    """95% interval of the average of per-group 0/1 means: `stratified_interval`, widened where needed
    to the Wilson interval of that average at the effective number of problems S^2 / sum(1/n_i).

    The bootstrap alone has no width when every set is at 0% or 100% (no resample differs), which
    at 4 problems reads as certainty; the Wilson bound keeps the width a few problems deserve:

        >>> average_interval([[0, 0], [0, 0]], seed=0)            # n_eff = 4
        (0.0, 0.4898...)
    """
    arrays = [np.asarray(g, dtype=float) for g in groups]
    lo, hi = stratified_interval(arrays, n_resamples, seed)
    if math.isnan(lo):
        return lo, hi
    n_eff = len(arrays) ** 2 / sum(1 / a.size for a in arrays)
    p = float(np.mean([a.mean() for a in arrays]))
    w_lo, w_hi = wilson_interval(p * n_eff, n_eff, z)
    return min(lo, w_lo), max(hi, w_hi)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts b and c.

    b: problems only the baseline got right; c: problems only the method got right. Under "no
    difference" each discordant problem is a fair coin, so the smaller count is Binomial(b + c, 1/2)
    and p = 2 * P(X <= min(b, c)), capped at 1; p = 1 with no discordant problems.

        >>> mcnemar_p(10, 3)      # 2 * (1 + 13 + 78 + 286) / 2**13
        0.0922...
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: exact for large n, no float overflow


def holm(pvalues: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Holm's step-down adjustment of several p-values tested together (family-wise error).

    The i-th smallest of m p-values is multiplied by m - i + 1, the results are made
    non-decreasing in that order and capped at 1; reject where the adjusted p is below alpha.

        >>> holm({"a": 0.01, "b": 0.04, "c": 0.03})
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    order = sorted(pvalues, key=lambda k: pvalues[k])
    out, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * pvalues[k]))
        out[k] = running
    return {k: out[k] for k in pvalues}


def newcombe_interval(both: float, only_method: float, only_baseline: float, neither: float,
                      z: float = Z95) -> tuple[float, float]:
    """Newcombe's score interval (1998, method 10) for a paired difference of proportions, method minus
    baseline, from the four cells of the paired table (counts; fractional counts allowed).

    It is built from the Wilson intervals of the two accuracies and their correlation, so like them it
    keeps a width at a handful of problems, where a bootstrap of 3 problems that all gained has none:

        >>> newcombe_interval(0, 3, 0, 0)         # 3 problems, the method solved all and the baseline none
        (0.2059..., 1.0)
        >>> bootstrap_interval([1, 1, 1])
        (1.0, 1.0)
    """
    n = both + only_method + only_baseline + neither
    if n == 0:
        return float("nan"), float("nan")
    p1, p2 = (both + only_method) / n, (both + only_baseline) / n  # method, baseline accuracy
    l1, u1 = wilson_interval(both + only_method, n, z)
    l2, u2 = wilson_interval(both + only_baseline, n, z)
    denom = (both + only_method) * (only_baseline + neither) * (both + only_baseline) * (only_method + neither)
    phi = (both * neither - only_method * only_baseline) / math.sqrt(denom) if denom > 0 else 0.0
    d = p1 - p2
    lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, d - lower), min(1.0, d + upper)


@dataclass
class PairedDiff:
    """Method minus baseline on the problems graded for both (accuracy as a fraction, not %)."""

    n: int  # problems graded for both
    diff: float  # point difference of accuracies
    ci_low: float
    ci_high: float
    only_method: int  # c: method right, baseline wrong
    only_baseline: int  # b: baseline right, method wrong
    p_mcnemar: float

    def to_dict(self) -> dict:
        return asdict(self)


def _paired_arrays(method: Mapping[Hashable, bool | None], baseline: Mapping[Hashable, bool | None]):
    ids = [i for i in method if i in baseline and method[i] is not None and baseline[i] is not None]
    m = np.array([bool(method[i]) for i in ids], dtype=float)
    b = np.array([bool(baseline[i]) for i in ids], dtype=float)
    return m, b


def paired_difference(method: Mapping[Hashable, bool | None], baseline: Mapping[Hashable, bool | None],
                      n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> PairedDiff:
    """Paired comparison of two methods on one set: {problem id: correct} for each.

    Only problems graded (not None) for both count. The interval resamples problems (pairs), so
    the shared difficulty of a problem cancels; McNemar tests the discordant problems.

        >>> d = paired_difference({i: i < 6 for i in range(10)}, {i: i < 2 or i == 9 for i in range(10)})
        >>> d.diff, d.only_method, d.only_baseline, d.p_mcnemar      # 60% vs 30%: 4 gained, 1 lost
        (0.3, 4, 1, 0.375)
    """
    return paired_difference_over_sets([(method, baseline)], n_resamples, seed, level)


def paired_difference_over_sets(sets: Sequence[tuple[Mapping, Mapping]], n_resamples: int = N_RESAMPLES,
                                seed: int = 0, level: float = 0.95) -> PairedDiff:
    """Paired comparison of the average over sets: [(method {id: correct}, baseline {id: correct}), ...].

    diff is the mean over sets of the per-set paired differences; the interval resamples problems
    within each set (`stratified_interval` on the per-problem differences), widened where needed to
    Newcombe's score interval (`newcombe_interval`) of the set-averaged paired table at the effective
    number of problems S^2 / sum(1/n_i): at a few problems the bootstrap alone can have no width. The McNemar p-value
    pools the discordant problems of all sets, so it tests the problem-weighted difference; the
    interval is the one that matches the set-averaged number. n counts all paired problems.
    """
    pairs = [_paired_arrays(m, b) for m, b in sets]
    n = sum(len(m) for m, _ in pairs)
    only_m = sum(int(((m == 1) & (b == 0)).sum()) for m, b in pairs)
    only_b = sum(int(((m == 0) & (b == 1)).sum()) for m, b in pairs)
    if not pairs or any(len(m) == 0 for m, _ in pairs):
        nan = float("nan")
        return PairedDiff(n, nan, nan, nan, only_m, only_b, mcnemar_p(only_b, only_m))
    diffs = [m - b for m, b in pairs]  # each (n_set,) in {-1, 0, 1}
    point = float(np.mean([d.mean() for d in diffs]))
    lo, hi = stratified_interval(diffs, n_resamples, seed, level)
    if level == 0.95:  # widened where needed to Newcombe's score interval: see `newcombe_interval`
        n_eff = len(pairs) ** 2 / sum(1 / len(m) for m, _ in pairs)  # as `average_interval`
        cells = [np.mean([float(((m == x) & (b == y)).mean()) for m, b in pairs]) * n_eff
                 for x, y in ((1, 1), (1, 0), (0, 1), (0, 0))]
        s_lo, s_hi = newcombe_interval(*cells)
        lo, hi = float(min(lo, s_lo)), float(max(hi, s_hi))
    return PairedDiff(n, point, lo, hi, only_m, only_b, mcnemar_p(only_b, only_m))


@dataclass
class SeedSummary:
    """One number (an accuracy, a difference) across runs of one configuration with different seeds."""

    mean: float
    sd: float  # sample sd (n - 1); nan with one seed
    min: float
    max: float
    n_seeds: int
    per_seed: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def combine_seeds(per_seed: Mapping[str, float]) -> SeedSummary:
    """Mean, sd and min-max of a value over seeds; nan values (a seed without the number) are left out.

        >>> s = combine_seeds({"seed0": 0.30, "seed1": 0.25, "seed2": 0.35})
        >>> round(s.mean, 4), round(s.sd, 4), s.min, s.max
        (0.3, 0.05, 0.25, 0.35)
    """
    vals = np.array([v for v in per_seed.values() if v is not None and not math.isnan(v)], dtype=float)
    if vals.size == 0:
        nan = float("nan")
        return SeedSummary(nan, nan, nan, nan, 0, dict(per_seed))
    sd = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
    return SeedSummary(float(vals.mean()), sd, float(vals.min()), float(vals.max()), int(vals.size), dict(per_seed))
