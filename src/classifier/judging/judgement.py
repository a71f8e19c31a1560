"""A judgement: the base's per-example results against the head's, metric by metric, on paired
(1 - alpha) intervals of the change (classifier.judging.intervals), in the words of classifier.judging.verdicts.

Pure: no torch, git or DVC. The policy is the BASE revision's `compare` section
(`classifier.params.CompareParams`), so a pull request cannot loosen the rules it is judged by.

Resolution: what the test split can tell apart. An equally good challenger's observed change is
centred on 0 with the interval's standard error `se` (its width / 2 z(1 - alpha/2)); the lower end
of its interval clears -margin with probability POWER (95%) only when
margin >= (z(1 - alpha/2) + z(POWER)) se, the metric's *resolution*. A min_effect below it is
decided by chance: each comparison states the resolution and how many test examples the
configured min_effect would need (se shrinks as 1 / sqrt(n)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from classifier.judging.intervals import accuracy_interval, macro_f1_interval, mcnemar_p, mean_interval
from classifier.params import CompareParams
from classifier.judging.tables import PredictionsError, class_set, codes, loss_problem, pairing_problem, point_metrics
from classifier.judging.verdicts import (
    COULD_NOT_JUDGE, EPSILON, LABELS, METRICS, NEW, NOT_COMPARABLE, SEVERITY, Verdict, metric_verdict, overall,
)

# The resolution: the margin an equally good challenger clears this often.
POWER = 0.95


@dataclass(frozen=True)
class Results:
    """One revision's per-example results and the fingerprint of the test split they were made on."""

    fingerprint: str
    predictions: pd.DataFrame


@dataclass(frozen=True)
class MetricVerdict:
    name: str
    base: float | None
    head: float
    delta: float | None  # head - base
    low: float | None  # the (1 - alpha) interval of the delta
    high: float | None
    min_effect: float | None
    verdict: Verdict


@dataclass(frozen=True)
class Discordance:
    """The paired test of accuracy: how many examples changed sides, and McNemar's p-value (the
    score test, which accuracy's interval inverts)."""

    n: int
    base_only: int  # right at base, wrong at head
    head_only: int  # wrong at base, right at head
    p_value: float


@dataclass(frozen=True)
class Interval:
    """A paired interval of a metric's delta (head - base), and the standard error its width implies."""

    low: float
    high: float
    standard_error: float


@dataclass(frozen=True)
class Resolution:
    """The smallest margin of one metric that a comparison on this test split resolves (module docstring)."""

    name: str
    margin: float  # an equally good challenger clears -margin with probability POWER
    min_effect: float  # the configured margin
    examples: int  # the paired test examples
    examples_needed: int  # about how many min_effect would need to reach the resolution

    @property
    def resolved(self) -> bool:
        return self.min_effect >= self.margin - EPSILON

    def describe(self) -> str:
        text = f"{self.name} resolves {self.margin:.4f} on {self.examples:,} examples (min_effect {self.min_effect:g})"
        if self.resolved:
            return text
        if not np.isfinite(self.margin):
            return f"{text}: too few examples to estimate the spread of the change"
        return (f"{text}: min_effect is below the resolution, so an equally good model can fail on chance; "
                f"it would need about {self.examples_needed:,} test examples, or min_effect >= {self.margin:.4f}")


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    metrics: tuple[MetricVerdict, ...]
    reason: str
    paired: Discordance | None = None
    confidence: float | None = None  # of the intervals, 1 - alpha
    resolution: tuple[Resolution, ...] = ()


def check_losses(table: pd.DataFrame, side: str) -> None:
    """Refuse a table whose losses cannot be averaged (NaN, inf, negative), as read_predictions does."""
    if problem := loss_problem(table["loss"]):
        raise PredictionsError(f"the {side}'s per-example results: {problem}")


def discordance(base: pd.DataFrame, head: pd.DataFrame) -> Discordance:
    base_right = (base["actual"] == base["predicted"]).to_numpy()
    head_right = (head["actual"] == head["predicted"]).to_numpy()
    base_only = int(np.sum(base_right & ~head_right))
    head_only = int(np.sum(~base_right & head_right))
    return Discordance(len(base), base_only, head_only, float(mcnemar_p(base_only, head_only)))


def paired_intervals(base: pd.DataFrame, head: pd.DataFrame, classes: list[str], paired: Discordance,
                     confidence: float) -> dict[str, Interval]:
    """Each metric's (confidence) interval of head - base: Tango's for accuracy (on `paired`, the
    discordant counts), Student's t for mean loss, Tango's carried over by the jackknife for macro F1
    (classifier.judging.intervals), on `classes`, the one class set of both sides."""
    actual, base_predicted, head_predicted = (codes(column, classes)
                                              for column in (base["actual"], base["predicted"], head["predicted"]))
    ends = {
        "accuracy": accuracy_interval(paired.base_only, paired.head_only, paired.n, confidence),
        "macro_f1": macro_f1_interval(actual, base_predicted, head_predicted, len(classes), confidence),
        "loss": mean_interval(head["loss"].to_numpy(float) - base["loss"].to_numpy(float), confidence),
    }
    z = stats.norm.ppf(0.5 + confidence / 2)
    return {name: Interval(float(np.squeeze(low)), float(np.squeeze(high)), float(np.squeeze(high - low)) / (2 * z))
            for name, (low, high) in ends.items()}


