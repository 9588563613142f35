"""The verdict rule of every study: an equivalence test against a stated margin, Holm-corrected differences.

A row compares a measured :class:`Estimate` with an :class:`Expected` value. The expected value carries its
**source** (:data:`SOURCES`) and, stated before any run, a **margin**: how far from it a result may lie and
still reproduce it. With the difference ``d = measured − expected`` and its confidence interval (the expected
value's own sampling error included when it is a rate whose run count the paper states: Newcombe's hybrid
score interval for two proportions, Newcombe 1998, method 10):

* **agrees** when the 90% interval of d lies inside ``[−margin, +margin]``: two one-sided tests at 5% each
  (Schuirmann 1987), i.e. the data show the difference is smaller than the margin;
* **differs** when the 95% interval of d excludes 0 (for rates: when an exact test of d = 0 rejects at 5%, Fisher's
  for two proportions or the binomial test against a fixed rate, since score intervals over-call a difference at
  one or two events), after Holm's step-down correction (Holm 1979) across the rows of one *family* (the rows that
  test one claim together: a table's column, a family of depths), so a family of true claims is called different in
  at most 5% of runs, however many rows it has;
* **inconclusive** otherwise: the runs cannot tell (too few, or an interval wider than the contrast).

Exact quantities (an :func:`exact` estimate: a closed form, a count, a label) have no interval: they agree when
``|d| ≤ margin`` (float rounding is always added, :data:`ROUNDING`) and differ otherwise. A row whose runs did
not converge is **not comparable** (:meth:`lossatlas.studies.framework.Row.unconverged_row`), never *differs*; so
is a row with a value missing.

Worked example (docs/studies.md repeats it): XOR, ReLU, h = 4, Adam. The paper reports 68% success over 100 runs;
we measure 86 of 100. d = 18 points; Newcombe's 90% interval of d is [8.3, 27.4], not inside ±5 (the margin of
every rate, :data:`MARGIN_RATE`), so it cannot agree; the 95% interval [6.4, 29.1] excludes 0 and Fisher's exact
test gives p = 0.0040; with the other 5 rows of its family (Holm: p × 6 = 0.024 < 0.05 when it is the smallest) the
row **differs**. Note that no result could *agree* here: the paper's own 100 runs give ±7.7 points at 90%, wider
than the margin by themselves (``runs_needed`` is None: the row can differ or be inconclusive only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from statistics import NormalDist

import numpy as np

ROUNDING = 8 * 2.220446049250313e-16
"""Relative slack added to every margin: a few float64 ulps, so an exact quantity is never a difference."""

SOURCES = ("published", "derived", "protocol", "sanity")
"""Where an expected number comes from:

* ``published`` — a paper's number (paper, table or equation; ``seed NNN:LINE`` where the lecture notes quote
  it). Only these rows can reproduce (or fail to reproduce) a paper.
