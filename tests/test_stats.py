"""eval.stats against numbers worked out by hand in the test."""

import math

import numpy as np
import pytest

from eval.stats import (
    bootstrap_interval,
    combine_seeds,
    holm,
    mcnemar_p,
    paired_difference,
    paired_difference_over_sets,
    stratified_interval,
    wilson_interval,
)

Z = 1.959963984540054


def wilson_by_hand(k, n):
    # the textbook form (k + z^2/2 -+ z sqrt(k(n-k)/n + z^2/4)) / (n + z^2)
    half = Z * math.sqrt(k * (n - k) / n + Z**2 / 4)
    return (k + Z**2 / 2 - half) / (n + Z**2), (k + Z**2 / 2 + half) / (n + Z**2)


@pytest.mark.parametrize("k,n,expected", [
    (0, 10, (0.0, 0.2775)),  # upper bound z^2 / (n + z^2) = 3.8415 / 13.8415
    (5, 10, (0.2366, 0.7634)),
    (10, 10, (0.7225, 1.0)),  # lower bound n / (n + z^2)
    (27, 120, (0.1595, 0.3076)),
])
def test_wilson_interval(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_edges():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)


def binomial_two_sided(b, c):
    # P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), doubled, capped at 1
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.factorial(n) / (math.factorial(i) * math.factorial(n - i)) * 0.5**n for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b,c,expected", [
    (0, 0, 1.0),  # no discordant problems: no evidence either way
    (1, 0, 1.0),  # 2 * 1/2 = 1
    (5, 1, 0.21875),  # 2 * (1 + 6) / 2**6 = 14 / 64
    (10, 3, 0.0922851562),  # 2 * (1 + 13 + 78 + 286) / 2**13 = 756 / 8192
])
def test_mcnemar_exact(b, c, expected):
    assert mcnemar_p(b, c) == pytest.approx(expected, abs=1e-9)
    assert mcnemar_p(b, c) == pytest.approx(binomial_two_sided(b, c), abs=1e-12)
    assert mcnemar_p(c, b) == mcnemar_p(b, c)


def test_holm_step_down():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adj == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5})  # 4*.01, max(3*.03, 2*.04), 1*.5
    assert list(adj) == ["a", "b", "c", "d"]  # the caller's order
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}  # capped at 1
    assert holm({}) == {}
    one = holm({"z": 0.02})
    assert one == {"z": 0.02}  # a single test is not adjusted


def test_mcnemar_large_counts_do_not_overflow():
    assert 0.0 < mcnemar_p(700, 600) < 0.01
    assert mcnemar_p(1000, 1000) == 1.0


def test_bootstrap_interval_is_seeded_and_near_wilson():
    values = [1] * 27 + [0] * 93
    a = bootstrap_interval(values, seed=1)
    assert a == bootstrap_interval(values, seed=1)
    assert a == pytest.approx(wilson_interval(27, 120), abs=0.02)
    # 0/1 means fall on a 1/n grid, so seeds differ visibly only for values with many levels
    spread = np.linspace(0, 1, 50)
    assert bootstrap_interval(spread, seed=1) != bootstrap_interval(spread, seed=2)
    assert all(math.isnan(x) for x in bootstrap_interval([]))


def test_stratified_interval_of_one_group_is_the_plain_bootstrap():
    values = [1] * 27 + [0] * 93
    assert stratified_interval([values], seed=3) == bootstrap_interval(values, seed=3)


def test_stratified_interval_weighs_sets_equally():
    # 50% on 500 problems and 10% on 30: the average of set accuracies is 30%, the pooled share 47.7%
    lo, hi = stratified_interval([[1, 0] * 250, [1] * 3 + [0] * 27], seed=0)
    assert lo < 0.30 < hi and hi < 0.40
    # its width comes mostly from the small set: sd of its mean sqrt(.1 * .9 / 30) / 2 = 0.027 in the average
    assert hi - lo == pytest.approx(2 * 1.96 * math.hypot(0.5 / math.sqrt(500), math.sqrt(0.09 / 30)) / 2, rel=0.1)


def test_paired_difference_matches_by_id_and_skips_ungraded():
    base = {f"p{i}": i < 5 for i in range(10)}  # 5 / 10
    method = {f"p{i}": i < 3 or i >= 5 for i in reversed(range(10))}  # 8 / 10, other key order
    method["p0"] = None  # gold unparseable for the method's row: the pair drops out
    method["extra"] = True  # not in the baseline: drops out
    d = paired_difference(method, base, seed=0)
    assert d.n == 9
    assert (d.only_method, d.only_baseline) == (5, 2)  # p5..p9 gained, p3 p4 lost
    assert d.diff == pytest.approx((7 - 4) / 9)
    assert d.p_mcnemar == pytest.approx(2 * (1 + 7 + 21) / 2**7)
    assert d.ci_low <= d.diff <= d.ci_high
    assert d == paired_difference(method, base, seed=0)  # reproducible under a seed


def test_paired_difference_without_discordant_problems():
    same = {i: i % 2 == 0 for i in range(20)}
    d = paired_difference(same, dict(same))
    assert (d.diff, d.ci_low, d.ci_high, d.p_mcnemar) == (0.0, 0.0, 0.0, 1.0)
    empty = paired_difference({1: None}, {1: True})
    assert empty.n == 0 and math.isnan(empty.diff) and empty.p_mcnemar == 1.0


