"""Judging on per-example tables: the paired tests, the verdicts and the retrain gate (no torch, no DVC)."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from classifier import compare
from classifier.compare import (
    COULD_NOT_JUDGE, IMPROVED, NEW, NO_CHANGE, NOT_COMPARABLE, REGRESSED, PredictionsError, Results, cannot_judge,
    exit_status, gate, judge, point_metrics, read_predictions,
)
from classifier.params import CompareParams, load_params
from tests.conftest import PROJECT_ROOT

CLASSES = [str(digit) for digit in range(10)]


def policy(alpha: float = 0.05, accuracy: float = 0.005, macro_f1: float = 0.005, loss: float = 0.02,
           resamples: int = 2000) -> CompareParams:
    return CompareParams.model_validate(
        {"alpha": alpha, "resamples": resamples, "min_effect": {"accuracy": accuracy, "macro_f1": macro_f1, "loss": loss}})


def table(actual: np.ndarray, predicted: np.ndarray, loss: np.ndarray | None = None) -> pd.DataFrame:
    loss = np.where(actual == predicted, 0.1, 2.0) if loss is None else loss
    return pd.DataFrame({"id": [f"{index:08x}" for index in range(len(actual))],
                         "actual": [CLASSES[i] for i in actual], "predicted": [CLASSES[i] for i in predicted],
                         "loss": loss.astype(float)})


def with_flips(base: pd.DataFrame, to_wrong: int, to_right: int, seed: int = 0) -> pd.DataFrame:
    """`to_wrong` of base's right answers made wrong, `to_right` of its wrong answers made right."""
    rng = np.random.default_rng(seed)
    head = base.copy()
    right = np.flatnonzero(base["actual"] == base["predicted"])
    wrong = np.flatnonzero(base["actual"] != base["predicted"])
    for index in rng.choice(right, to_wrong, replace=False):
        head.loc[index, "predicted"] = CLASSES[(int(head.loc[index, "actual"]) + 1) % 10]
        head.loc[index, "loss"] = 2.0
    for index in rng.choice(wrong, to_right, replace=False):
        head.loc[index, "predicted"] = head.loc[index, "actual"]
        head.loc[index, "loss"] = 0.1
    return head


