"""Intervals of a paired change, head - base, on the same test examples: one method per metric.

Pure numpy and scipy.stats, and no resampling, so the same tables always give the same interval.
`accuracy_interval` and `mean_interval` take arrays (one row per pair of tables), so the coverage
benchmark (benchmarks/verdict_coverage.py) runs thousands of simulated pairs through the code
the report and the gate run.

- Accuracy: Tango's score interval for a difference of paired proportions (Tango 1998;
  Fagerland, Lydersen and Laake 2014 recommend it). It is the set of changes the score test does
  not reject, and at a change of 0 that test is McNemar's (the statistic (c - b) / sqrt(b + c), no
  continuity correction), so the interval excludes 0 exactly when `mcnemar_p` is below
  1 - confidence. It stays valid away from 0, where the discordant share is estimated too, and its
  width follows n when no example changes sides: 0 of 20 is not 0 of 20,000.
- Mean loss: Student's t interval (`mean_interval` says why not a bootstrap).
- Macro F1: Tango's interval of the accuracy change on the same examples, carried over to macro F1
  by the ratio of the two changes' jackknife standard errors (`macro_f1_interval`).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# Bisection steps for Tango's bounds: 2**-60 of the range [-1, 1] is far below any rounding shown.
BISECTION_STEPS = 60


def _two_sided_z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def mcnemar_p(base_only, head_only):
    """McNemar's two-sided p-value (the score test, no continuity correction); 1 with no discordant pair."""
    base_only, head_only = np.asarray(base_only, float), np.asarray(head_only, float)
    discordant = base_only + head_only
    statistic = np.abs(head_only - base_only) / np.sqrt(np.where(discordant > 0, discordant, 1.0))
    return np.where(discordant > 0, 2 * stats.norm.sf(statistic), 1.0)


def _tango_statistic(change, base_only, head_only, n):
    """Tango's score statistic for a true accuracy change `change` (head - base): the observed
    change's distance from it in standard errors, the discordant shares fitted under that change."""
    # The share right only at base, fitted by maximum likelihood given the change (Tango 1998). With
    # p12 = head_only / n and p21 = base_only / n, the variance of head_only - base_only is
    # n (p12 + p21 - change**2) = n (2 p21 + change (1 - change)).
    a = 2 * n
    b = -base_only - head_only + (2 * n - head_only + base_only) * change
    c = -base_only * change * (1 - change)
    base_share = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)
    variance = n * (2 * base_share + change * (1 - change))
    distance = head_only - base_only - n * change
    return distance / np.sqrt(np.maximum(variance, 1e-300))


