"""The verdict rule (lossatlas.studies.verdict): equivalence within a margin, Holm-corrected differences.

References are independent of the code under test: Newcombe's (1998) published worked example, hand-computed
Holm adjustments, the normal p-value in closed form, and simulations from the true distribution.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from lossatlas.studies.framework import Row, converged_runs, settle
from lossatlas.studies.verdict import (
    MARGIN_RATE,
    derived,
    difference_interval,
    exact,
    holm,
    judge,
    normal,
    protocol,
    published,
    rate,
    runs_needed,
    sample,
    sanity,
    seed_ref,
)

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
PAPER = "Example et al. 2016, Table 1"


def test_newcombe_interval_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, example (a): 56/70 - 48/80, method 10.
    ci = difference_interval(published(60.0, PAPER, 5.0, runs=80), rate(56, 70), 0.95)
    assert ci is not None
    assert ci[0] == pytest.approx(5.24, abs=0.01) and ci[1] == pytest.approx(33.39, abs=0.01)


def test_two_proportions_that_differ_at_p_001_differ() -> None:
    # 65/100 against a published 45/100: the pooled two-proportion z-test gives p ~ 0.005
    j = judge(published(45.0, PAPER, MARGIN_RATE, runs=100), rate(65, 100))
    assert j.verdict == "differs" and j.p is not None and j.p < 0.01


def test_equal_rates_with_enough_runs_agree() -> None:
    j = judge(published(50.0, PAPER, MARGIN_RATE, runs=2000), rate(1500, 3000))
    assert j.verdict == "agrees"
    assert j.ci90 is not None and -MARGIN_RATE < j.ci90[0] < 0 < j.ci90[1] < MARGIN_RATE


def test_equal_rates_with_10_runs_are_inconclusive() -> None:
    assert judge(published(50.0, PAPER, MARGIN_RATE, runs=1000), rate(5, 10)).verdict == "inconclusive"


def test_an_interval_wider_than_the_contrast_is_inconclusive() -> None:
    # d = 3 with se 10: the 95% interval [-16.6, 22.6] holds 0 and the 90% one is far wider than +-1
    j = judge(published(1.0, PAPER, 1.0), normal(4.0, 10.0))
    assert j.verdict == "inconclusive"
    # the old rule would have accepted it: the published value lies inside the measured interval
    assert 4.0 - 1.96 * 10 < 1.0 < 4.0 + 1.96 * 10


def test_a_significant_difference_inside_the_margin_still_agrees() -> None:
    j = judge(published(10.0, PAPER, 1.0), normal(10.3, 0.1))
    assert j.verdict == "agrees" and j.p is not None and j.p < 0.05


def test_rates_are_tested_exactly_at_small_counts() -> None:
    """1 spurious run of 40 against the paper's 3 of 1000: Fisher's exact test, by a naive hypergeometric sum."""
    def hyper(k: int) -> float:  # P[X = k] with margins 41 events / 1040 runs, 40 drawn
        return math.comb(4, k) * math.comb(1036, 40 - k) / math.comb(1040, 40)

    observed = hyper(1)
    fisher = sum(hyper(k) for k in range(5) if hyper(k) <= observed * (1 + 1e-7))
    j = judge(published(0.3, PAPER, MARGIN_RATE, runs=1000), rate(1, 40))
    assert j.p == pytest.approx(fisher, rel=1e-6) and 0.1 < fisher < 0.2
    assert j.verdict == "inconclusive"  # the Wilson-based interval alone would have said "differs"
    ci95 = difference_interval(published(0.3, PAPER, MARGIN_RATE, runs=1000), rate(1, 40), 0.95)
    assert ci95 is not None and ci95[0] > 0


def test_a_normal_p_value_is_the_closed_form() -> None:
    j = judge(published(0.0, PAPER, 0.1), normal(1.3, 0.7))
    assert j.p == pytest.approx(2 * (1 - norm.cdf(1.3 / 0.7)), rel=1e-9)


def test_holm_by_hand() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == []


def _mc_row(i: int, values: np.ndarray) -> Row:
    return Row.compare("mean", {"depth": i}, derived(0.0, "lossatlas.studies.verdict.judge", 0.05), sample(values),
                       family="depths")


def test_a_family_of_true_claims_differs_at_most_at_the_stated_rate() -> None:
    """200 families of 30 Monte-Carlo rows of one exact claim, drawn from the true distribution."""
    rng = np.random.default_rng(1)
    families_differ, rows_differ_unadjusted = 0, 0
    for _ in range(200):
        rows = [_mc_row(i, rng.standard_normal(40)) for i in range(30)]
        rows_differ_unadjusted += sum(r.verdict == "differs" for r in rows)
        settled = settle(rows)
        families_differ += settled[0].family_verdict == "differs"
        assert {r.family_verdict for r in settled} == {settled[0].family_verdict}
    # Holm keeps the family-wise rate <= 5%; 200 families: allow binomial slack (P[X >= 19 | 5%] < 0.02)
    assert families_differ < 19
    # without the correction about 5% of the 6000 rows would differ, so nearly every family would
    assert rows_differ_unadjusted > 150


def test_settle_turns_a_lone_chance_difference_into_inconclusive() -> None:
    rows = [Row.compare("x", {"i": i}, published(0.0, PAPER, 0.1), normal(d, 1.0))
            for i, d in enumerate([2.2] + [0.0] * 9)]
    assert rows[0].verdict == "differs"  # p = 0.028 alone
    settled = settle(rows)
    assert settled[0].verdict == "inconclusive" and settled[0].p_holm == pytest.approx(10 * rows[0].p)
    strong = settle([Row.compare("x", {"i": 0}, published(0.0, PAPER, 0.1), normal(5.0, 1.0))] + rows[1:])
    assert strong[0].verdict == "differs" and strong[0].family_verdict == "differs"


def test_exact_rows_agree_to_rounding_and_differ_otherwise() -> None:
    assert judge(derived(1.0, "lossatlas.studies.verdict.judge"), exact(1 - 1e-16)).verdict == "agrees"
    assert judge(derived(1.0, "lossatlas.studies.verdict.judge"), exact(1 + 1e-9)).verdict == "differs"
    assert judge(published("saddle", PAPER, 0.0), exact("saddle")).verdict == "agrees"
    assert judge(published("saddle", PAPER, 0.0), exact("minimum")).verdict == "differs"
    assert judge(published(None, PAPER, 0.0), exact(1.0)).verdict == "not comparable"
    assert judge(published(1.0, PAPER, 0.0), exact(float("nan"))).verdict == "not comparable"


def test_runs_needed_is_the_smallest_count_that_decides() -> None:
    e = protocol(50.0, "50% by construction", MARGIN_RATE)
    n = runs_needed(e, rate(1, 2))
    assert n is not None
    fits = lambda k: (lambda ci: ci[1] - ci[0] <= 2 * MARGIN_RATE)(difference_interval(e, rate(k // 2, k), 0.90))  # noqa: E731
    assert fits(n) and not fits(n - 2)
    assert 250 < n < 300  # 1.645^2 * 0.25 / 0.05^2 = 271 under the normal approximation
    # the paper's own 100 runs are already wider than +-5 points: no run count can make it agree
    assert runs_needed(published(68.0, PAPER, MARGIN_RATE, runs=100), rate(86, 100)) is None
    assert runs_needed(published(68.0, PAPER, MARGIN_RATE, runs=100), exact(86.0)) is None
    # at 100% the interval is one-sided: all of its width must fit below the margin
    full = runs_needed(published(100.0, PAPER, MARGIN_RATE), rate(10, 10))
    assert full is not None and 40 < full < 60
    lo = difference_interval(published(100.0, PAPER, MARGIN_RATE), rate(full, full), 0.90)
    assert lo is not None and lo[0] >= -MARGIN_RATE


def test_sources_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="year"):
        published(1.0, "the paper", 0.1)
    with pytest.raises(ValueError, match="dotted path"):
        derived(1.0, "our closed form")
    with pytest.raises(ValueError, match="source"):
        from lossatlas.studies.verdict import Expected
        Expected(1.0, "folklore", "x")
    assert sanity(1.0, "cannot fail").source == "sanity"
    assert seed_ref("Safran & Shamir 2018, Table 1; seed 004:512, seed 002:7") == [("004", 512), ("002", 7)]


def test_the_convergence_gate_counts_a_stopped_run_as_unconverged_not_failed() -> None:
    converged = np.array([True, True, True, False])  # the last run was stopped early
    successes = np.array([True, False, True, False])
    mask, enough = converged_runs(converged)
    assert enough and mask.sum() == 3
    row = Row.compare("success_pct", {"h": 2}, published(50.0, PAPER, MARGIN_RATE),
                      rate(int(successes[mask].sum()), int(mask.sum())), unconverged=int((~mask).sum()))
    assert row.runs == 3 and row.unconverged == 1 and row.measured == pytest.approx(200 / 3)
    few, enough = converged_runs(np.array([True, False, False, False]))
    assert not enough
    gated = Row.unconverged_row("success_pct", {"h": 2}, published(50.0, PAPER, MARGIN_RATE), runs=4,
                                unconverged=3, criterion="loss plateau")
    assert gated.verdict == "not comparable" and "unconverged" in gated.note and gated.unconverged == 3
    assert settle([gated])[0].verdict == "not comparable"


def test_rows_round_trip_through_json() -> None:
    rows = settle([Row.compare("x", {"i": 1}, published(45.0, PAPER, MARGIN_RATE, runs=100), rate(65, 100),
                               note="n")])
    back = Row.from_json(json.loads(json.dumps(rows[0].as_json())))
    assert back == rows[0]


# -- the checked-in full results ---------------------------------------------------------------------------
RESULTS = sorted((REPO / "docs" / "studies").glob("*.json"))


def _number_forms(value: float) -> set[str]:
    forms = {f"{value:g}", repr(value), f"{value:.1f}", f"{value:.2f}", f"{value:.3f}"}
    if value == int(value):
        forms.add(str(int(value)))
    if 0 < abs(value) <= 100:
        forms |= {f"{value / 100:g}", f"{value / 100:.2f}", f"{value / 100:.3f}"}
    return forms


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_every_checked_in_row_has_a_source(path: Path) -> None:
    payload = json.loads(path.read_text())
    for r in payload["rows"]:
        assert r.get("source") in ("published", "derived", "protocol", "sanity"), (path.stem, r["quantity"])
        assert r.get("ref"), (path.stem, r["quantity"])
        assert "margin" in r and r["verdict"] in ("agrees", "differs", "inconclusive", "not comparable")
        if r["source"] == "published":
            assert re.search(r"\b(19|20)\d\d\b", r["ref"]), f"{path.stem}: a published ref names no paper: {r['ref']}"
        if r["source"] == "derived":
            module, _, name = r["ref"].split()[0].rstrip(",;:").rpartition(".")
            import importlib

            assert hasattr(importlib.import_module(module), name), f"{path.stem}: {r['ref']} does not resolve"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the lecture notes (../shared/seeds) are not beside this checkout")
@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_seed_lines_quote_the_published_number(path: Path) -> None:
    """``seed NNN:LINE`` names a line of the notes that prints the number (within 5 lines), unless the ref says the
    line states the formula or theorem the number follows from."""
    payload = json.loads(path.read_text())
    for r in payload["rows"]:
        for seed, line in seed_ref(r.get("ref", "")):
            files = list(SEEDS.glob(f"{seed}_*.txt"))
            assert files, f"{path.stem}: no seed file {seed}"
            lines = files[0].read_text().splitlines()
            assert 1 <= line <= len(lines), f"{path.stem}: seed {seed} has no line {line}"
            value = r["expected"]
            if re.search(r"\b(formula|theorem|statement)\b", r["ref"]):
                continue  # the line states a formula or a theorem the value follows from, not the number
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                window = " ".join(lines[max(0, line - 6):line + 5])
                assert any(f in window for f in _number_forms(float(value))), (
                    f"{path.stem}: {r['quantity']} {r['key']}: {value} not within 5 lines of seed {seed}:{line}")


def test_direction_estimates_judge_a_sign_and_never_differ_without_one() -> None:
    from lossatlas.studies.framework import Row, settle
    from lossatlas.studies.verdict import direction, paired_test, published

    claim = published("yes", "Keskar et al. 2017, Table 1", 0.0)
    up = paired_test(np.array([0.4, 0.6, 0.5, 0.7, 0.55]))
    assert up[1] is not None and up[1][0] > 0 and up[2] is not None and up[2] < 0.01
    agrees = Row.compare("q", {"i": 0}, claim, direction(up[0], ("yes", "no"), ci=up[1], p=up[2], n=5))
    assert agrees.measured == "yes" and agrees.verdict == "agrees" and agrees.runs == 5
    flat = paired_test(np.array([0.3, -0.2, 0.1, -0.25, 0.05]))
    unsure = Row.compare("q", {"i": 1}, claim, direction(flat[0], ("yes", "no"), ci=flat[1], p=flat[2], n=5))
    assert unsure.measured is None and unsure.verdict == "inconclusive" and unsure.p == flat[2]
    down = paired_test(-np.array([0.4, 0.6, 0.5, 0.7, 0.55]))
    against = Row.compare("q", {"i": 2}, claim, direction(down[0], ("yes", "no"), ci=down[1], p=down[2], n=5))
    assert against.measured == "no" and against.verdict == "differs" and against.p == down[2]
    settled = settle([agrees, unsure, against])  # Holm over the three tested rows: the difference survives
    assert [r.verdict for r in settled] == ["agrees", "inconclusive", "differs"]
    assert settled[2].p_holm == pytest.approx(min(1.0, 3 * down[2]))
    assert direction(0.2, ("positive", "negative"), p=0.2).value is None  # p without an interval: p < 0.05 needed
    assert direction(-0.2, ("positive", "negative"), p=0.01).value == "negative"
