"""The paired tests (mmssl/stats.py) on inputs whose values are worked out by hand: McNemar's exact test of one
paired comparison, the paired t-test over seeds, and the summary and table of a comparison over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmssl.stats import (
    accuracy_spread,
    compare_over_seeds,
    format_p,
    paired_comparison,
    paired_over_seeds,
    seeds_table,
    verdict_line,
)


def _outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row 0/1 outcomes of two models with the given counts of agreeing and discordant rows."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array(a, bool), np.array(b, bool)


def test_mcnemar_on_hand_counted_discordant_rows() -> None:
    """8 rows right only with A, 2 only with B, of 20: under an even split of the 10 discordant rows,
    P(X <= 2) + P(X >= 8) = 2 * (1 + 10 + 45) / 2**10 = 0.109375."""
    a, b = _outcomes(both=6, only_a=8, only_b=2, neither=4)
    c = paired_comparison(a, b)
    assert (c["only_a"], c["only_b"], c["n"]) == (8, 2, 20)
    assert c["gain"] == pytest.approx(0.3)  # (8 - 2) / 20
    assert c["p_value"] == pytest.approx(112 / 1024)
    assert c["se"] == pytest.approx(math.sqrt(10 - 6**2 / 20) / 20)  # SE of the mean of the per-row differences
    assert c["ci95"] == pytest.approx([0.3 - 1.96 * c["se"], 0.3 + 1.96 * c["se"]])
    flipped = paired_comparison(b, a)
    assert flipped["gain"] == pytest.approx(-0.3) and flipped["p_value"] == c["p_value"]  # two-sided


def test_mcnemar_without_discordant_rows_and_on_bad_shapes() -> None:
    a, _ = _outcomes(both=5, only_a=0, only_b=0, neither=5)
    same = paired_comparison(a, a)
    assert same["gain"] == 0.0 and same["se"] == 0.0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal, non-empty 1-D arrays"):
        paired_comparison(a, a[:3])


def test_paired_t_test_over_seeds_by_hand() -> None:
    """Differences 0.10, 0.05, 0.15: mean 0.1, sd 0.05, t = 0.1 / (0.05 / sqrt 3) = sqrt 12; with 2 degrees of
    freedom the two-sided p is 1 - t / sqrt(2 + t**2) = 1 - sqrt(12 / 14)."""
    result = paired_over_seeds([0.80, 0.85, 0.90], [0.70, 0.80, 0.75])
    assert result["n_seeds"] == 3 and result["mean_difference"] == pytest.approx(0.1)
    assert result["p_value"] == pytest.approx(1 - math.sqrt(12 / 14)) and result["note"] is None
    assert "ttest_rel" in result["test"]


def test_paired_test_over_seeds_needs_two_seeds_and_a_spread() -> None:
    one = paired_over_seeds([0.8], [0.7])
    assert one["p_value"] is None and "needs 2 or more seeds" in one["note"]
    assert one["mean_difference"] == pytest.approx(0.1)
    flat = paired_over_seeds([0.8, 0.9], [0.7, 0.8])  # both differences 0.1: no spread, t is undefined
    assert flat["p_value"] is None and "all 2 differences are equal" in flat["note"]
    with pytest.raises(ValueError, match="equal, non-empty lists"):
        paired_over_seeds([0.8, 0.9], [0.7])


def test_accuracy_spread() -> None:
    spread = accuracy_spread([0.6, 0.7, 0.8])
    assert spread["mean"] == pytest.approx(0.7) and spread["sd"] == pytest.approx(0.1)  # sample sd (n - 1)
    assert (spread["min"], spread["max"]) == (0.6, 0.8)
    assert accuracy_spread([0.5])["sd"] is None


def test_compare_over_seeds_and_its_table() -> None:
    """Two seeds of 20 shared test rows: per seed McNemar against the reference, the median, and the t-test."""
    seed0 = _outcomes(both=6, only_a=8, only_b=2, neither=4)  # reference 14/20, other 8/20
    seed1 = _outcomes(both=10, only_a=4, only_b=0, neither=6)  # reference 14/20, other 10/20
    summary = compare_over_seeds(
        {"pretrained": [seed0[0], seed1[0]], "random": [seed0[1], seed1[1]]}, reference="pretrained"
    )
    assert "vs_reference" not in summary["pretrained"] and summary["pretrained"]["accuracies"] == [0.7, 0.7]
    assert summary["pretrained"]["sd"] == 0.0
    row = summary["random"]
    assert row["accuracies"] == [0.4, 0.5] and row["mean"] == pytest.approx(0.45)
    vs = row["vs_reference"]
    assert vs["mcnemar_p"] == pytest.approx([112 / 1024, 2 / 16])  # 4 rows one way, none the other: 2 / 2**4
    assert vs["mcnemar_p_median"] == pytest.approx((112 / 1024 + 2 / 16) / 2)
    assert vs["gain"] == pytest.approx([0.3, 0.2])
    # differences 0.3 and 0.2: mean 0.25, sd 0.0707, t = 5 with 1 degree of freedom: p = 1 - 2 atan(5) / pi
    assert vs["over_seeds"]["p_value"] == pytest.approx(1 - 2 * math.atan(5) / math.pi)
    table = seeds_table("title", {"pretrained": "pretrained init", "random": "random init"}, summary, 20)
    lines = table.splitlines()
    assert lines[0] == "title" and lines[1].split() == ["init", "mean", "sd", "min-max", "McNemar", "p", "paired", "p"]
    assert lines[2].split() == ["pretrained", "init", "0.7000", "0.0000", "0.7000-0.7000", "-", "-"]
    assert lines[3].split() == ["random", "init", "0.4500", "0.0707", "0.4000-0.5000", "0.117", "0.126"]
    assert "median over the 2 seeds" in table and "random init: McNemar p per seed 0.109, 0.125" in table
    assert lines[-1] == (
        "pretrained init vs random init: +0.2500 (paired p 0.126; McNemar p < 0.05 at 0 of 2 seeds): "
        "not significant at 0.05"
    )
    with pytest.raises(ValueError, match="not paired"):
        compare_over_seeds({"pretrained": [seed0[0], seed1[0]], "random": [seed0[1]]}, reference="pretrained")


def test_the_verdict_says_better_or_worse_only_when_significant() -> None:
    """Three seeds, 200 shared rows: the reference right on 60 more rows each time (then on 60 fewer)."""
    seeds = [_outcomes(both=100, only_a=60 + k, only_b=0, neither=40 - k) for k in range(3)]
    better = compare_over_seeds({"a": [s[0] for s in seeds], "b": [s[1] for s in seeds]}, reference="a")
    assert verdict_line("A", "B", better["b"]) == (
        "A vs B: +0.3050 (paired p <0.001; McNemar p < 0.05 at 3 of 3 seeds): better, significant at 0.05"
    )
    worse = compare_over_seeds({"b": [s[1] for s in seeds], "a": [s[0] for s in seeds]}, reference="b")
    assert verdict_line("B", "A", worse["a"]).endswith(
        "-0.3050 (paired p <0.001; McNemar p < 0.05 at 3 of 3 seeds): worse, significant at 0.05"
    )
    one_seed = compare_over_seeds({"a": [seeds[0][0]], "b": [seeds[0][1]]}, reference="a")
    assert "(McNemar p <0.001; McNemar p < 0.05 at 1 of 1 seeds): better" in verdict_line("A", "B", one_seed["b"])


@pytest.mark.parametrize(
    "p, text", [(None, "-"), (0.0, "<0.001"), (0.0004, "<0.001"), (0.0006, "0.001"), (0.5, "0.500")]
)
def test_p_values_below_a_thousandth_are_not_printed_as_zero(p, text) -> None:
    assert format_p(p) == text
