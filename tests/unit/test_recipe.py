"""The recipe verdict on constructed per-seed scores: every word, exactly, from the numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from classifier.judging.compare import (
    HIGHER_IS_BETTER, MEANING, RecipeError, Verdict, headline, judge_recipe, metric_verdict, seed_scores, seeds_problem,
)
from classifier.params import CompareParams

POLICY = CompareParams(alpha=0.05, min_effect={"accuracy": 0.025, "macro_f1": 0.025, "loss": 0.1})
# Changes with mean 0 and sample sd 1 over 3 seeds: the interval is mean +- t(0.975, 2) / sqrt(3) * scale.
UNIT = np.array([-1.0, 0.0, 1.0])
HALF = stats.t.ppf(0.975, 2) / np.sqrt(3)  # 2.484


def scores(values: dict[str, np.ndarray], seeds=(1, 2, 3)) -> pd.DataFrame:
    return pd.DataFrame({"seed": list(seeds), **{name: list(column) for name, column in values.items()}})


def pair(name: str, mean: float, scale: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base and head whose per-seed change in `name` is mean + scale * UNIT (others unchanged)."""
    base = {"accuracy": np.array([0.95, 0.94, 0.96]), "macro_f1": np.array([0.95, 0.94, 0.96]),
            "loss": np.array([0.20, 0.25, 0.22])}
    head = {key: value.copy() for key, value in base.items()}
    head[name] = base[name] + mean + scale * UNIT
    return scores(base), scores(head)


# (mean change, sd of the changes) -> the interval mean +- HALF * sd, judged against min_effect 0.025.
CASES = [
    (0.0, 0.002, Verdict.NO_CHANGE),            # [-0.005, 0.005]
    (0.010, 0.002, Verdict.BETTER_SMALL),       # [0.005, 0.015]
    (-0.010, 0.002, Verdict.WORSE_SMALL),
    (0.020, 0.004, Verdict.BETTER_MAY_MATTER),  # [0.010, 0.030]
    (-0.020, 0.004, Verdict.WORSE_MAY_MATTER),
    (0.040, 0.004, Verdict.IMPROVED),           # [0.030, 0.050]
    (-0.040, 0.004, Verdict.REGRESSED),
    (0.010, 0.008, Verdict.CANNOT_TELL_BETTER),  # [-0.010, 0.030]
    (-0.010, 0.008, Verdict.CANNOT_TELL_WORSE),
    (0.0, 0.012, Verdict.CANNOT_TELL_EITHER),   # [-0.030, 0.030]
]


@pytest.mark.parametrize(("mean", "scale", "expected"), CASES)
def test_each_word_from_a_constructed_table(mean, scale, expected):
    base, head = pair("accuracy", mean, scale)
    judgement = judge_recipe(base, head, POLICY)
    accuracy = judgement.metrics[0]
    assert accuracy.name == "accuracy"
    assert accuracy.delta == pytest.approx(mean)
    assert (accuracy.low, accuracy.high) == pytest.approx((mean - HALF * scale, mean + HALF * scale))
    assert accuracy.spread == pytest.approx(scale)
    assert accuracy.verdict == expected == metric_verdict("accuracy", accuracy.low, accuracy.high, 0.025)
    assert judgement.verdict == expected  # the other metrics did not change at all: no detectable change
    assert expected in MEANING
    assert headline(judgement).startswith(f"{expected} (accuracy {mean:+.4f}")


def test_loss_is_better_when_it_falls_and_the_worst_news_leads():
    base, head = pair("loss", 0.3, 0.01)  # loss up by 0.3 in every seed: worse by more than matters (0.1)
    head["accuracy"] = base["accuracy"] + 0.01 + 0.002 * UNIT
    judgement = judge_recipe(base, head, POLICY)
    by_name = {metric.name: metric for metric in judgement.metrics}
    assert not HIGHER_IS_BETTER["loss"]
    assert by_name["loss"].verdict == Verdict.REGRESSED
    assert by_name["accuracy"].verdict == Verdict.BETTER_SMALL
    assert judgement.verdict == Verdict.REGRESSED
    assert headline(judgement) == ("worse by more than matters (loss +0.3000); better, but by less than matters "
                                   "(accuracy +0.0100); no detectable change (macro F1 +0.0000)")


def test_seeds_pair_by_number_not_by_row_order():
    base, head = pair("accuracy", 0.04, 0.004)
    judgement = judge_recipe(base, head.iloc[::-1].reset_index(drop=True), POLICY)
    assert judgement.metrics[0].verdict == Verdict.IMPROVED and judgement.seeds == (1, 2, 3)
    assert list(judgement.scores["change_accuracy"]) == pytest.approx(0.04 + 0.004 * UNIT)


def test_the_interval_is_the_paired_t_interval_for_any_k():
    rng = np.random.default_rng(4)
    for k in (3, 5, 10):
        changes = rng.normal(0.01, 0.01, k)
        base = scores({"accuracy": np.full(k, 0.9), "macro_f1": np.full(k, 0.9), "loss": np.full(k, 0.3)},
                      seeds=range(k))
        head = base.assign(accuracy=0.9 + changes)
        metric = judge_recipe(base, head, POLICY).metrics[0]
        expected = stats.t.interval(0.95, k - 1, loc=changes.mean(), scale=stats.sem(changes))
        assert (metric.low, metric.high) == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 2])
def test_fewer_than_three_seeds_are_refused_with_the_reason(k):
    base = scores({"accuracy": [0.9] * k, "macro_f1": [0.9] * k, "loss": [0.3] * k}, seeds=range(k))
    with pytest.raises(RecipeError, match=f"at least 3 seeds per side \\(got {k}\\)"):
        judge_recipe(base, base, POLICY)
    assert seeds_problem(3) is None
    assert "12.7 standard errors" in seeds_problem(2)


def test_unpaired_seeds_and_bad_numbers_are_refused():
    base, head = pair("accuracy", 0.0, 0.002)
    with pytest.raises(RecipeError, match=r"different seeds \(only on one side: 3, 4\)"):
        judge_recipe(base, head.assign(seed=[1, 2, 4]), POLICY)
    with pytest.raises(RecipeError, match=r"the head's per-seed scores: seed 2 has loss nan"):
        judge_recipe(base, head.assign(loss=[0.2, np.nan, 0.2]), POLICY)
    with pytest.raises(RecipeError, match=r"the base's per-seed scores: seed 1 appears twice"):
        judge_recipe(base.assign(seed=[1, 1, 3]), head, POLICY)
    with pytest.raises(RecipeError, match=r"missing column\(s\) macro_f1"):
        judge_recipe(base.drop(columns="macro_f1"), head, POLICY)


def test_seed_scores_reads_each_seeds_table_on_one_class_set():
    def predictions(predicted):
        return pd.DataFrame({"id": ["a", "b", "c", "d"], "actual": ["0", "0", "1", "1"], "predicted": predicted,
                             "loss": [0.1, 0.2, 0.3, 0.4]})

    scored = seed_scores({2: predictions(["0", "0", "1", "2"]), 1: predictions(["0", "0", "1", "1"])})
    assert list(scored["seed"]) == [1, 2]
    assert list(scored["accuracy"]) == [1.0, 0.75]
    # Class "2" is predicted at seed 2 only; both seeds' macro F1 average over classes 0, 1 and 2.
    assert scored["macro_f1"].iloc[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="seed 3's per-example results do not pair"):
        seed_scores({1: predictions(["0"] * 4), 3: predictions(["0"] * 4).iloc[:3]})
