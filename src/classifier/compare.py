"""Judging: is a model better than, worse than, or indistinguishable from another on the same test images?

Pure: pandas, numpy and scipy.stats; no torch, git or DVC. The inputs are per-example tables
(evaluate's `metrics/predictions.csv`) and the BASE revision's `compare` policy
(`classifier.params.CompareParams`), so a pull request cannot loosen the rules it is judged by.
The pull-request report (pipeline.report) and the retrain gate (pipeline.retrain) both call it.

API

- `read_predictions(text, source) -> DataFrame`: a per-example CSV (columns `id`, `actual`,
  `predicted`, `loss`; one row per test example, in the test split's order) checked and typed.
  `source` names the file in errors. Raises `PredictionsError` (a ValueError).
- `point_metrics(table) -> {"accuracy", "macro_f1", "loss"}`: the numbers of one table.
- `judge(base, head, policy) -> Judgement`: `base` and `head` are `Results` (the test split's
  fingerprint and the table); `base` is None when the base has no results; `policy` is the
  base's (None when it has none, which gives COULD_NOT_JUDGE for comparable results). The
  verdict is NEW (no base), NOT_COMPARABLE (different test sets), IMPROVED, REGRESSED or NO_CHANGE.
  `cannot_judge(head, reason)` is the Judgement for a base whose results or policy are unreadable.
- `exit_status(verdict)`: 0, 1 for REGRESSED, 2 for NOT_COMPARABLE / COULD_NOT_JUDGE.
- `gate(champion, challenger, policy, best_accuracy) -> GateDecision`: the retrain gate on two
  tables of the same test split; `.promote`, `.reason`, `.best_accuracy` (the record to keep
  after this decision) and the numbers.
- Both carry `.resolution`: per metric, the smallest margin this test split can resolve (below).

The statistics

- Accuracy: an exact McNemar test. Only the discordant pairs (right at base and wrong at head,
  or the reverse) carry information; under "no change" each is a fair coin, so the p-value is
  `scipy.stats.binomtest(head_only, base_only + head_only, 0.5)`.
- Accuracy, macro F1 and mean loss: a paired bootstrap (`scipy.stats.bootstrap(paired=True)`,
  percentile intervals, a fixed seed so the same inputs give the same report): test examples are
  resampled with replacement, the same ones for both sides, and the delta head - base recomputed.
- A metric is *improved* or *regressed* only when its (1 - alpha) interval excludes zero (for
  accuracy, also McNemar p < alpha) AND the delta is at least `min_effect`; otherwise it is *no
  detectable change*. The overall verdict is *regressed* if any metric regressed, else *improved*
  if any improved, else *no detectable change*.

The gate, and why a chain of promotions cannot drift

A challenger is promoted only when (1) it is non-inferior to the champion on every metric: the
one-sided (1 - alpha) lower bound of its gain (head - base; base - head for loss) is above
-min_effect, and (2) its accuracy is at least `best_accuracy - min_effect.accuracy`, where
`best_accuracy` is the best accuracy ever promoted on this test split (None: no record yet, and
the champion's accuracy stands in).
(1) alone lets each step lose a little less than min_effect, and five steps lose five times that;
(2) bounds the whole chain: no promoted model is ever more than min_effect below the best one.

Resolution: what the test split can tell apart

The paired bootstrap's standard error `se` of a metric's delta is set by how many test examples
the two models disagree on. An equally good challenger's observed gain is centred on 0 with
that spread, and it passes non-inferiority when gain - z(1 - alpha) se > -margin; it does so with
probability POWER (95%) only when margin >= (z(1 - alpha) + z(POWER)) se, the metric's
*resolution*. A min_effect below it is decided by chance: each comparison states the resolution
and how many test examples the configured min_effect would need (se shrinks as 1 / sqrt(n)),
and `Resolution.resolved` is False when min_effect is below it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from classifier.params import CompareParams

COLUMNS = ("id", "actual", "predicted", "loss")
METRICS = ("accuracy", "macro_f1", "loss")
# Which way is better for each test metric.
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}

IMPROVED, REGRESSED, NO_CHANGE = "improved", "regressed", "no detectable change"
NEW, NOT_COMPARABLE, COULD_NOT_JUDGE = "new", "not comparable", "could not judge"

# Fixed, so the same two tables always give the same intervals (a report must be reproducible).
BOOTSTRAP_SEED = 20_261_110
# Bound the bootstrap's working memory: resamples per vectorised call x examples <= this.
BOOTSTRAP_CELLS = 4_000_000
# Deltas are differences of rounded numbers; this absorbs float noise at the min_effect boundary.
EPSILON = 1e-12
# The resolution: the margin an equally good challenger clears this often.
POWER = 0.95


class PredictionsError(ValueError):
    """A per-example table that cannot be used; the message names the file and the problem."""


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
    verdict: str


@dataclass(frozen=True)
class Discordance:
    """The paired test of accuracy: how many examples changed sides, and McNemar's exact p-value."""

    n: int
    base_only: int  # right at base, wrong at head
    head_only: int  # wrong at base, right at head
    p_value: float