* ``derived`` — our own closed form or computation; ``ref`` starts with the dotted path of the function.
* ``protocol`` — a choice we made (a run count, a success criterion), checked so a reader sees it held.
* ``sanity`` — a check that cannot fail unless the code is broken; never counted as agreement with a paper.
"""

VERDICTS = ("agrees", "differs", "inconclusive", "not comparable")
ALPHA = 0.05
"""Size of each one-sided equivalence test and of the family-wise difference test."""

# Margins, fixed by kind of quantity before any run (a study states which applies to each claim in its NOTES).
MARGIN_RATE = 5.0
"""A rate over runs, in percentage points (success, spurious, converged-to-global %): 5 points."""
MARGIN_ACCURACY = 3.0
"""A test accuracy or error of trained networks, in percentage points: 3 points."""
MARGIN_RELATIVE = 0.10
"""A mean of a continuous quantity (an eigenvalue, a loss, a slope): 10% of the published value, or half a
unit of its last printed digit when that is larger (:func:`relative_margin`)."""


def half_unit(value: float) -> float:
    """Half a unit of the last printed digit of a published number (``0.0047`` → ``0.00005``)."""
    from decimal import Decimal

    exponent = Decimal(repr(float(value))).normalize().as_tuple().exponent
    return 0.5 * 10.0 ** int(exponent) if isinstance(exponent, int) else 0.0


def relative_margin(value: float, fraction: float = MARGIN_RELATIVE) -> float:
    """``max(fraction·|value|, half a unit of its last printed digit)``: the margin of a published mean."""
    return max(fraction * abs(float(value)), half_unit(value))


_YEAR = re.compile(r"\b(1[89]|20)\d\d\b")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+")
SEED_REF = re.compile(r"seed (\d{3}):(\d+)")
"""``seed 004:512``: the lecture-notes file ``../shared/seeds/004_*.txt``, line 512 (1-based)."""


_NORMAL = NormalDist()


def _z(level: float) -> float:
    return _NORMAL.inv_cdf(0.5 + level / 2)


@lru_cache(maxsize=4096)
def _t(level: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def _t_sf(x: float, df: float) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of a binomial rate, as fractions; ``n = 0`` gives ``(0, 1)``."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


# -- the expected side ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """An expected number, where it comes from, and the margin within which a measurement reproduces it.

    Attributes:
        value: the number (or a label); ``None`` when the source gives none (the row is not comparable).
        source: one of :data:`SOURCES`.
        ref: ``published``: the paper, table or equation, and ``seed NNN:LINE`` where the notes quote it;
            ``derived``: the dotted path of the function that computes it (then any words); otherwise what the
            choice or check is.
        margin: the largest ``|measured − expected|`` that still reproduces it, in the quantity's units (stated
            before the run: the resolution the paper prints, or a practical margin such as 5 points of a rate).
        runs: for a rate (percent), the paper's number of runs: its own sampling error enters the interval.
        se: a standard error of a non-rate expected value, when the source gives one.
    """

    value: float | str | None
    source: str
    ref: str
    margin: float = 0.0
    runs: int | None = None
    se: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not self.ref.strip():
            raise ValueError("every expected number needs a ref (where it comes from)")
        if self.source == "published" and not _YEAR.search(self.ref):
            raise ValueError(f"a published value must name its paper with a year: {self.ref!r}")
        if self.source == "derived" and not _DOTTED.match(self.ref):
            raise ValueError(f"a derived value's ref must start with the dotted path of its function: {self.ref!r}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be finite and >= 0, got {self.margin!r}")


def published(value: float | str | None, ref: str, margin: float, *, runs: int | None = None,
              se: float | None = None) -> Expected:
    """A paper's number (``ref`` names the paper with its year, the table, and ``seed NNN:LINE``)."""
    return Expected(value, "published", ref, margin, runs, se)


def derived(value: float | str | None, ref: str, margin: float = 0.0) -> Expected:
    """Our own closed form or computation (``ref`` starts with the function's dotted path)."""
    return Expected(value, "derived", ref, margin)


def protocol(value: float | str | None, ref: str, margin: float = 0.0) -> Expected:
    """A choice of the protocol (a run count, a criterion), checked so a reader sees it held."""
    return Expected(value, "protocol", ref, margin)


def sanity(value: float | str | None, ref: str, margin: float = 0.0) -> Expected:
    """A check that cannot fail unless the code is broken; reported apart, never as agreement."""
    return Expected(value, "sanity", ref, margin)


# -- the measured side -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A measured value and how its uncertainty is computed.

    Build with :func:`rate`, :func:`sample`, :func:`normal` or :func:`exact`.
    """

    value: float | str | None
    kind: str  # "rate" | "sample" | "normal" | "exact" | "direction"
    successes: int = 0
    n: int = 0
    sd: float = 0.0
    se: float = 0.0
    p: float | None = None  # "direction": the two-sided p-value of "no effect"

    def interval(self, level: float = 0.95) -> tuple[float, float] | None:
        """The interval of the measured value itself at ``level`` (None for exact values)."""
        if self.kind == "rate":
            lo, hi = wilson(self.successes, self.n, _z(level))
            return 100 * lo, 100 * hi
        if self.kind == "sample":
            if self.n < 2:
                return None
            half = _t(level, self.n - 1) * self.sd / math.sqrt(self.n)
            return float(self.value) - half, float(self.value) + half  # type: ignore[arg-type]
        if self.kind == "normal":
            half = _z(level) * self.se
            return float(self.value) - half, float(self.value) + half  # type: ignore[arg-type]
        return None


def rate(successes: int, n: int) -> Estimate:
    """A rate in percent: ``successes`` of ``n`` runs (Wilson intervals)."""
    successes, n = int(successes), int(n)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    return Estimate(100 * successes / n if n else None, "rate", successes=successes, n=n)


def sample(values: Sequence[float] | np.ndarray) -> Estimate:
    """The mean of i.i.d. runs (Student-t intervals); non-finite values are dropped."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Estimate(None, "sample")
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return Estimate(float(x.mean()), "sample", n=int(x.size), sd=sd)


def normal(value: float, se: float) -> Estimate:
    """An estimate with a known standard error (normal intervals)."""
    return Estimate(float(value), "normal", se=float(se))


