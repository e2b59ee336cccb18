"""Statistics for comparing runs: confidence intervals over seeds, a paired randomization test on
per-query values, and Holm's correction over the settings compared.

The test compares two groups of runs (say ratio 0.5 against ratio 0) on the queries they share. Seeds are
pooled by averaging each query's value over the runs of its group, so the unit of the test is the query,
paired across groups by (dataset, setting, language pair, query id). The statistic is the difference of
the macro averages results.json reports: each language pair weighs the same, each query the same within
its pair, so the effect printed is exactly the difference of the two groups' reported numbers (averaged
over their seeds). Under the null hypothesis each query's difference is as likely to have either sign,
which the randomization test uses: it flips signs at random (or enumerates all flips when there are few
queries) and counts flips whose statistic is at least as extreme.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of Student's t interval at ``level`` (None for a single value)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def paired_randomization(differences: np.ndarray, weights: np.ndarray, permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of ``sum(weights * differences) != 0`` under random sign flips of each difference.

    With ``2**n <= permutations`` every flip is enumerated (the exact p-value); otherwise ``permutations``
    random flips, counted with the observed one (``(1 + extreme) / (1 + permutations)``)."""
    d = np.asarray(differences, dtype=np.float64) * np.asarray(weights, dtype=np.float64)
    observed = abs(d.sum())
    tolerance = 1e-12 * max(1.0, observed)
    n = len(d)
    if n == 0:
        return 1.0
    if n <= 20 and 2**n <= permutations:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
        return float((np.abs(signs @ d) >= observed - tolerance).mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, permutations, 1000):
        signs = rng.integers(0, 2, size=(min(1000, permutations - start), n), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ d) >= observed - tolerance).sum())
    return (1 + extreme) / (1 + permutations)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over all the comparisons given)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - step) * pvalues[i]))
        adjusted[i] = running
    return adjusted