def resolution(intervals: Mapping[str, Interval], examples: int, policy: CompareParams) -> tuple[Resolution, ...]:
    """Per metric, the margin an equally good challenger clears with probability POWER, and the
    test examples min_effect would need to be that margin (the standard error goes as 1 / sqrt(n))."""
    z = stats.norm.ppf(1 - policy.alpha / 2) + stats.norm.ppf(POWER)
    min_effect = policy.min_effect.model_dump()
    resolutions = []
    for name in METRICS:
        margin = float(z * intervals[name].standard_error)
        # Infinite when one example leaves no spread to estimate: no number of examples can be named.
        needed = int(np.ceil(examples * (margin / min_effect[name]) ** 2)) if np.isfinite(margin) else 0
        resolutions.append(Resolution(name, margin, min_effect[name], examples, needed))
    return tuple(resolutions)


def _unjudged(head: pd.DataFrame, verdict: Verdict, reason: str, base: pd.DataFrame | None = None) -> Judgement:
    head_numbers = point_metrics(head)
    base_numbers = point_metrics(base) if base is not None else {}
    metrics = tuple(
        MetricVerdict(name, base_numbers.get(name), head_numbers[name],
                      head_numbers[name] - base_numbers[name] if name in base_numbers else None,
                      None, None, None, verdict)
        for name in METRICS)
    return Judgement(verdict, metrics, reason)


def cannot_judge(head: pd.DataFrame, reason: str) -> Judgement:
    """The head's numbers, judged against nothing: the base's results or policy could not be used."""
    return _unjudged(head, COULD_NOT_JUDGE, reason)


def judge(base: Results | None, head: Results, policy: CompareParams | None) -> Judgement:
    """The base's results against the head's, under the base's policy (None: the base has none
    that can be read, so a pair of comparable results could not be judged)."""
    check_losses(head.predictions, "head")
    if base is None:
        return _unjudged(head.predictions, NEW, "the base has no per-example results: every metric is new")
    check_losses(base.predictions, "base")
    if base.fingerprint != head.fingerprint:
        return _unjudged(head.predictions, NOT_COMPARABLE,
                         f"the test sets differ: base fingerprint {base.fingerprint}, head {head.fingerprint}",
                         base.predictions)
    if problem := pairing_problem(base.predictions, head.predictions):
        return _unjudged(head.predictions, NOT_COMPARABLE, f"the per-example results do not pair: {problem}",
                         base.predictions)
    if policy is None:
        return cannot_judge(head.predictions, "the base has no `compare` policy that can be read")
    return judge_pair(base.predictions, head.predictions, policy)


def judge_pair(base: pd.DataFrame, head: pd.DataFrame, policy: CompareParams) -> Judgement:
    """Two tables of the same test examples, judged metric by metric on (1 - alpha) paired intervals."""
    check_losses(base, "base")
    check_losses(head, "head")
    confidence = 1 - policy.alpha
    # One class set for both sides, so macro F1's change averages over the classes its interval does.
    classes = class_set(base, head)
    base_numbers, head_numbers = point_metrics(base, classes), point_metrics(head, classes)
    paired = discordance(base, head)
    intervals = paired_intervals(base, head, classes, paired, confidence)
    min_effect = policy.min_effect.model_dump()
    metrics = []
    for name in METRICS:
        low, high = intervals[name].low, intervals[name].high
        metrics.append(MetricVerdict(name, base_numbers[name], head_numbers[name], head_numbers[name] - base_numbers[name],
                                     low, high, min_effect[name], metric_verdict(name, low, high, min_effect[name])))
    verdict = overall([metric.verdict for metric in metrics])
    reason = (f"{paired.n:,} paired test examples: {paired.base_only} right only at base, "
              f"{paired.head_only} right only at head (McNemar p = {paired.p_value:.3g})")
    return Judgement(verdict, tuple(metrics), reason, paired, confidence, resolution(intervals, paired.n, policy))


def changes_by_verdict(judgement: Judgement) -> list[tuple[Verdict, str]]:
    """Each verdict among the metrics, the overall one first, with its metrics' changes
    (`accuracy -0.0124, macro F1 -0.0126`); empty when nothing was measured (new, not comparable)."""
    if judgement.verdict not in SEVERITY:
        return []
    verdicts = sorted({metric.verdict for metric in judgement.metrics}, key=SEVERITY.index)
    return [(verdict, ", ".join(f"{LABELS[metric.name]} {metric.delta:+.4f}" for metric in judgement.metrics
                                if metric.verdict == verdict))
            for verdict in verdicts]


def headline(judgement: Judgement) -> str:
    """The verdict in one line, each metric with its change, the overall verdict first:
    `worse, but by less than matters (accuracy -0.0124, macro F1 -0.0126); no detectable change (loss -0.0269)`."""
    groups = changes_by_verdict(judgement)
    return "; ".join(f"{verdict} ({changes})" for verdict, changes in groups) if groups else str(judgement.verdict)
