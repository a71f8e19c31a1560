"""Judging: is a model better or worse than another on the same test images, and by as much as matters?

The one name the report (pipeline.report), the retrain gate (pipeline.retrain), `make run`'s
closing line (pipeline.committed) and the tests import; each concept lives in its own pure
module (pandas, numpy, scipy.stats; no torch, git or DVC), gathered here:

- classifier.judging.tables: `read_predictions(text, source) -> DataFrame`, a per-example CSV (columns
  `id`, `actual`, `predicted`, `loss`; one row per test example, in the test split's order) checked
  and typed, or `PredictionsError` (a ValueError) naming `source`; `point_metrics(table)`;
  `pairing_problem(base, head)`.
- classifier.judging.intervals: the paired interval of each metric's change. Accuracy: Tango's score
  interval, which at 0 is McNemar's score test, so the p-value and the interval never disagree;
  mean loss: Student's t; macro F1: Tango's interval carried over by the jackknife, over one class
  set (every class in the test split or either side's predictions) for the change and its interval.
  benchmarks/verdict_coverage.py measures how often each covers the true change.
- classifier.judging.verdicts: the words. `Verdict` (what an interval says against min_effect),
  `headline(judgement)` (the verdict in one line with each metric's change: the words every
  judgement prints), `changes_by_verdict`, `MEANING` (one sentence per verdict) and
  `exit_status(verdict)`: 0; 1 when the head may be worse by as much as matters (`Verdict.fails`);
  2 for NOT_COMPARABLE / COULD_NOT_JUDGE.
- classifier.judging.judgement: `judge(base, head, policy) -> Judgement`. `base` and `head` are `Results`
  (the test split's fingerprint and the table); `base` is None when the base has no results;
  `policy` is the BASE revision's `compare` section (`classifier.params.CompareParams`; None when it
  has none, which gives COULD_NOT_JUDGE for comparable results), so a pull request cannot loosen
  the rules it is judged by. The verdict is NEW (no base), NOT_COMPARABLE (different test sets),
  or what the intervals say; `.resolution` says per metric the smallest margin the test split
  resolves. `cannot_judge(head, reason)` is the Judgement for a base whose results or policy are
  unreadable. A NaN, infinite or negative loss is a PredictionsError, not a number.
- classifier.judging.gate_rule: `gate(champion, challenger, policy, best_accuracy) -> GateDecision`, the
  retrain gate on two tables of the same test split: `.promote`, `.reason`, `.judgement` (the same
  words as the report), `.best_accuracy` (the record to keep after this decision) and the numbers.
  Its non-inferiority is the report's `--fail-on-regression` pass, so a promoted challenger's pull
  request never fails it.
- classifier.judging.recipe: `judge_recipe(base_scores, head_scores, policy) -> RecipeJudgement`, the recipe
  verdict: K training seeds per side, paired by seed, each metric's mean change with a paired t
  interval, in the same words (`metric_verdict`, `overall`, and `headline` prints it); fewer than
  MIN_SEEDS seeds refused (`seeds_problem`). `seed_scores(tables)` scores each seed's per-example table.
"""

from __future__ import annotations

from classifier.judging.gate_rule import GateDecision, gate, gate_checks
from classifier.judging.intervals import accuracy_interval, macro_f1_interval, mcnemar_p, mean_interval
from classifier.judging.judgement import (
    POWER, Discordance, Interval, Judgement, MetricVerdict, Resolution, Results, cannot_judge, changes_by_verdict,
    discordance, headline, judge, judge_pair, paired_intervals, resolution,
)
from classifier.judging.recipe import (
    MIN_SEEDS, RecipeError, RecipeJudgement, RecipeMetric, judge_recipe, seed_scores, seeds_for, seeds_problem,
)
from classifier.judging.tables import COLUMNS, PredictionsError, class_set, pairing_problem, point_metrics, read_predictions
from classifier.judging.verdicts import (
    COULD_NOT_JUDGE, EPSILON, HIGHER_IS_BETTER, IMPROVED, LABELS, MEANING, METRICS, NEW, NO_CHANGE, NOT_COMPARABLE,
    REGRESSED, SEVERITY, Verdict, exit_status, metric_verdict, overall,
)

__all__ = [
    "COLUMNS", "COULD_NOT_JUDGE", "EPSILON", "HIGHER_IS_BETTER", "IMPROVED", "LABELS", "MEANING", "METRICS", "NEW",
    "NOT_COMPARABLE", "NO_CHANGE", "POWER", "REGRESSED", "SEVERITY", "Discordance", "GateDecision", "Interval",
    "Judgement", "MetricVerdict", "PredictionsError", "Resolution", "Results", "Verdict", "accuracy_interval",
    "cannot_judge", "changes_by_verdict", "class_set", "discordance", "exit_status", "gate", "gate_checks", "headline",
    "judge", "judge_pair", "judge_recipe", "MIN_SEEDS", "RecipeError", "RecipeJudgement", "RecipeMetric",
    "seed_scores", "seeds_for", "seeds_problem", "macro_f1_interval", "mcnemar_p", "mean_interval", "metric_verdict", "overall",
    "paired_intervals", "pairing_problem", "point_metrics", "read_predictions", "resolution",
]
