"""Paired tests of two models scored on the same test rows, once (McNemar) and over seeds (a paired t-test),
the summary of a comparison of inits repeated over seeds (``mmssl evaluate|finetune --seeds K``), and the
lines and table ``mmssl`` prints of them.

Shared by the probes and fine-tuning: both score every init of one command on the same held-out rows, so
every comparison here is paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# The test over seeds: the K per-seed accuracy differences against a mean of zero. A paired t-test rather than
# Wilcoxon's signed-rank test, because with the few seeds a study affords the exact signed-rank test cannot reach
# p < 0.05 at all (its smallest two-sided p is 2 / 2**K: 0.25 at 3 seeds, 0.0625 at 5); the t-test's price is its
# assumption that the differences are roughly normal.
OVER_SEEDS_TEST = "paired t-test of the per-seed accuracy differences (scipy.stats.ttest_rel)"


def paired_comparison(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """How sure is "model A is more accurate than model B" when both were scored on the same test rows?

    ``correct_*`` are the per-row 0/1 outcomes. The gain is the difference of the accuracies; its
    standard error is that of the mean of the per-row differences (-1, 0 or 1), which only the
    rows where exactly one model is right make non-zero. ``p_value`` is McNemar's exact test: a
    two-sided binomial test of those discordant rows against an even split.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired outcomes need two equal, non-empty 1-D arrays; got shapes {a.shape} and {b.shape}")
    n = a.size
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    gain = (only_a - only_b) / n
    se = float(np.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n)
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "gain": gain,
        "se": se,
        "ci95": [gain - 1.96 * se, gain + 1.96 * se],
        "only_a": only_a,
        "only_b": only_b,
        "n": n,
        "p_value": float(p),
    }


def paired_over_seeds(accuracies_a: Sequence[float], accuracies_b: Sequence[float]) -> dict[str, Any]:
    """Is A more accurate than B over repeated runs? A paired t-test of the K per-seed differences ``A - B``.

    Seed ``i`` of A and of B share their label subset (and test rows), so the differences are paired
    (:data:`OVER_SEEDS_TEST` says why a t-test). ``p_value`` is None, with a ``note`` saying why, when K < 2
    or when the K differences are all equal (no spread to test).
    """
    from scipy.stats import ttest_rel

    a, b = np.asarray(accuracies_a, dtype=float), np.asarray(accuracies_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired accuracies need two equal, non-empty lists; got {a.size} and {b.size} values")
    diff = a - b
    result: dict[str, Any] = {"test": OVER_SEEDS_TEST, "n_seeds": int(a.size), "mean_difference": float(diff.mean())}
    if a.size < 2:
        return {**result, "p_value": None, "note": "the test over seeds needs 2 or more seeds (--seeds K)"}
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):  # equal up to rounding: t is undefined
        return {**result, "p_value": None, "note": f"all {a.size} differences are equal: no spread to test"}
    return {**result, "p_value": float(ttest_rel(a, b).pvalue), "note": None}


def accuracy_spread(accuracies: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value), min and max of per-seed accuracies."""
    acc = np.asarray(accuracies, dtype=float)
    return {
        "accuracies": acc.tolist(),
        "mean": float(acc.mean()),
        "sd": float(acc.std(ddof=1)) if acc.size > 1 else None,
        "min": float(acc.min()),
        "max": float(acc.max()),
    }


def compare_over_seeds(correct: dict[str, list[np.ndarray]], reference: str) -> dict[str, dict[str, Any]]:
    """The summary of inits each scored over the same K seeds on the same test rows.

    Args:
        correct: per init name, one ``bool [M]`` array per seed (in seed order) of the test rows it got right;
            every array of one seed covers the same M rows.
        reference: the init the others are compared with (``pretrained init``).

    Returns:
        Per init, :func:`accuracy_spread`; for the others also ``vs_reference``: the per-seed McNemar p-values
        (:func:`paired_comparison`, reference as A), their median, and :func:`paired_over_seeds`.
    """
    ref = correct[reference]
    summary = {}
    for name, outcomes in correct.items():
        if len(outcomes) != len(ref):
            raise ValueError(f"{name} has {len(outcomes)} seeds and {reference} {len(ref)}: they are not paired")
        row = accuracy_spread([float(np.mean(c)) for c in outcomes])
        if name != reference:
            per_seed = [paired_comparison(r, c) for r, c in zip(ref, outcomes)]
            row["vs_reference"] = {
                "mcnemar_p": [c["p_value"] for c in per_seed],
                "mcnemar_p_median": float(np.median([c["p_value"] for c in per_seed])),
                "gain": [c["gain"] for c in per_seed],
                "over_seeds": paired_over_seeds([float(np.mean(c)) for c in ref], row["accuracies"]),
            }
        summary[name] = row
    return summary


# ---------------------------------------------------------------------------- how a comparison reads
def paired_lines(correct_a: Any, correct_b: Any, other: str) -> str:
    """Model A's gain over ``other`` from per-row 0/1 outcomes on the same test rows: the gain, its paired 95%
    interval and McNemar's exact test (:func:`paired_comparison`), as ``mmssl`` prints it for one seed."""
    c = paired_comparison(correct_a, correct_b)
    verdict = "significant" if c["p_value"] < 0.05 else "not significant"
    return (
        f"  {'gain':<16} {c['gain']:+.4f}  (95% CI {c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f})\n"
        f"  {'McNemar p':<16} {format_p(c['p_value']):<6}  {verdict} at 0.05: {c['only_a']} rows right only with the "
        f"pretrained init, {c['only_b']} only with {other}"
    )


