"""The words of a judgement: what a metric's interval of the change says, in the words every
judgement prints (the report, its comment and exit status, `make run`'s closing line, the retrain's
state, event and artifact). One place, so the same numbers always read the same.

What a metric's (1 - alpha) interval of the change head - base says, against min_effect (m):

- *no detectable change*: the interval holds 0 and lies within +-m;
- *better / worse, but by less than matters*: it excludes 0 and lies within +-m: a real change,
  smaller than the smallest change that matters;
- *better / worse, perhaps by enough to matter*: it excludes 0 and crosses m;
- *better / worse by more than matters*: all of it lies beyond m (IMPROVED / REGRESSED);
- *cannot tell: perhaps better / worse / better or worse by enough to matter*: it holds 0 and
  crosses m on that side: the test set is too small to tell.
The overall verdict is the most severe of the metrics' (SEVERITY): a mixed result is judged by
its worst news, so a detected worsening is never summed up without the word "worse".
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
METRICS = ("accuracy", "macro_f1", "loss")
# Which way is better for each test metric.
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}
# Deltas are differences of rounded numbers; this absorbs float noise at the min_effect boundary.
EPSILON = 1e-12


class Verdict(StrEnum):
    """What a metric's interval says, in the words every judgement prints (the module docstring).

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
        """A real change: its interval excludes 0 (for accuracy, exactly when McNemar's p is below alpha)."""
        return self in (Verdict.BETTER_SMALL, Verdict.WORSE_SMALL, Verdict.BETTER_MAY_MATTER,
                        Verdict.WORSE_MAY_MATTER, Verdict.IMPROVED, Verdict.REGRESSED)

    @property
    def worse(self) -> bool:
        """A detected worsening: the words say "worse" and mean it."""
        return self in (Verdict.WORSE_SMALL, Verdict.WORSE_MAY_MATTER, Verdict.REGRESSED)

    @property
    def fails(self) -> bool:
        """`--fail-on-regression` exits 1: the change may be worse by as much as matters (the interval
        reaches -min_effect on the worse side). The retrain gate's non-inferiority is the same test."""
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


def exit_status(verdict: Verdict) -> int:
    """What --fail-on-regression exits with: 1 when the change may be worse by as much as matters
    (Verdict.fails), 2 when nothing could be judged, else 0."""
    if verdict in (NOT_COMPARABLE, COULD_NOT_JUDGE):
        return 2
    return 1 if verdict.fails else 0