def exact(value: float | str | None) -> Estimate:
    """A value without sampling error: a closed form, a count, a label."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        value = None
    return Estimate(value, "exact")


def direction(effect: float, labels: tuple[str, str], *, ci: tuple[float, float] | None = None,
              p: float | None = None, n: int = 0) -> Estimate:
    """The direction of an effect as a label: ``labels[0]`` when it is established above 0, ``labels[1]`` below.

    Established means the 95% interval ``ci`` of the effect excludes 0, or (without an interval) ``p < 0.05`` for
    "no effect". Otherwise the value is None: the runs do not tell the direction, and :func:`judge` calls the row
    *inconclusive* (never *differs*). A direction against the expected one keeps ``p``, so that Holm's correction
    applies across its family.
    """
    if ci is not None:
        label = labels[0] if ci[0] > 0 else labels[1] if ci[1] < 0 else None
    elif p is not None and p < ALPHA and math.isfinite(effect) and effect != 0:
        label = labels[0] if effect > 0 else labels[1]
    else:
        label = None
    return Estimate(label, "direction", n=int(n), p=None if p is None else float(p))


def paired_test(diffs: Sequence[float] | np.ndarray) -> tuple[float, tuple[float, float] | None, float | None]:
    """``(mean, Student-t 95% interval, two-sided p of mean 0)`` of paired differences (None below two values)."""
    est = sample(diffs)
    if est.value is None:
        return math.nan, None, None
    ci = est.interval(0.95)
    if ci is None:
        return float(est.value), None, None  # type: ignore[arg-type]
    mean = float(est.value)  # type: ignore[arg-type]
    if est.sd == 0:
        return mean, ci, 1.0 if mean == 0 else 0.0
    stat = mean / (est.sd / math.sqrt(est.n))
    return mean, ci, 2 * _t_sf(abs(stat), est.n - 1)


# -- the difference --------------------------------------------------------------------------------------------
def difference_interval(expected: Expected, measured: Estimate, level: float) -> tuple[float, float] | None:
    """The ``level`` interval of ``d = measured − expected`` (None for exact values or missing data)."""
    if measured.value is None or expected.value is None or isinstance(expected.value, str):
        return None
    e = float(expected.value)
    if measured.kind == "rate" and expected.runs:  # two proportions: Newcombe's hybrid score interval
        z = _z(level)
        n2 = int(expected.runs)
        s2 = min(n2, max(0, round(e / 100 * n2)))
        p1, p2 = measured.successes / measured.n, s2 / n2
        l1, u1 = wilson(measured.successes, measured.n, z)
        l2, u2 = wilson(s2, n2, z)
        d = p1 - p2
        return (100 * (d - math.hypot(p1 - l1, u2 - p2)), 100 * (d + math.hypot(u1 - p1, p2 - l2)))
    if measured.kind == "sample" and expected.se:
        if measured.n < 2:
            return None
        se = math.hypot(measured.sd / math.sqrt(measured.n), expected.se)
        half = _t(level, measured.n - 1) * se
        d = float(measured.value) - e  # type: ignore[arg-type]
        return d - half, d + half
    ci = measured.interval(level)
    return None if ci is None else (ci[0] - e, ci[1] - e)


@dataclass(frozen=True)
class Judgement:
    """One row's test before the family correction."""

    verdict: str
    d: float | None
    ci90: tuple[float, float] | None
    ci95: tuple[float, float] | None
    p: float | None


def judge(expected: Expected, measured: Estimate) -> Judgement:
    """The row's verdict before Holm's correction (see the module docstring)."""
    e, m = expected.value, measured.value
    if measured.kind == "direction" and e is not None:
        if m is None:  # no direction established: neither agreement nor a difference (its p still counts in Holm)
            return Judgement("inconclusive", None, None, None, measured.p)
        same = str(e) == str(m)
        return Judgement("agrees" if same else "differs", None, None, None,
                         1.0 if same else (measured.p if measured.p is not None else 0.0))
    if e is None or m is None:
        return Judgement("not comparable", None, None, None, None)
    if isinstance(e, str) or isinstance(m, str):
        same = str(e) == str(m)
        return Judgement("agrees" if same else "differs", None, None, None, 1.0 if same else 0.0)
    margin = expected.margin + ROUNDING * max(1.0, abs(float(e)))
    d = float(m) - float(e)
    if measured.kind == "exact" or (measured.kind == "sample" and measured.n < 2):
        if measured.kind != "exact":
            return Judgement("inconclusive", d, None, None, None)
        ok = abs(d) <= margin
        return Judgement("agrees" if ok else "differs", d, (d, d), (d, d), 1.0 if ok else 0.0)
    ci90 = difference_interval(expected, measured, 1 - 2 * ALPHA)
    ci95 = difference_interval(expected, measured, 1 - ALPHA)
    p = _closed_form_p(expected, measured, d)
    if ci90 is not None and -margin <= ci90[0] and ci90[1] <= margin:
        verdict = "agrees"
    elif p < ALPHA:
        verdict = "differs"
    else:
        verdict = "inconclusive"
    return Judgement(verdict, d, ci90, ci95, p)