def test_paired_difference_over_sets_averages_set_differences():
    big = ({i: i < 60 for i in range(100)}, {i: i < 50 for i in range(100)})  # +10 points, 10 gained
    small = ({i: i < 2 for i in range(10)}, {i: i < 5 for i in range(10)})  # -30 points, 3 lost
    d = paired_difference_over_sets([big, small], seed=0)
    assert d.n == 110
    assert d.diff == pytest.approx((0.10 - 0.30) / 2)  # not the pooled (10 - 3) / 110
    assert (d.only_method, d.only_baseline) == (10, 3)
    assert d.p_mcnemar == pytest.approx(mcnemar_p(3, 10))
    assert d.ci_low <= d.diff <= d.ci_high
    assert d == paired_difference_over_sets([big, small], seed=0)
    # one set alone gives the same numbers as paired_difference
    assert paired_difference_over_sets([big], seed=4) == paired_difference(*big, seed=4)


def test_combine_seeds():
    s = combine_seeds({"s0": 0.30, "s1": 0.25, "s2": 0.35, "s3": float("nan")})
    assert s.n_seeds == 3 and s.mean == pytest.approx(0.30)
    # sample sd: sqrt(((0)^2 + (-0.05)^2 + (0.05)^2) / (3 - 1)) = 0.05
    assert s.sd == pytest.approx(0.05) and (s.min, s.max) == (0.25, 0.35)
    assert set(s.per_seed) == {"s0", "s1", "s2", "s3"}
    one = combine_seeds({"s0": 0.4})
    assert one.mean == 0.4 and math.isnan(one.sd)
    assert combine_seeds({}).n_seeds == 0


def test_bootstrap_resampling_matches_index_resampling_in_distribution():
    # the multinomial shortcut must give the percentile interval of ordinary index resampling
    rng = np.random.default_rng(0)
    v = np.array([1.0] * 30 + [0.0] * 60 + [-1.0] * 10)
    idx = rng.integers(0, len(v), size=(20_000, len(v)))
    lo, hi = np.quantile(v[idx].mean(axis=1), [0.025, 0.975])
    assert bootstrap_interval(v, n_resamples=20_000, seed=0) == pytest.approx((lo, hi), abs=0.011)


def test_docstring_examples():
    import doctest

    import eval.stats

    result = doctest.testmod(eval.stats, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


# ---------------------------------------------------------------------------- honest paired intervals at small n
@pytest.mark.parametrize("seed", range(6))
def test_the_paired_interval_at_a_few_problems_has_width_when_answers_moved(seed):
    """At n < 30 a change every resample repeats (3 problems, all gained) made the bootstrap interval
    [+100, +100]; the interval is widened to Newcombe's score interval, so it keeps the width a few
    problems deserve, contains the point and stays inside [-1, 1]."""
    from eval.stats import paired_difference

    rng = np.random.default_rng(seed)
    for _ in range(20):
        n = int(rng.integers(1, 13))
        method = {i: bool(rng.random() < 0.5) for i in range(n)}
        baseline = dict(method)
        moved = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
        one_way = bool(rng.random() < 0.5)  # every moved answer moved the same way: the bootstrap's blind spot
        for i in moved:
            method[int(i)] = True if one_way else not method[int(i)]
            baseline[int(i)] = not method[int(i)]
        d = paired_difference(method, baseline, n_resamples=500, seed=seed)
        assert -1.0 <= d.ci_low <= d.diff <= d.ci_high <= 1.0, d
        assert d.ci_high - d.ci_low > 0.2, d  # at most 12 problems: never a near-point interval
        assert d.ci_low < d.diff or d.diff == -1.0, d
        assert (d.ci_low, d.ci_high) != (0.0, 0.0)


def test_the_paired_interval_covers_about_95_percent_at_small_n():
    """Coverage of the true difference over tables drawn at random: the bootstrap alone covers far
    less at 5 problems; the widened interval about its nominal 95%."""
    from eval.stats import bootstrap_interval, paired_difference

    rng = np.random.default_rng(0)
    for n, at_least in ((5, 0.9), (10, 0.9)):
        covered = boot = 0
        trials = 400
        for _ in range(trials):
            p = rng.dirichlet([1, 1, 1, 1])  # both right, method only, baseline only, neither
            cells = rng.multinomial(n, p)
            kinds = np.repeat(np.arange(4), cells)
            method = {i: k in (0, 1) for i, k in enumerate(kinds)}
            baseline = {i: k in (0, 2) for i, k in enumerate(kinds)}
            d = paired_difference(method, baseline, n_resamples=300)
            covered += d.ci_low <= p[1] - p[2] <= d.ci_high
            lo, hi = bootstrap_interval([method[i] - baseline[i] for i in method], n_resamples=300)
            boot += lo <= p[1] - p[2] <= hi
        assert covered / trials >= at_least, (n, covered / trials)
        assert covered > boot, (n, covered, boot)


@pytest.mark.parametrize("seed", range(3))
def test_the_widening_leaves_a_large_sample_interval_near_the_bootstrap(seed):
    from eval.stats import bootstrap_interval, newcombe_interval

    rng = np.random.default_rng(seed)
    n = 3000
    cells = rng.multinomial(n, rng.dirichlet([2, 1, 1, 2]))
    kinds = np.repeat(np.arange(4), cells)
    diffs = (np.isin(kinds, (0, 1)).astype(float) - np.isin(kinds, (0, 2)).astype(float))
    b_lo, b_hi = bootstrap_interval(diffs, n_resamples=4000, seed=seed)
    s_lo, s_hi = newcombe_interval(*cells)
    assert abs(b_lo - s_lo) < 0.006 and abs(b_hi - s_hi) < 0.006