def format_p(value: float | None) -> str:
    """A p-value to three decimals, ``<0.001`` below that (never a bare ``0.000``), ``-`` for None."""
    if value is None:
        return "-"
    return "<0.001" if value < 0.0005 else f"{value:.3f}"


def seeds_table(title: str, names: dict[str, str], summary: dict[str, dict[str, Any]], n_test: int) -> str:
    """:func:`compare_over_seeds`' summary as a table: per init (``names``: init -> what to print) the mean
    accuracy, its standard deviation and range over the seeds, and against the reference init (the one
    without ``vs_reference``) the median of the per-seed McNemar p-values and the paired p over seeds."""
    width = max(16, *map(len, names.values()))
    reference = next(name for name, row in summary.items() if "vs_reference" not in row)
    k = len(summary[reference]["accuracies"])
    lines = [title, f"  {'init':<{width}}  {'mean':>6}  {'sd':>6}  {'min-max':<13}  {'McNemar p':>9}  {'paired p':>8}"]
    notes = []
    for init, row in summary.items():
        vs = row.get("vs_reference")
        mcnemar, over = (
            ("-", "-") if vs is None else (format_p(vs["mcnemar_p_median"]), format_p(vs["over_seeds"]["p_value"]))
        )
        sd = "-" if row["sd"] is None else f"{row['sd']:.4f}"
        lines.append(
            f"  {names[init]:<{width}}  {row['mean']:.4f}  {sd:>6}  {row['min']:.4f}-{row['max']:.4f}"
            f"  {mcnemar:>9}  {over:>8}"
        )
        if vs is not None:
            note = vs["over_seeds"]["note"]
            notes.append(
                f"  {names[init]}: McNemar p per seed {', '.join(map(format_p, vs['mcnemar_p']))}"
                + (f"; paired p: {note}" if note else "")
            )
    if notes:
        lines += [
            f"  against the {names[reference]}: McNemar p is the median over the {k} seeds of McNemar's exact test "
            f"on the {n_test} shared test rows; paired p is a {OVER_SEEDS_TEST}",
            *notes,
        ]
    verdicts = [verdict_line(names[reference], names[init], row) for init, row in summary.items() if init != reference]
    return "\n".join(lines + verdicts)


def verdict_line(reference: str, other: str, row: dict[str, Any], alpha: float = 0.05) -> str:
    """One sentence on ``reference`` against ``other`` (a :func:`compare_over_seeds` row): the mean accuracy
    difference and whether it is significant at ``alpha`` by the paired test over seeds, or by the median
    McNemar p where the seeds cannot be tested (one seed, or equal differences)."""
    vs = row["vs_reference"]
    over, per_seed = vs["over_seeds"], vs["mcnemar_p"]
    p, test = (over["p_value"], "paired p") if over["p_value"] is not None else (vs["mcnemar_p_median"], "McNemar p")
    diff = over["mean_difference"]
    if p < alpha:
        verdict = f"{'better' if diff > 0 else 'worse'}, significant at {alpha:g}"
    else:
        verdict = f"not significant at {alpha:g}"
    below = sum(q < alpha for q in per_seed)
    return (
        f"{reference} vs {other}: {diff:+.4f} ({test} {format_p(p)}; McNemar p < {alpha:g} at {below} of "
        f"{len(per_seed)} seeds): {verdict}"
    )