def _closed_form_p(expected: Expected, measured: Estimate, d: float) -> float:
    """The p-value of ``d = 0``: for normal and Student-t estimates the test their intervals invert; for rates an
    exact test (Fisher's for two proportions when the paper states its run count, the binomial test against a
    fixed rate otherwise), since score intervals over-call differences at one or two events."""
    if measured.kind == "normal":
        se = measured.se
        return 1.0 if d == 0 else (0.0 if se == 0 else 2 * _NORMAL.cdf(-abs(d) / se))
    if measured.kind == "sample":
        se = math.hypot(measured.sd / math.sqrt(measured.n), expected.se or 0.0)
        return 1.0 if d == 0 else (0.0 if se == 0 else min(1.0, 2 * _t_sf(abs(d) / se, measured.n - 1)))
    return _exact_rate_p(expected, measured)


def _exact_rate_p(expected: Expected, measured: Estimate) -> float:
    from scipy.stats import binomtest, fisher_exact

    e = float(expected.value)  # type: ignore[arg-type]
    if expected.runs:
        n2 = int(expected.runs)
        s2 = min(n2, max(0, round(e / 100 * n2)))
        table = [[measured.successes, measured.n - measured.successes], [s2, n2 - s2]]
        return float(fisher_exact(table).pvalue)
    return float(binomtest(measured.successes, measured.n, min(1.0, max(0.0, e / 100))).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): ``max_{j ≤ i} min(1, (m − j + 1) p_(j))`` in sorted order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def runs_needed(expected: Expected, measured: Estimate, limit: int = 10_000_000) -> int | None:
    """The fewest runs with which a result equal to the expected value would *agree* (its 90% interval of d
    inside ±margin): for rates at the expected rate, for means at the measured spread. ``None`` when no run
    count suffices (the expected value's own sampling error is wider than the margin) or the row has no
    sampling error."""
    if expected.value is None or isinstance(expected.value, str) or measured.kind not in ("rate", "sample"):
        return None
    e = float(expected.value)
    margin = expected.margin + ROUNDING * max(1.0, abs(e))

    def fits(n: int) -> bool:
        if measured.kind == "rate":
            est = rate(min(n, max(0, round(e / 100 * n))), n)
            est = replace(est, value=e)  # measured exactly at the expected rate (up to the count's rounding)
        else:
            est = Estimate(e, "sample", n=n, sd=measured.sd)
        ci = difference_interval(replace(expected, margin=margin), est, 1 - 2 * ALPHA)
        return ci is not None and -margin <= ci[0] and ci[1] <= margin

    n = 2
    while not fits(n):
        n *= 2
        if n > limit:
            return None
    lo = n // 2
    while lo + 1 < n:  # fits(n), not fits(lo) (or lo below 2)
        mid = (lo + n) // 2
        lo, n = (lo, mid) if fits(mid) else (mid, n)
    return n


def family_verdict(verdicts: Sequence[str]) -> str:
    """A family's verdict: ``differs`` if any row differs, ``agrees`` if every comparable row agrees,
    ``inconclusive`` otherwise (``not comparable`` when no row is comparable)."""
    comparable = [v for v in verdicts if v != "not comparable"]
    if not comparable:
        return "not comparable"
    if "differs" in comparable:
        return "differs"
    if all(v == "agrees" for v in comparable):
        return "agrees"
    return "inconclusive"


def seed_ref(ref: str) -> list[tuple[str, int]]:
    """The ``seed NNN:LINE`` references in a ref: ``[("004", 512)]``."""
    return [(m.group(1), int(m.group(2))) for m in SEED_REF.finditer(ref)]


__all__ = ["ALPHA", "MARGIN_ACCURACY", "MARGIN_RATE", "MARGIN_RELATIVE", "Estimate", "Expected", "Judgement",
           "ROUNDING", "half_unit", "relative_margin", "SOURCES", "VERDICTS", "derived",
           "difference_interval", "direction", "exact", "family_verdict", "holm", "judge", "normal",
           "paired_test", "protocol", "published", "rate", "runs_needed", "sample", "sanity", "seed_ref", "wilson"]
