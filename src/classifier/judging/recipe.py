"""A recipe's judgement: does a params change help, over K training seeds, apart from training noise?

The model verdict (classifier.judging.judgement) judges two trained models on the same test images: what a
merge installs. One draw per side cannot say whether the *recipe* (params) is better: on the default
data two trainings of the same params differ by as much as the changes users test. Here both recipes
are trained with the same K training seeds (`train.seed`; the split's `seed` fixed), each seed's
test scores computed, and per metric the change head - base is paired by seed:

- the mean paired change over the K seeds, with Student's t interval (`classifier.judging.intervals.mean_interval`,
  K - 1 degrees of freedom), at the base policy's 1 - alpha;
- the same words as the model verdict (`classifier.judging.verdicts.metric_verdict`) against the base's
  `min_effect`, and the overall verdict its most severe (`overall`).

Fewer than MIN_SEEDS seeds are refused (`seeds_problem` says why). Pure: pandas, numpy and scipy;
no torch, git or DVC. Its coverage over per-seed score populations is measured by
benchmarks/verdict_coverage.py (`--part recipe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from classifier.judging.intervals import mean_interval
from classifier.params import CompareParams
from classifier.judging.tables import PredictionsError, class_set, pairing_problem, point_metrics
from classifier.judging.verdicts import METRICS, Verdict, metric_verdict, overall

# With 2 seeds the t interval has 1 degree of freedom, t(0.975, 1) = 12.7: about 6 times as wide as
# with many seeds, so nearly every change reads "cannot tell"; with 1 there is no spread at all.
MIN_SEEDS = 3
SCORE_COLUMNS = ("seed", *METRICS)


class RecipeError(ValueError):
    """Per-seed scores that cannot be judged; the message says which and why."""


@dataclass(frozen=True)
class RecipeMetric:
    """One metric over K seeds: each side's mean, the mean paired change and its interval, the words."""

    name: str
    base: float  # mean over the seeds
    head: float
    delta: float  # mean of head - base, seed by seed
    low: float  # the (1 - alpha) paired t interval of delta
    high: float
    spread: float  # the standard deviation of the per-seed changes
    min_effect: float
    verdict: Verdict


@dataclass(frozen=True)
class RecipeJudgement:
    """The recipe verdict; `.verdict` and `.metrics` read like a `Judgement`'s, so
    `classifier.judging.judgement.headline` prints it in the same words."""

    verdict: Verdict
    metrics: tuple[RecipeMetric, ...]
    seeds: tuple[int, ...]
    confidence: float
    scores: pd.DataFrame  # per seed: seed, base_<metric>, head_<metric>, change_<metric>
    reason: str


def seeds_problem(count: int) -> str | None:
    """Why `count` seeds per side cannot give a recipe verdict, or None."""
    if count >= MIN_SEEDS:
        return None
    t = stats.t.ppf(0.975, count - 1) if count >= 2 else float("inf")
    spread = ("one seed per side gives no spread to judge against" if count < 2 else
              f"with {count} seeds the paired t interval has {count - 1} degree of freedom, so it reaches "
              f"{t:.1f} standard errors each way and almost every change reads \"cannot tell\"")
    return f"a recipe verdict needs at least {MIN_SEEDS} seeds per side (got {count}): {spread}"


def seed_scores(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Each seed's test scores (accuracy, macro F1 over one class set, mean loss) from its per-example
    table; every table must be of the same test examples."""
    if not tables:
        raise RecipeError("no per-seed results")
    first = next(iter(tables.values()))
    for seed, table in tables.items():
        if problem := pairing_problem(first, table):
            raise PredictionsError(f"seed {seed}'s per-example results do not pair with the others': {problem}")
    classes = class_set(*tables.values())
    rows = [{"seed": int(seed), **point_metrics(table, classes)} for seed, table in tables.items()]
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS)).sort_values("seed", kind="stable").reset_index(drop=True)


def _checked(scores: pd.DataFrame, side: str) -> pd.DataFrame:
    missing = [column for column in SCORE_COLUMNS if column not in scores.columns]
    if missing:
        raise RecipeError(f"the {side}'s per-seed scores: missing column(s) {', '.join(missing)}")
    if scores["seed"].duplicated().any():
        raise RecipeError(f"the {side}'s per-seed scores: seed {scores['seed'][scores['seed'].duplicated()].iloc[0]} "
                          "appears twice")
    values = scores[list(METRICS)].to_numpy(float)
    if not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        raise RecipeError(f"the {side}'s per-seed scores: seed {scores['seed'].iloc[row]} has "
                          f"{METRICS[column]} {float(values[row, column])!r}, not a number")
    return scores.set_index("seed")


def judge_recipe(base: pd.DataFrame, head: pd.DataFrame, policy: CompareParams) -> RecipeJudgement:
    """The base recipe's per-seed scores against the head's (columns seed, accuracy, macro_f1, loss;
    one row per training seed, the same seeds on both sides), under the BASE's policy."""
    base_by_seed, head_by_seed = _checked(base, "base"), _checked(head, "head")
    if set(base_by_seed.index) != set(head_by_seed.index):
        only = sorted(set(base_by_seed.index) ^ set(head_by_seed.index))
        raise RecipeError(f"base and head were trained with different seeds (only on one side: "
                          f"{', '.join(map(str, only))}): a recipe verdict pairs them seed by seed")
    if problem := seeds_problem(len(base_by_seed)):
        raise RecipeError(problem)
    seeds = tuple(sorted(int(seed) for seed in base_by_seed.index))
    confidence = 1 - policy.alpha
    min_effect = policy.min_effect.model_dump()
    table = pd.DataFrame({"seed": seeds})
    metrics = []
    for name in METRICS:
        base_values = base_by_seed.loc[list(seeds), name].to_numpy(float)
        head_values = head_by_seed.loc[list(seeds), name].to_numpy(float)
        changes = head_values - base_values
        low, high = (float(np.squeeze(end)) for end in mean_interval(changes, confidence))
        metrics.append(RecipeMetric(name, float(base_values.mean()), float(head_values.mean()), float(changes.mean()),
                                    low, high, float(changes.std(ddof=1)), min_effect[name],
                                    metric_verdict(name, low, high, min_effect[name])))
        table[f"base_{name}"], table[f"head_{name}"], table[f"change_{name}"] = base_values, head_values, changes
    reason = (f"{len(seeds)} training seeds per side ({', '.join(map(str, seeds))}), paired by seed: each metric's "
              f"mean change with a paired t interval ({len(seeds) - 1} degrees of freedom)")
    return RecipeJudgement(overall([metric.verdict for metric in metrics]), tuple(metrics), seeds, confidence,
                           table, reason)


def seeds_for(count: int, first: int = 1) -> list[int]:
    """The training seeds of a K-seed comparison: 1..K, the same for every pull request, so the
    base's trainings are the ones an earlier comparison already made."""
    if count < 1:
        raise RecipeError(f"--seeds {count}: must be a positive number of seeds")
    return list(range(first, first + count))