def accuracy_interval(base_only, head_only, n, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Tango's (confidence) score interval of the accuracy change, from the counts right only at base
    and right only at head among n paired examples (arrays broadcast together)."""
    base_only, head_only, n = np.broadcast_arrays(*(np.asarray(x, float) for x in (base_only, head_only, n)))
    z = _two_sided_z(confidence)
    observed = (head_only - base_only) / n
    ends = []
    for outward in (-1.0, 1.0):
        # Bisection between the observed change (always inside) and the far end of [-1, 1]; the end
        # kept is the last point found inside, so the interval holds only changes the test accepts.
        inside, outside = observed.copy(), np.full_like(observed, outward)
        for _ in range(BISECTION_STEPS):
            middle = (inside + outside) / 2
            accepted = np.abs(_tango_statistic(middle, base_only, head_only, n)) <= z
            inside, outside = np.where(accepted, middle, inside), np.where(accepted, outside, middle)
        at_limit = np.abs(_tango_statistic(outside, base_only, head_only, n)) <= z
        ends.append(np.where(at_limit, outside, inside))
    low, high = ends
    # At 0 the statistic is McNemar's: hold 0 exactly when its test does not reject, whatever the
    # bisection's last step, so the p-value and the interval can never disagree.
    holds_zero = mcnemar_p(base_only, head_only) >= 1 - confidence
    return np.where(holds_zero, np.minimum(low, 0.0), low), np.where(holds_zero, np.maximum(high, 0.0), high)


def mean_interval(changes, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Student's t interval of the mean of `changes` (last axis: the paired examples).

    Per-example loss changes are heavy-tailed (a wrong image's loss can be 100 times a right one's).
    A bootstrap's distribution of their mean is as lumpy as the few large changes that decide it,
    so its quantiles sit inside +-1.96 standard errors: on the coverage benchmark's pairs
    (n = 1,051) a percentile bootstrap covered as little as 0.90 at a nominal 0.95, BCa and
    studentized ones 0.87, the t interval 0.936 or more.
    """
    changes = np.atleast_2d(np.asarray(changes, float))
    n = changes.shape[-1]
    mean = changes.mean(axis=-1)
    if n < 2:
        return mean - np.inf, mean + np.inf  # one example says nothing about the spread
    half_width = stats.t.ppf(0.5 + confidence / 2, n - 1) * changes.std(axis=-1, ddof=1) / np.sqrt(n)
    return mean - half_width, mean + half_width


def _f1_per_class(true_positives, actual_totals, predicted_totals):
    denominator = actual_totals + predicted_totals
    return np.divide(2 * true_positives, denominator, out=np.zeros(np.shape(denominator)), where=true_positives > 0)


def macro_f1(confusion: np.ndarray) -> np.ndarray:
    """Mean over classes of F1 = 2 TP / (predicted + actual), 0 for a class with no true positive,
    from confusion matrices (..., classes, classes) indexed [actual, predicted]."""
    true_positives = np.diagonal(confusion, axis1=-2, axis2=-1)
    return _f1_per_class(true_positives, confusion.sum(axis=-1), confusion.sum(axis=-2)).mean(axis=-1)


def _macro_f1_left_out(confusion: np.ndarray, actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro F1 of `confusion` with one example taken out, one value per (actual, predicted) pair given:
    only the F1 of those two classes moves."""
    true_positives, actual_totals, predicted_totals = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    f1 = _f1_per_class(true_positives, actual_totals, predicted_totals)
    right = (actual == predicted).astype(float)
    actual_class = _f1_per_class(true_positives[actual] - right, actual_totals[actual] - 1,
                                 predicted_totals[actual] - right)
    predicted_class = _f1_per_class(true_positives[predicted], actual_totals[predicted],
                                    predicted_totals[predicted] - 1)
    total = f1.sum() - f1[actual] + actual_class + (1 - right) * (predicted_class - f1[predicted])
    return total / len(f1)


def _jackknife_error(full: float, left_out: np.ndarray, counts: np.ndarray) -> float:
    """The jackknife standard error of a statistic, from its value on all n examples and its value
    with one example of each kind left out (`counts` examples of each kind)."""
    n = counts.sum()
    pseudo = n * full - (n - 1) * left_out
    spread = np.sum(counts * (pseudo - np.sum(counts * pseudo) / n) ** 2) / (n - 1)
    return float(np.sqrt(spread / n))


def macro_f1_interval(actual, base_predicted, head_predicted, num_classes: int, confidence: float) -> tuple[float, float]:
    """The interval of the macro F1 change (classes coded 0..num_classes - 1, one set for both sides):
    Tango's interval of the accuracy change on the same examples, moved to the macro F1 change and
    scaled by the ratio of the two changes' jackknife standard errors.

    Macro F1 moves with the same disagreements that move accuracy, weighted by class. Borrowing
    Tango's shape keeps what a bootstrap loses with few disagreements (a BCa bootstrap covered 0.88
    with about 4 of 1,051 examples changing sides) and gives a width that follows n when none do.
    """
    actual, base_predicted, head_predicted = (np.asarray(x, np.int64) for x in (actual, base_predicted, head_predicted))
    n = len(actual)
    # Examples of one (actual, base predicted, head predicted) cell are interchangeable: jackknife per cell.
    cells, counts = np.unique((actual * num_classes + base_predicted) * num_classes + head_predicted,
                              return_counts=True)
    cell_actual, cell_base, cell_head = cells // num_classes**2, cells // num_classes % num_classes, cells % num_classes
    confusions = []
    for predicted in (base_predicted, head_predicted):
        confusion = np.zeros((num_classes, num_classes))
        np.add.at(confusion, (actual, predicted), 1)
        confusions.append(confusion)
    observed = float(macro_f1(confusions[1]) - macro_f1(confusions[0]))
    base_only = int(np.sum((actual == base_predicted) & (actual != head_predicted)))
    head_only = int(np.sum((actual != base_predicted) & (actual == head_predicted)))
    accuracy_observed = (head_only - base_only) / n
    low, high = (float(end) for end in accuracy_interval(base_only, head_only, n, confidence))
    if n < 2:
        return observed + low - accuracy_observed, observed + high - accuracy_observed  # no jackknife of one
    f1_left_out = (_macro_f1_left_out(confusions[1], cell_actual, cell_head)
                   - _macro_f1_left_out(confusions[0], cell_actual, cell_base))
    accuracy_left_out = (n * accuracy_observed - ((cell_actual == cell_head) * 1.0 - (cell_actual == cell_base))) / (n - 1)
    f1_error = _jackknife_error(observed, f1_left_out, counts)
    accuracy_error = _jackknife_error(accuracy_observed, accuracy_left_out, counts)
    if accuracy_error > 0:
        scale = f1_error / accuracy_error
        return observed + scale * (low - accuracy_observed), observed + scale * (high - accuracy_observed)
    # No example changed between right and wrong: Tango's interval at 0 of n, or, when predictions
    # moved between wrong classes, the jackknife's t interval where that is wider.
    spread = stats.t.ppf(0.5 + confidence / 2, max(n - 1, 1)) * f1_error
    return observed + min(low, -spread), observed + max(high, spread)
