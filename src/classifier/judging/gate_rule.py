"""The retrain gate's rule: promote a challenger over the champion, on two tables of the same test split.

Pure: it judges with classifier.judging.judgement, the pull-request report's judgement, and decides on
its words, so the gate and the report cannot part: a promoted challenger always passes the
report's `--fail-on-regression` on the same tables.

A challenger is promoted only when (1) it is non-inferior to the champion on every metric: the
lower end of its gain's (1 - alpha) interval (head - base; base - head for loss), the report's
interval, is above -min_effect, which is exactly "the verdict does not fail" (`Verdict.fails`);
(2) it is not measurably worse (the verdict says "worse": the interval excludes 0 on the worse
side) on any metric the policy's `keep_out_measurably_worse` names (by default accuracy and macro
F1); and (3) its accuracy is at least `best_accuracy - min_effect.accuracy`, where `best_accuracy`
is the best accuracy ever promoted on this test split (None: no record yet, and the champion's
accuracy stands in).
(1) alone lets each step lose a little less than min_effect, and five steps lose five times that;
(2) keeps out each such step once the test set can see it; (3) bounds the whole chain: no
promoted model is ever more than min_effect below the best one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from classifier.judging.judgement import Discordance, Judgement, MetricVerdict, Resolution, headline, judge_pair
from classifier.params import CompareParams
from classifier.judging.tables import PredictionsError, pairing_problem
from classifier.judging.verdicts import EPSILON, HIGHER_IS_BETTER, LABELS, METRICS


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # "promoted: " or "not promoted: ", the judgement's headline, then the checks
    judgement: Judgement  # the same words and (1 - alpha) intervals as the pull-request report
    champion: Mapping[str, float]
    challenger: Mapping[str, float]
    # The lower ends of the challenger's gain's (1 - alpha) intervals per metric (loss: base - head).
    gain_lower_bounds: Mapping[str, float]
    paired: Discordance
    floor: float  # the best accuracy (best_accuracy, or the champion's without one) - min_effect.accuracy
    best_accuracy: float  # the record after this decision
    checks: Mapping[str, bool] = field(default_factory=dict)
    resolution: tuple[Resolution, ...] = ()


def gain_lower_bound(metric: MetricVerdict) -> float:
    """The lower end of the interval of the challenger's gain: the change's, or its negative for loss."""
    return metric.low if HIGHER_IS_BETTER[metric.name] else -metric.high


def gate_checks(metrics: tuple[MetricVerdict, ...], policy: CompareParams, floor: float) -> dict[str, bool]:
    """Each check of the rule (module docstring) on a judgement's metrics, by name."""
    by_name = {metric.name: metric for metric in metrics}
    # Non-inferiority is the report's own pass, so the two can never disagree on the same tables.
    checks = {f"{name} non-inferior": not by_name[name].verdict.fails for name in METRICS}
    checks |= {f"{metric.name} not measurably worse": not metric.verdict.worse for metric in metrics
               if metric.name in policy.keep_out_measurably_worse}
    checks["accuracy not below the best minus min_effect"] = by_name["accuracy"].head >= floor - EPSILON
    return checks


def gate(champion: pd.DataFrame, challenger: pd.DataFrame, policy: CompareParams,
         best_accuracy: float | None) -> GateDecision:
    """Promote the challenger only if non-inferior to the champion, not measurably worse on the
    policy's keep_out_measurably_worse metrics, and not below the record minus min_effect."""
    if problem := pairing_problem(champion, challenger):
        raise PredictionsError(f"champion and challenger cannot be compared: {problem}")
    judgement = judge_pair(champion, challenger, policy)
    champion_numbers = {metric.name: metric.base for metric in judgement.metrics}
    challenger_numbers = {metric.name: metric.head for metric in judgement.metrics}
    lower = {metric.name: gain_lower_bound(metric) for metric in judgement.metrics}
    min_effect = policy.min_effect.model_dump()
    # Without a record yet the champion's accuracy is the best known; a promotion can only raise it.
    best = champion_numbers["accuracy"] if best_accuracy is None else best_accuracy
    floor = best - min_effect["accuracy"]
    accuracy = challenger_numbers["accuracy"]
    checks = gate_checks(judgement.metrics, policy, floor)
    promote = all(checks.values())

    level = f"{judgement.confidence:.0%}"
    if promote:
        reason = (f"promoted: {headline(judgement)}. Non-inferior to the champion on every metric, and accuracy "
                  f"{accuracy:.4f} is at least the best {best:.4f} minus {min_effect['accuracy']:g}")
    else:
        details = []
        worse = [f"{LABELS[metric.name]} ({level} interval {metric.low:+.4f} to {metric.high:+.4f})"
                 for metric in judgement.metrics if not checks.get(f"{metric.name} not measurably worse", True)]
        if worse:
            details.append(f"measurably worse on {', '.join(worse)}, which the base's "
                           "compare.keep_out_measurably_worse keeps out")
        for name in METRICS:
            if not checks[f"{name} non-inferior"]:
                details.append(f"{LABELS[name]} gain could be as low as {lower[name]:+.4f} "
                               f"(the {level} interval's lower end), below -{min_effect[name]:g}")
        if accuracy < floor - EPSILON:
            details.append(f"accuracy {accuracy:.4f} is below the best {best:.4f} minus {min_effect['accuracy']:g}")
        checks_failed = "; ".join(details)
        reason = f"not promoted: {headline(judgement)}. {checks_failed[0].upper()}{checks_failed[1:]}"
    return GateDecision(promote, reason, judgement, champion_numbers, challenger_numbers, lower,
                        judgement.paired, floor, max(best, accuracy) if promote else best, checks,
                        judgement.resolution)