def base_table(n: int = 1000, accuracy: float = 0.94, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    actual = np.arange(n) % 10
    predicted = actual.copy()
    wrong = rng.choice(n, round(n * (1 - accuracy)), replace=False)
    predicted[wrong] = (actual[wrong] + rng.integers(1, 10, len(wrong))) % 10
    return table(actual, predicted)


def results(predictions: pd.DataFrame, fingerprint: str = "sha256:aa") -> Results:
    return Results(fingerprint, predictions)


# ---------------------------------------------------------------- reading


def test_read_predictions_round_trips_and_keeps_class_names_as_text():
    text = "id,actual,predicted,loss\na1,NA,NA,0.25\nb2,None,NA,1.5\n"
    read = read_predictions(text)
    assert list(read.columns) == ["id", "actual", "predicted", "loss"]
    assert read["actual"].tolist() == ["NA", "None"] and read["loss"].tolist() == [0.25, 1.5]


@pytest.mark.parametrize("text, message", [
    ("id,actual,loss\na,1,0.1\n", "missing column(s) predicted"),
    ("id,actual,predicted,loss\n", "no examples"),
    ("id,actual,predicted,loss\na,1,1,x\n", "row 1: loss 'x'"),
    ("id,actual,predicted,loss\na,1,1,-1\n", "is not a number >= 0"),
    ("id,actual,predicted,loss\na,1,1,0.1\na,2,2,0.1\n", "id 'a' appears twice"),
    ("id,actual,predicted,loss\na,,1,0.1\n", "empty"),
])
def test_read_predictions_refuses_a_broken_table(text, message):
    with pytest.raises(PredictionsError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        read_predictions(text, "metrics/predictions.csv at main")
    assert str(raised.value).startswith("metrics/predictions.csv at main: ")


def test_point_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    actual, predicted = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    loss = rng.random(500)
    numbers = point_metrics(table(actual, predicted, loss))
    assert numbers["accuracy"] == pytest.approx(np.mean(actual == predicted))
    assert numbers["macro_f1"] == pytest.approx(f1_score(actual, predicted, average="macro", zero_division=0))
    assert numbers["loss"] == pytest.approx(loss.mean())


# ---------------------------------------------------------------- verdicts


def test_identical_results_are_no_detectable_change_with_zero_discordant_pairs():
    base = base_table()
    judged = judge(results(base), results(base.copy()), policy())
    assert judged.verdict == NO_CHANGE and exit_status(judged.verdict) == 0
    assert (judged.paired.base_only, judged.paired.head_only, judged.paired.p_value) == (0, 0, 1.0)
    for metric in judged.metrics:
        assert metric.delta == 0 and metric.low == 0 and metric.high == 0 and metric.verdict == NO_CHANGE


def test_a_large_loss_of_accuracy_is_regressed_with_mcnemar_p_value_and_interval():
    base = base_table()
    head = with_flips(base, to_wrong=60, to_right=10)
    judged = judge(results(base), results(head), policy())
    accuracy = next(metric for metric in judged.metrics if metric.name == "accuracy")
    assert judged.verdict == REGRESSED and exit_status(judged.verdict) == 1
    assert accuracy.verdict == REGRESSED and accuracy.delta == pytest.approx(-0.05)
    assert accuracy.low < accuracy.delta < accuracy.high < 0
    assert (judged.paired.base_only, judged.paired.head_only) == (60, 10)
    assert judged.paired.p_value == pytest.approx(stats.binomtest(10, 70, 0.5).pvalue)
    assert judged.paired.p_value < 1e-8 and judged.confidence == 0.95


def test_a_gain_is_improved():
    base = base_table()
    judged = judge(results(base), results(with_flips(base, to_wrong=5, to_right=40)), policy())
    assert judged.verdict == IMPROVED
    assert {metric.name: metric.verdict for metric in judged.metrics}["accuracy"] == IMPROVED


def test_a_significant_change_below_min_effect_is_no_detectable_change():
    base = base_table(n=10_000)
    head = with_flips(base, to_wrong=30, to_right=0)  # -0.003: certain, but smaller than 0.005
    judged = judge(results(base), results(head), policy(loss=1.0, macro_f1=1.0, resamples=1000))
    accuracy = next(metric for metric in judged.metrics if metric.name == "accuracy")
    assert accuracy.high < 0 and judged.paired.p_value < 1e-8
    assert accuracy.verdict == NO_CHANGE and judged.verdict == NO_CHANGE
    # The same change with a smaller min_effect is a regression: the policy decides what matters.
    smaller = policy(accuracy=0.002, loss=1.0, macro_f1=1.0, resamples=1000)
    assert judge(results(base), results(head), smaller).verdict == REGRESSED


def test_a_large_change_that_noise_could_explain_is_no_detectable_change():
    base = base_table(n=100)
    head = with_flips(base, to_wrong=2, to_right=0)  # -0.02, four times min_effect, but only 2 examples
    judged = judge(results(base), results(head), policy(loss=1.0, macro_f1=1.0))
    accuracy = next(metric for metric in judged.metrics if metric.name == "accuracy")
    assert accuracy.delta == pytest.approx(-0.02) and judged.paired.p_value == 0.5
    assert accuracy.verdict == NO_CHANGE


def test_the_interval_is_reproducible_and_follows_alpha():
    base = base_table()
    head = with_flips(base, to_wrong=30, to_right=20)
    first, again = (judge(results(base), results(head), policy()) for _ in range(2))
    assert first == again
    wide = judge(results(base), results(head), policy(alpha=0.01))
    low, high = first.metrics[0].low, first.metrics[0].high
    assert wide.metrics[0].low <= low and wide.metrics[0].high >= high and wide.confidence == 0.99


def test_different_fingerprints_are_not_comparable_and_name_both():
    base = base_table()
    judged = judge(results(base, "sha256:aaa"), results(with_flips(base, 60, 0), "sha256:bbb"), policy())
    assert judged.verdict == NOT_COMPARABLE and exit_status(judged.verdict) == 2
    assert "sha256:aaa" in judged.reason and "sha256:bbb" in judged.reason
    assert all(metric.low is None and metric.verdict == NOT_COMPARABLE for metric in judged.metrics)


def test_tables_that_do_not_pair_are_not_comparable_even_with_one_fingerprint():
    base = base_table()
    reordered = base.iloc[::-1].reset_index(drop=True)
    assert judge(results(base), results(reordered), policy()).verdict == NOT_COMPARABLE
    assert "ids differ" in judge(results(base), results(reordered), policy()).reason
    assert judge(results(base), results(base.iloc[:-1]), policy()).verdict == NOT_COMPARABLE


def test_no_base_is_new_and_an_unreadable_base_could_not_be_judged():
    head = base_table()
    assert judge(None, results(head), policy()).verdict == NEW and exit_status(NEW) == 0
    unjudged = cannot_judge(head, "the base's compare section is invalid")
    assert unjudged.verdict == COULD_NOT_JUDGE and exit_status(COULD_NOT_JUDGE) == 2
    assert unjudged.metrics[0].head == pytest.approx(0.94) and unjudged.metrics[0].base is None


def test_a_worse_mean_loss_alone_is_regressed():
    base = base_table()
    head = base.assign(loss=base["loss"] + 0.05)
    judged = judge(results(base), results(head), policy())
    verdicts = {metric.name: metric.verdict for metric in judged.metrics}
    assert verdicts == {"accuracy": NO_CHANGE, "macro_f1": NO_CHANGE, "loss": REGRESSED}
    assert judged.verdict == REGRESSED


# ---------------------------------------------------------------- the retrain gate


def test_a_chain_of_slightly_worse_challengers_is_not_all_promoted():
    # 10,000 examples: each challenger loses 0.003 accuracy (30 examples), a loss the paired test
    # resolves and that is under min_effect (0.005), so each one alone is non-inferior.
    champion = base_table(n=10_000, accuracy=0.95)
    rules = policy(loss=1.0, macro_f1=1.0, resamples=1000)
    best, promoted, accuracies = None, 0, [point_metrics(champion)["accuracy"]]
    for step in range(5):
        challenger = with_flips(champion, to_wrong=30, to_right=0, seed=step)
        decision = gate(champion, challenger, rules, best)
        assert decision.checks["accuracy non-inferior"], decision.reason  # each step alone would pass
        best = decision.best_accuracy
        if decision.promote:
            promoted += 1
            champion = challenger
            accuracies.append(decision.challenger["accuracy"])
    assert promoted < 5
    # The chain never ends more than min_effect below the best model it promoted.
    assert min(accuracies) >= max(accuracies) - 0.005 - 1e-12
    assert best == pytest.approx(max(accuracies))


def test_without_the_record_the_same_chain_drifts():
    # Why the record exists: non-inferiority step by step promotes all five.
    champion = base_table(n=10_000, accuracy=0.95)
    rules = policy(loss=1.0, macro_f1=1.0, resamples=1000)
    start = point_metrics(champion)["accuracy"]
    for step in range(5):
        challenger = with_flips(champion, to_wrong=30, to_right=0, seed=step)
        assert gate(champion, challenger, rules, None).promote
        champion = challenger
    assert point_metrics(champion)["accuracy"] == pytest.approx(start - 0.015)


def test_gate_rejects_a_challenger_that_could_be_much_worse_and_says_why():
    champion = base_table()
    decision = gate(champion, with_flips(champion, to_wrong=8, to_right=0), policy(), best_accuracy=0.94)
    assert not decision.promote
    assert not decision.checks["accuracy non-inferior"] and decision.gain_lower_bounds["accuracy"] < -0.005
    assert "accuracy gain could be as low as" in decision.reason
    assert decision.best_accuracy == 0.94 and decision.paired.base_only == 8


def test_gate_promotes_a_clearly_better_challenger_and_raises_the_record():
    champion = base_table()
    decision = gate(champion, with_flips(champion, to_wrong=2, to_right=30), policy(), best_accuracy=0.94)
    assert decision.promote, decision.reason
    assert decision.best_accuracy == pytest.approx(0.968)


def test_gate_refuses_tables_that_do_not_pair():
    champion = base_table()
    with pytest.raises(PredictionsError, match="cannot be compared"):
        gate(champion, champion.iloc[::-1].reset_index(drop=True), policy(), None)


def test_compare_is_pure():
    tree = ast.parse((PROJECT_ROOT / "src" / "classifier" / "compare.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "subprocess", "dvc", "git", "os", "pathlib"}, imported
    assert compare.BOOTSTRAP_SEED  # a fixed seed, so reports are reproducible


# ---------------------------------------------------------------- resolution and the default policy
# Synthetic pairs shaped like the default data (mnist-5k's 1,051 test images, accuracy about 0.955):
# two equally good models disagree on 20-40 images, and those are the borderline ones, whose loss
# is moderate on both sides; confident mistakes stay wrong, with their loss jittered.

DEFAULT_TEST_IMAGES, DEFAULT_ACCURACY = 1051, 0.955


def default_policy() -> CompareParams:
    return load_params(PROJECT_ROOT / "params.yaml").compare


def realistic_pair(rng: np.random.Generator, discordant: int, worse_by: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A champion and a challenger: `discordant` examples change sides (each way with probability 1/2),
    and `worse_by` x n more go from right to wrong."""
    n = DEFAULT_TEST_IMAGES
    actual = np.arange(n) % 10
    predicted = actual.copy()
    wrong = rng.choice(n, round(n * (1 - DEFAULT_ACCURACY)), replace=False)
    predicted[wrong] = (actual[wrong] + rng.integers(1, 10, len(wrong))) % 10
    right = predicted == actual
    loss = np.where(right, rng.exponential(0.015, n), rng.lognormal(np.log(4), 0.8, n))
    # Mean-preserving jitter: an equally good model's loss on the same example, not a biased one.
    head_loss = loss * np.where(right, rng.lognormal(-0.5, 1.0, n), rng.lognormal(-0.08, 0.4, n))
    to_right = rng.binomial(discordant, 0.5)
    to_wrong = discordant - to_right + round(worse_by * n)
    flipped_wrong = rng.choice(np.flatnonzero(right), to_wrong, replace=False)
    flipped_right = rng.choice(np.flatnonzero(~right), to_right, replace=False)
    head_predicted = predicted.copy()
    head_predicted[flipped_wrong] = (actual[flipped_wrong] + rng.integers(1, 10, to_wrong)) % 10
    head_predicted[flipped_right] = actual[flipped_right]
    for examples, was, becomes in ((flipped_wrong, 0.4, 1.2), (flipped_right, 1.2, 0.4)):
        loss[examples] = rng.lognormal(np.log(was), 0.5, len(examples))
        head_loss[examples] = rng.lognormal(np.log(becomes), 0.5, len(examples))
    return table(actual, predicted, loss), table(actual, head_predicted, head_loss)


def promotion_rate(discordant: int, worse_by: float, trials: int, rules: CompareParams) -> float:
    rng = np.random.default_rng(discordant)
    return np.mean([gate(*realistic_pair(rng, discordant, worse_by), rules, None).promote for _ in range(trials)])


def test_the_default_policy_promotes_an_equally_good_challenger():
    rules = default_policy()
    assert promotion_rate(discordant=30, worse_by=0.0, trials=60, rules=rules) >= 0.9


def test_the_default_policy_keeps_out_a_challenger_worse_by_twice_min_effect():
    rules = default_policy()
    assert promotion_rate(discordant=40, worse_by=2 * rules.min_effect.accuracy, trials=60, rules=rules) <= 0.1


def test_a_margin_below_the_resolution_is_decided_by_chance():
    # Why the defaults are what they are: at 0.005 an equally good challenger is mostly kept out.
    assert promotion_rate(discordant=30, worse_by=0.0, trials=30, rules=policy()) < 0.6


def test_resolution_follows_the_discordance_and_says_what_the_margin_needs():
    champion, challenger = realistic_pair(np.random.default_rng(3), discordant=30)
    decision = gate(champion, challenger, policy(accuracy=0.005), None)
    accuracy = {item.name: item for item in decision.resolution}["accuracy"]
    # Each discordant pair moves the accuracy delta by 1/n: its spread is sqrt(d) / n.
    expected = (stats.norm.ppf(0.95) * 2) * np.sqrt(30) / DEFAULT_TEST_IMAGES
    assert accuracy.margin == pytest.approx(expected, rel=0.25)
    assert not accuracy.resolved and accuracy.examples == DEFAULT_TEST_IMAGES
    assert accuracy.examples_needed == pytest.approx(DEFAULT_TEST_IMAGES * (accuracy.margin / 0.005) ** 2, rel=1e-3)
    assert f"about {accuracy.examples_needed:,} test examples" in accuracy.describe()
    wide = {item.name: item for item in gate(champion, challenger, policy(accuracy=0.05), None).resolution}["accuracy"]
    assert wide.resolved and "below" not in wide.describe()


def test_a_judgement_states_its_resolution():
    base = base_table()
    judgement = judge(results(base), results(with_flips(base, to_wrong=10, to_right=10)), policy())
    assert [item.name for item in judgement.resolution] == list(compare.METRICS)
    assert all(item.margin > 0 and item.examples == len(base) for item in judgement.resolution)