@dataclass(frozen=True)
class Interval:
    """A paired bootstrap interval of a metric's delta (head - base), and its standard error."""

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
        return (f"{text}: min_effect is below the resolution, so an equally good model can fail on chance; "
                f"it would need about {self.examples_needed:,} test examples, or min_effect >= {self.margin:.4f}")


@dataclass(frozen=True)
class Judgement:
    verdict: str
    metrics: tuple[MetricVerdict, ...]
    reason: str
    paired: Discordance | None = None
    confidence: float | None = None  # of the intervals, 1 - alpha
    resolution: tuple[Resolution, ...] = ()


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    champion: Mapping[str, float]
    challenger: Mapping[str, float]
    # One-sided (1 - alpha) lower bounds of the challenger's gain per metric (loss: base - head).
    gain_lower_bounds: Mapping[str, float]
    paired: Discordance
    floor: float  # the best accuracy (best_accuracy, or the champion's without one) - min_effect.accuracy
    best_accuracy: float  # the record after this decision
    checks: Mapping[str, bool] = field(default_factory=dict)
    resolution: tuple[Resolution, ...] = ()


# ---------------------------------------------------------------- tables


def read_predictions(text: str, source: str = "predictions.csv") -> pd.DataFrame:
    """A per-example CSV as a DataFrame of (id, actual, predicted: str; loss: float), checked."""
    try:
        # keep_default_na: a class called "NA" or "None" is a class name, not a missing value.
        table = pd.read_csv(io.StringIO(text), dtype={"id": str, "actual": str, "predicted": str},
                            keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as error:
        raise PredictionsError(f"{source}: not a readable CSV ({error})") from None
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise PredictionsError(f"{source}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    table = table.loc[:, list(COLUMNS)]
    if table.empty:
        raise PredictionsError(f"{source}: no examples")
    loss = pd.to_numeric(table["loss"], errors="coerce")
    if loss.isna().any() or not np.isfinite(loss).all() or (loss < 0).any():
        row = int(np.flatnonzero(~(np.isfinite(loss) & (loss >= 0)))[0])
        raise PredictionsError(f"{source}: row {row + 1}: loss {table['loss'].iloc[row]!r} is not a number >= 0")
    if (table[["id", "actual", "predicted"]] == "").any().any():
        raise PredictionsError(f"{source}: an empty id, actual or predicted cell")
    if table["id"].duplicated().any():
        raise PredictionsError(f"{source}: id {table['id'][table['id'].duplicated()].iloc[0]!r} appears twice")
    return table.assign(loss=loss.astype(float)).reset_index(drop=True)


def point_metrics(table: pd.DataFrame) -> dict[str, float]:
    labels, codes = _codes(table, table)
    actual, predicted = codes[0], codes[1]
    return {
        "accuracy": float(np.mean(actual == predicted)),
        "macro_f1": float(_macro_f1(actual, predicted, len(labels))),
        "loss": float(table["loss"].mean()),
    }


def _codes(base: pd.DataFrame, head: pd.DataFrame) -> tuple[list[str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Class names as integer codes shared by both tables: actual, base predicted, head predicted."""
    labels = sorted(set(base["actual"]) | set(base["predicted"]) | set(head["predicted"]))
    index = {name: position for position, name in enumerate(labels)}
    encode = lambda column: column.map(index).to_numpy(dtype=np.int64)  # noqa: E731
    return labels, (encode(base["actual"]), encode(base["predicted"]), encode(head["predicted"]))


def _macro_f1(actual: np.ndarray, predicted: np.ndarray, num_classes: int, axis: int = -1) -> np.ndarray:
    """Mean over classes of F1 = 2 TP / (predicted + actual), 0 for a class with no TP, for each
    stack of resamples along the last axis. Averaged over the classes that occur in either table."""
    if axis not in (-1, actual.ndim - 1):
        raise ValueError("examples must lie along the last axis")
    rows = actual.reshape(-1, actual.shape[-1])
    # One bincount for every resample's confusion matrix at once: offset each row's cells.
    cells = rows * num_classes + predicted.reshape(rows.shape)
    cells += (np.arange(len(rows)) * num_classes * num_classes)[:, None]
    confusion = np.bincount(cells.ravel(), minlength=len(rows) * num_classes**2).reshape(-1, num_classes, num_classes)
    true_positives = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=1) + confusion.sum(axis=2)
    f1 = np.where(true_positives > 0, 2 * true_positives / np.maximum(denominator, 1), 0.0)
    return f1.mean(axis=1).reshape(actual.shape[:-1])


def pairing_problem(base: pd.DataFrame, head: pd.DataFrame) -> str | None:
    """Why two tables cannot be paired example by example, or None when they can."""
    if len(base) != len(head):
        return f"the base has {len(base):,} examples and the head {len(head):,}"
    if not base["id"].reset_index(drop=True).equals(head["id"].reset_index(drop=True)):
        return "the examples' ids differ (a different test set, or another order)"
    if not base["actual"].reset_index(drop=True).equals(head["actual"].reset_index(drop=True)):
        return "the same examples carry different true classes"
    return None


# ---------------------------------------------------------------- paired statistics


def discordance(base: pd.DataFrame, head: pd.DataFrame) -> Discordance:
    base_right = (base["actual"] == base["predicted"]).to_numpy()
    head_right = (head["actual"] == head["predicted"]).to_numpy()
    base_only = int(np.sum(base_right & ~head_right))
    head_only = int(np.sum(~base_right & head_right))
    # No discordant pair: nothing changed sides, so there is no evidence of a change at all.
    p_value = 1.0 if base_only + head_only == 0 else float(stats.binomtest(head_only, base_only + head_only, 0.5).pvalue)
    return Discordance(len(base), base_only, head_only, p_value)


def paired_intervals(base: pd.DataFrame, head: pd.DataFrame, confidence: float, resamples: int) -> dict[str, Interval]:
    """Percentile bootstrap intervals of head - base for each metric, resampling examples in pairs."""
    labels, (actual, base_predicted, head_predicted) = _codes(base, head)
    num_classes = len(labels)
    # Two arrays rather than five: resampling (a gather per array) is most of the cost.
    # Each example's three classes packed into one integer, and its change in loss.
    packed = (actual * num_classes + base_predicted) * num_classes + head_predicted
    loss_change = head["loss"].to_numpy(float) - base["loss"].to_numpy(float)

    def deltas(packed, loss_change, axis=-1):
        actual, base_predicted, head_predicted = packed // num_classes**2, packed // num_classes % num_classes, packed % num_classes
        return np.stack([
            np.mean(head_predicted == actual, axis=axis) - np.mean(base_predicted == actual, axis=axis),
            _macro_f1(actual, head_predicted, num_classes, axis) - _macro_f1(actual, base_predicted, num_classes, axis),
            np.mean(loss_change, axis=axis),
        ])

    result = stats.bootstrap(
        (packed, loss_change), deltas, paired=True, vectorized=True, n_resamples=resamples,
        confidence_level=confidence, method="percentile", batch=max(1, BOOTSTRAP_CELLS // len(packed)),
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    low, high = result.confidence_interval
    return {name: Interval(float(low[i]), float(high[i]), float(result.standard_error[i]))
            for i, name in enumerate(METRICS)}


def resolution(intervals: Mapping[str, Interval], examples: int, policy: CompareParams) -> tuple[Resolution, ...]:
    """Per metric, the margin an equally good challenger clears with probability POWER, and the
    test examples min_effect would need to be that margin (the standard error goes as 1 / sqrt(n))."""
    z = stats.norm.ppf(1 - policy.alpha) + stats.norm.ppf(POWER)
    min_effect = policy.min_effect.model_dump()
    resolutions = []
    for name in METRICS:
        margin = z * intervals[name].standard_error
        needed = int(np.ceil(examples * (margin / min_effect[name]) ** 2))
        resolutions.append(Resolution(name, margin, min_effect[name], examples, needed))
    return tuple(resolutions)


def _gain(name: str, delta: float) -> float:
    return delta if HIGHER_IS_BETTER[name] else -delta


def metric_verdict(name: str, delta: float, low: float, high: float, min_effect: float, significant: bool = True) -> str:
    """Improved / regressed only when the interval excludes zero and the change is big enough."""
    excludes_zero = low > 0 or high < 0
    if not (significant and excludes_zero and abs(delta) >= min_effect - EPSILON):
        return NO_CHANGE
    return IMPROVED if _gain(name, delta) > 0 else REGRESSED


def overall(verdicts: Sequence[str]) -> str:
    if REGRESSED in verdicts:
        return REGRESSED  # a mixed result is not an improvement
    return IMPROVED if IMPROVED in verdicts else NO_CHANGE


# ---------------------------------------------------------------- verdicts


def _unjudged(head: pd.DataFrame, verdict: str, reason: str, base: pd.DataFrame | None = None) -> Judgement:
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
    if base is None:
        return _unjudged(head.predictions, NEW, "the base has no per-example results: every metric is new")
    if base.fingerprint != head.fingerprint:
        return _unjudged(head.predictions, NOT_COMPARABLE,
                         f"the test sets differ: base fingerprint {base.fingerprint}, head {head.fingerprint}",
                         base.predictions)
    if problem := pairing_problem(base.predictions, head.predictions):
        return _unjudged(head.predictions, NOT_COMPARABLE, f"the per-example results do not pair: {problem}",
                         base.predictions)
    if policy is None:
        return cannot_judge(head.predictions, "the base has no `compare` policy that can be read")
    confidence = 1 - policy.alpha
    base_numbers, head_numbers = point_metrics(base.predictions), point_metrics(head.predictions)
    intervals = paired_intervals(base.predictions, head.predictions, confidence, policy.resamples)
    paired = discordance(base.predictions, head.predictions)
    min_effect = policy.min_effect.model_dump()
    metrics = []
    for name in METRICS:
        delta = head_numbers[name] - base_numbers[name]
        low, high = intervals[name].low, intervals[name].high
        # Accuracy has an exact test as well: both must find the change.
        significant = paired.p_value < policy.alpha if name == "accuracy" else True
        metrics.append(MetricVerdict(name, base_numbers[name], head_numbers[name], delta, low, high, min_effect[name],
                                     metric_verdict(name, delta, low, high, min_effect[name], significant)))
    verdict = overall([metric.verdict for metric in metrics])
    reason = (f"{paired.n:,} paired test examples: {paired.base_only} right only at base, "
              f"{paired.head_only} right only at head (McNemar p = {paired.p_value:.3g})")
    return Judgement(verdict, tuple(metrics), reason, paired, confidence,
                     resolution(intervals, paired.n, policy))


def exit_status(verdict: str) -> int:
    """What --fail-on-regression exits with: 1 regressed, 2 nothing could be judged, else 0."""
    if verdict == REGRESSED:
        return 1
    return 2 if verdict in (NOT_COMPARABLE, COULD_NOT_JUDGE) else 0


# ---------------------------------------------------------------- the retrain gate


def gate(champion: pd.DataFrame, challenger: pd.DataFrame, policy: CompareParams,
         best_accuracy: float | None) -> GateDecision:
    """Promote the challenger only if non-inferior to the champion and not below the record minus min_effect."""
    if problem := pairing_problem(champion, challenger):
        raise PredictionsError(f"champion and challenger cannot be compared: {problem}")
    champion_numbers, challenger_numbers = point_metrics(champion), point_metrics(challenger)
    # The ends of a two-sided (1 - 2 alpha) interval are one-sided (1 - alpha) bounds.
    intervals = paired_intervals(champion, challenger, 1 - 2 * policy.alpha, policy.resamples)
    min_effect = policy.min_effect.model_dump()
    lower = {name: (bounds.low if HIGHER_IS_BETTER[name] else -bounds.high) for name, bounds in intervals.items()}
    checks = {f"{name} non-inferior": lower[name] > -min_effect[name] for name in METRICS}
    # Without a record yet the champion's accuracy is the best known; a promotion can only raise it.
    best = champion_numbers["accuracy"] if best_accuracy is None else best_accuracy
    floor = best - min_effect["accuracy"]
    accuracy = challenger_numbers["accuracy"]
    checks["accuracy not below the best minus min_effect"] = accuracy >= floor - EPSILON
    promote = all(checks.values())

    if promote:
        reason = (f"promoted: non-inferior to the champion on every metric, and accuracy {accuracy:.4f} is at "
                  f"least the best {best:.4f} minus {min_effect['accuracy']:g}")
    else:
        failed = [name for name, passed in checks.items() if not passed]
        details = []
        for name in METRICS:
            if not checks[f"{name} non-inferior"]:
                details.append(f"{name} gain could be as low as {lower[name]:+.4f} "
                               f"(one-sided {1 - policy.alpha:.0%} bound), below -{min_effect[name]:g}")
        if accuracy < floor - EPSILON:
            details.append(f"accuracy {accuracy:.4f} is below the best {best:.4f} minus {min_effect['accuracy']:g}")
        reason = f"not promoted ({', '.join(failed)} failed): " + "; ".join(details)
    return GateDecision(promote, reason, champion_numbers, challenger_numbers, lower, discordance(champion, challenger),
                        floor, max(best, accuracy) if promote else best, checks,
                        resolution(intervals, len(champion), policy))
