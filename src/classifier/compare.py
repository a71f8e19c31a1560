"""Judging: is a model better or worse than another on the same test images, and by as much as matters?

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
  verdict is a `Verdict` (below): NEW (no base), NOT_COMPARABLE (different test sets), or what
  the intervals say. `cannot_judge(head, reason)` is the Judgement for a base whose results or
  policy are unreadable.
- `headline(judgement)`: the verdict in one line with each metric's change, the words every
  judgement prints (the report, its exit message, make run's closing line, the retrain's state,
  event and artifact); `changes_by_verdict` gives its parts, `MEANING` one sentence per verdict.
- `exit_status(verdict)`: 0; 1 when the head may be worse by as much as matters
  (`Verdict.fails`); 2 for NOT_COMPARABLE / COULD_NOT_JUDGE.
- `gate(champion, challenger, policy, best_accuracy) -> GateDecision`: the retrain gate on two
  tables of the same test split; `.promote`, `.reason`, `.judgement` (the same words as the
  report), `.best_accuracy` (the record to keep after this decision) and the numbers.
- Both carry `.resolution`: per metric, the smallest margin this test split can resolve (below).

The statistics

- Accuracy: an exact McNemar test. Only the discordant pairs (right at base and wrong at head,
  or the reverse) carry information; under "no change" each is a fair coin, so the p-value is
  `scipy.stats.binomtest(head_only, base_only + head_only, 0.5)`, and the interval of the change
  is the one that test inverts (`accuracy_interval`): it excludes 0 exactly when p < alpha.
- Macro F1 and mean loss: a paired bootstrap (`scipy.stats.bootstrap(paired=True)`, percentile
  intervals, a fixed seed so the same inputs give the same report): test examples are resampled
  with replacement, the same ones for both sides, and the delta head - base recomputed.

The words: what a metric's (1 - alpha) interval of the change says, against min_effect (m)

- *no detectable change*: the interval holds 0 and lies within +-m;
- *better / worse, but by less than matters*: it excludes 0 and lies within +-m: a real change,
  smaller than the smallest change that matters;
- *better / worse, perhaps by enough to matter*: it excludes 0 and crosses m;
- *better / worse by more than matters*: all of it lies beyond m (IMPROVED / REGRESSED);
- *cannot tell: perhaps better / worse / better or worse by enough to matter*: it holds 0 and
  crosses m on that side: the test set is too small to tell.
The overall verdict is the most severe of the metrics' (SEVERITY): a mixed result is judged by
its worst news, so a detected worsening is never summed up without the word "worse".

The gate, and why a chain of promotions cannot drift

A challenger is promoted only when (1) it is non-inferior to the champion on every metric: the
one-sided (1 - alpha) lower bound of its gain (head - base; base - head for loss) is above
-min_effect; (2) it is not measurably worse (the verdict says "worse": the interval excludes 0 on
the worse side) on any metric the policy's `keep_out_measurably_worse` names (by default accuracy
and macro F1); and (3) its accuracy is at least `best_accuracy - min_effect.accuracy`, where
`best_accuracy` is the best accuracy ever promoted on this test split (None: no record yet, and
the champion's accuracy stands in).
(1) alone lets each step lose a little less than min_effect, and five steps lose five times that;
(2) keeps out each such step once the test set can see it; (3) bounds the whole chain: no
promoted model is ever more than min_effect below the best one.

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
from enum import StrEnum

import numpy as np
import pandas as pd
from scipy import stats

from classifier.params import CompareParams

COLUMNS = ("id", "actual", "predicted", "loss")
METRICS = ("accuracy", "macro_f1", "loss")
# Which way is better for each test metric.
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}


class Verdict(StrEnum):
    """What a metric's interval says, in the words every judgement prints (module docstring, "The words").

    A str: it compares equal to, and prints as, its words."""

    NO_CHANGE = "no detectable change"
    BETTER_SMALL = "better, but by less than matters"
    WORSE_SMALL = "worse, but by less than matters"
    BETTER_MAY_MATTER = "better, perhaps by enough to matter"
    WORSE_MAY_MATTER = "worse, perhaps by enough to matter"
    IMPROVED = "better by more than matters"
    REGRESSED = "worse by more than matters"
    CANNOT_TELL_BETTER = "cannot tell: perhaps better by enough to matter"
    CANNOT_TELL_WORSE = "cannot tell: perhaps worse by enough to matter"
    CANNOT_TELL_EITHER = "cannot tell: perhaps better or worse by enough to matter"
    NEW = "new"
    NOT_COMPARABLE = "not comparable"
    COULD_NOT_JUDGE = "could not judge"

    @property
    def detected(self) -> bool:
        """A real change: its interval excludes 0 (for accuracy, the interval McNemar's test inverts)."""
        return self in (Verdict.BETTER_SMALL, Verdict.WORSE_SMALL, Verdict.BETTER_MAY_MATTER,
                        Verdict.WORSE_MAY_MATTER, Verdict.IMPROVED, Verdict.REGRESSED)

    @property
    def worse(self) -> bool:
        """A detected worsening: the words say "worse" and mean it."""
        return self in (Verdict.WORSE_SMALL, Verdict.WORSE_MAY_MATTER, Verdict.REGRESSED)

    @property
    def fails(self) -> bool:
        """`--fail-on-regression` exits 1: the change may be worse by as much as matters."""
        return self in (Verdict.REGRESSED, Verdict.WORSE_MAY_MATTER, Verdict.CANNOT_TELL_WORSE,
                        Verdict.CANNOT_TELL_EITHER)


# The overall verdict is the first of its metrics' in this order: what a reviewer must see first.
SEVERITY = (Verdict.REGRESSED, Verdict.WORSE_MAY_MATTER, Verdict.CANNOT_TELL_EITHER, Verdict.CANNOT_TELL_WORSE,
            Verdict.WORSE_SMALL, Verdict.IMPROVED, Verdict.BETTER_MAY_MATTER, Verdict.BETTER_SMALL,
            Verdict.CANNOT_TELL_BETTER, Verdict.NO_CHANGE)
# One sentence per verdict, for whoever reads the words first (the report, the retrain's artifact).
MEANING = {
    Verdict.NO_CHANGE: "Nothing detected, and the interval rules out any change as large as the smallest change "
                       "that matters.",
    Verdict.BETTER_SMALL: "A real improvement (the interval excludes 0), smaller than the smallest change that "
                          "matters.",
    Verdict.WORSE_SMALL: "A real worsening (the interval excludes 0), smaller than the smallest change that matters: "
                         "measurably worse, though not by as much as matters.",
    Verdict.BETTER_MAY_MATTER: "A real improvement (the interval excludes 0) that may reach the smallest change that "
                               "matters: the interval crosses it.",
    Verdict.WORSE_MAY_MATTER: "A real worsening (the interval excludes 0) that may reach the smallest change that "
                              "matters: the interval crosses it.",
    Verdict.IMPROVED: "Better, and the whole interval lies beyond the smallest change that matters.",
    Verdict.REGRESSED: "Worse, and the whole interval lies beyond the smallest change that matters.",
    Verdict.CANNOT_TELL_BETTER: "Nothing detected, but the interval reaches an improvement as large as matters: "
                                "this test set is too small to tell.",
    Verdict.CANNOT_TELL_WORSE: "Nothing detected, but the interval reaches a worsening as large as matters: "
                               "this test set is too small to tell.",
    Verdict.CANNOT_TELL_EITHER: "Nothing detected, but the interval reaches a change as large as matters either way: "
                                "this test set is too small to tell.",
    Verdict.NEW: "The base has no per-example results, so every number is new and nothing can be judged worse.",
    Verdict.NOT_COMPARABLE: "Base and head were scored on different test images, so their numbers cannot be "
                            "compared.",
    Verdict.COULD_NOT_JUDGE: "Nothing could be judged; the reason says why.",
}
(NO_CHANGE, IMPROVED, REGRESSED, NEW, NOT_COMPARABLE, COULD_NOT_JUDGE) = (
    Verdict.NO_CHANGE, Verdict.IMPROVED, Verdict.REGRESSED, Verdict.NEW, Verdict.NOT_COMPARABLE,
    Verdict.COULD_NOT_JUDGE)
LABELS = {"accuracy": "accuracy", "macro_f1": "macro F1", "loss": "loss"}

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
    verdict: Verdict


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
    verdict: Verdict
    metrics: tuple[MetricVerdict, ...]
    reason: str
    paired: Discordance | None = None
    confidence: float | None = None  # of the intervals, 1 - alpha
    resolution: tuple[Resolution, ...] = ()


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str  # "promoted: " or "not promoted: ", the judgement's headline, then the checks
    judgement: Judgement  # the same words and (1 - alpha) intervals as the pull-request report
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


def accuracy_interval(paired: Discordance, confidence: float) -> Interval:
    """The exact interval of the accuracy change that McNemar's test inverts, so the two never disagree.

    Given the d discordant pairs, head_only ~ Binomial(d, p) and the change is d (2p - 1) / n; the
    Clopper-Pearson interval of p excludes 1/2 exactly when McNemar's two-sided p-value is below
    1 - confidence. (A percentile bootstrap does not: with 5 of 1,051 pairs all one way it excludes
    0 while McNemar's p is 0.06.) The standard error is the null's, sqrt(d) / n.
    """
    discordant = paired.base_only + paired.head_only
    if discordant == 0:
        return Interval(0.0, 0.0, 0.0)
    bounds = stats.binomtest(paired.head_only, discordant, 0.5).proportion_ci(confidence, method="exact")
    return Interval(discordant * (2 * bounds.low - 1) / paired.n, discordant * (2 * bounds.high - 1) / paired.n,
                    float(np.sqrt(discordant)) / paired.n)


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


def metric_verdict(name: str, low: float, high: float, min_effect: float) -> Verdict:
    """The words for one metric's interval [low, high] of head - base: a change is detected when
    the interval excludes 0, and sized against min_effect, the smallest change that matters (a
    change of exactly min_effect matters)."""
    gain_low, gain_high = (low, high) if HIGHER_IS_BETTER[name] else (-high, -low)
    matters = min_effect - EPSILON
    detected = 1 if gain_low > 0 else -1 if gain_high < 0 else 0
    if detected == 0:
        may_gain, may_lose = gain_high >= matters, gain_low <= -matters
        if may_gain and may_lose:
            return Verdict.CANNOT_TELL_EITHER
        if may_lose:
            return Verdict.CANNOT_TELL_WORSE
        return Verdict.CANNOT_TELL_BETTER if may_gain else Verdict.NO_CHANGE
    # The interval's ends as distances in the direction found: the nearer end and the farther one.
    nearest, farthest = (gain_low, gain_high) if detected > 0 else (-gain_high, -gain_low)
    if nearest >= matters:
        return Verdict.IMPROVED if detected > 0 else Verdict.REGRESSED
    if farthest >= matters:
        return Verdict.BETTER_MAY_MATTER if detected > 0 else Verdict.WORSE_MAY_MATTER
    return Verdict.BETTER_SMALL if detected > 0 else Verdict.WORSE_SMALL


def overall(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict a reviewer must see first: a mixed result is judged by its worst news."""
    return next(verdict for verdict in SEVERITY if verdict in verdicts)


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


# ---------------------------------------------------------------- verdicts


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
    return _judge_pair(base.predictions, head.predictions, policy)


def _judge_pair(base: pd.DataFrame, head: pd.DataFrame, policy: CompareParams) -> Judgement:
    """Two tables of the same test examples, judged metric by metric on (1 - alpha) paired intervals."""
    confidence = 1 - policy.alpha
    base_numbers, head_numbers = point_metrics(base), point_metrics(head)
    paired = discordance(base, head)
    intervals = paired_intervals(base, head, confidence, policy.resamples)
    exact = accuracy_interval(paired, confidence)
    min_effect = policy.min_effect.model_dump()
    metrics = []
    for name in METRICS:
        delta = head_numbers[name] - base_numbers[name]
        low, high = (exact.low, exact.high) if name == "accuracy" else (intervals[name].low, intervals[name].high)
        metrics.append(MetricVerdict(name, base_numbers[name], head_numbers[name], delta, low, high, min_effect[name],
                                     metric_verdict(name, low, high, min_effect[name])))
    verdict = overall([metric.verdict for metric in metrics])
    reason = (f"{paired.n:,} paired test examples: {paired.base_only} right only at base, "
              f"{paired.head_only} right only at head (McNemar p = {paired.p_value:.3g})")
    return Judgement(verdict, tuple(metrics), reason, paired, confidence, resolution(intervals, paired.n, policy))


def exit_status(verdict: Verdict) -> int:
    """What --fail-on-regression exits with: 1 when the change may be worse by as much as matters
    (Verdict.fails), 2 when nothing could be judged, else 0."""
    if verdict in (NOT_COMPARABLE, COULD_NOT_JUDGE):
        return 2
    return 1 if verdict.fails else 0


# ---------------------------------------------------------------- the retrain gate


def gate(champion: pd.DataFrame, challenger: pd.DataFrame, policy: CompareParams,
         best_accuracy: float | None) -> GateDecision:
    """Promote the challenger only if non-inferior to the champion, not measurably worse on the
    policy's keep_out_measurably_worse metrics, and not below the record minus min_effect."""
    if problem := pairing_problem(champion, challenger):
        raise PredictionsError(f"champion and challenger cannot be compared: {problem}")
    judgement = _judge_pair(champion, challenger, policy)
    champion_numbers = {metric.name: metric.base for metric in judgement.metrics}
    challenger_numbers = {metric.name: metric.head for metric in judgement.metrics}
    # The ends of a two-sided (1 - 2 alpha) interval are one-sided (1 - alpha) bounds.
    intervals = paired_intervals(champion, challenger, 1 - 2 * policy.alpha, policy.resamples)
    intervals["accuracy"] = accuracy_interval(judgement.paired, 1 - 2 * policy.alpha)
    min_effect = policy.min_effect.model_dump()
    lower = {name: (bounds.low if HIGHER_IS_BETTER[name] else -bounds.high) for name, bounds in intervals.items()}
    checks = {f"{name} non-inferior": lower[name] > -min_effect[name] for name in METRICS}
    checks |= {f"{metric.name} not measurably worse": not metric.verdict.worse for metric in judgement.metrics
               if metric.name in policy.keep_out_measurably_worse}
    # Without a record yet the champion's accuracy is the best known; a promotion can only raise it.
    best = champion_numbers["accuracy"] if best_accuracy is None else best_accuracy
    floor = best - min_effect["accuracy"]
    accuracy = challenger_numbers["accuracy"]
    checks["accuracy not below the best minus min_effect"] = accuracy >= floor - EPSILON
    promote = all(checks.values())

    if promote:
        reason = (f"promoted: {headline(judgement)}. Non-inferior to the champion on every metric, and accuracy "
                  f"{accuracy:.4f} is at least the best {best:.4f} minus {min_effect['accuracy']:g}")
    else:
        details = []
        worse = [f"{LABELS[metric.name]} ({judgement.confidence:.0%} interval {metric.low:+.4f} to {metric.high:+.4f})"
                 for metric in judgement.metrics if not checks.get(f"{metric.name} not measurably worse", True)]
        if worse:
            details.append(f"measurably worse on {', '.join(worse)}, which the base's "
                           "compare.keep_out_measurably_worse keeps out")
        for name in METRICS:
            if not checks[f"{name} non-inferior"]:
                details.append(f"{LABELS[name]} gain could be as low as {lower[name]:+.4f} "
                               f"(one-sided {1 - policy.alpha:.0%} bound), below -{min_effect[name]:g}")
        if accuracy < floor - EPSILON:
            details.append(f"accuracy {accuracy:.4f} is below the best {best:.4f} minus {min_effect['accuracy']:g}")
        checks_failed = "; ".join(details)
        reason = f"not promoted: {headline(judgement)}. {checks_failed[0].upper()}{checks_failed[1:]}"
    return GateDecision(promote, reason, judgement, champion_numbers, challenger_numbers, lower,
                        judgement.paired, floor, max(best, accuracy) if promote else best, checks,
                        judgement.resolution)
