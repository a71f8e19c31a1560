"""Judging on per-example tables: the paired tests, the verdicts and the retrain gate (no torch, no DVC).

Every case of the words is tested on constructed tables, never on a real retrain (whose numbers
depend on the CPU it ran on)."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from sklearn.metrics import f1_score

from classifier.judging import compare
from classifier.judging.compare import (
    COULD_NOT_JUDGE, IMPROVED, NEW, NO_CHANGE, NOT_COMPARABLE, REGRESSED, PredictionsError, Results, Verdict,
    accuracy_interval, cannot_judge, exit_status, gate, headline, judge, mcnemar_p, metric_verdict, point_metrics,
    read_predictions,
)
from classifier.params import CompareParams, load_params
from tests.conftest import PROJECT_ROOT

CLASSES = [str(digit) for digit in range(10)]


def policy(alpha: float = 0.05, accuracy: float = 0.005, macro_f1: float = 0.005, loss: float = 0.02) -> CompareParams:
    return CompareParams.model_validate(
        {"alpha": alpha, "min_effect": {"accuracy": accuracy, "macro_f1": macro_f1, "loss": loss}})


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
        assert metric.delta == 0 and metric.low <= 0 <= metric.high and metric.verdict == NO_CHANGE
    # No example changed sides, but 1,000 examples cannot rule out a change of a few in a thousand.
    accuracy = judged.metrics[0]
    assert accuracy.low == pytest.approx(-accuracy.high) and 0.003 < accuracy.high < 0.005
    assert headline(judged) == "no detectable change (accuracy +0.0000, macro F1 +0.0000, loss +0.0000)"


def test_zero_disagreements_on_a_small_test_set_is_not_called_certain():
    # 20 identical predictions: the interval follows n, so a change as large as min_effect could hide.
    base = base_table(n=20, accuracy=0.9)
    judged = judge(results(base), results(base.copy()), default_policy())
    verdicts = {metric.name: metric.verdict for metric in judged.metrics}
    assert verdicts["accuracy"] == verdicts["macro_f1"] == Verdict.CANNOT_TELL_EITHER
    assert judged.verdict == Verdict.CANNOT_TELL_EITHER and exit_status(judged.verdict) == 1
    accuracy = judged.metrics[0]
    assert accuracy.high > 0.1 and accuracy.low < -0.1
    resolves = {item.name: item for item in judged.resolution}
    assert resolves["accuracy"].margin > 0.1 and not resolves["accuracy"].resolved
    assert "resolves 0.0000" not in resolves["accuracy"].describe()


def test_a_one_example_test_set_is_judged_and_resolves_nothing():
    base = base_table(n=1, accuracy=1.0)
    judged = judge(results(base), results(base.copy()), default_policy())
    assert judged.verdict == Verdict.CANNOT_TELL_EITHER and exit_status(judged.verdict) == 1
    assert all(not item.resolved for item in judged.resolution)
    assert "too few examples" in {item.name: item for item in judged.resolution}["loss"].describe()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
@pytest.mark.parametrize("side", ["base", "head"])
def test_a_loss_that_is_not_a_number_is_a_clear_error(bad, side):
    base = base_table(n=100)
    broken = base.copy()
    broken.loc[7, "loss"] = bad
    tables = (broken, base) if side == "base" else (base, broken)
    with pytest.raises(PredictionsError, match=rf"the {side}'s per-example results: row 8: loss .* is not a number >= 0"):
        judge(results(tables[0]), results(tables[1]), policy())
    with pytest.raises(PredictionsError, match="row 8"):
        gate(*tables, policy(), None)


# Every case of the words, on an interval of head - base (accuracy: higher is better; loss: lower),
# with min_effect 0.02: within, crossing and beyond it, each way.
@pytest.mark.parametrize("name, low, high, expected", [
    ("accuracy", -0.01, 0.01, Verdict.NO_CHANGE),
    ("accuracy", -0.02 + 1e-9, 0.0199, Verdict.NO_CHANGE),
    ("accuracy", 0.001, 0.015, Verdict.BETTER_SMALL),
    ("accuracy", -0.015, -0.001, Verdict.WORSE_SMALL),
    ("accuracy", 0.005, 0.03, Verdict.BETTER_MAY_MATTER),
    ("accuracy", -0.03, -0.005, Verdict.WORSE_MAY_MATTER),
    ("accuracy", 0.02, 0.05, Verdict.IMPROVED),  # a change of exactly min_effect matters
    ("accuracy", -0.05, -0.021, Verdict.REGRESSED),
    ("accuracy", -0.01, 0.03, Verdict.CANNOT_TELL_BETTER),
    ("accuracy", -0.03, 0.01, Verdict.CANNOT_TELL_WORSE),
    ("accuracy", -0.03, 0.03, Verdict.CANNOT_TELL_EITHER),
    ("loss", 0.001, 0.015, Verdict.WORSE_SMALL),  # more loss is worse
    ("loss", -0.05, -0.021, Verdict.IMPROVED),
    ("loss", -0.01, 0.03, Verdict.CANNOT_TELL_WORSE),
])
def test_each_interval_gets_the_words_that_say_what_it_says(name, low, high, expected):
    verdict = metric_verdict(name, low, high, min_effect=0.02)
    assert verdict == expected
    excludes_zero = low > 0 or high < 0
    assert verdict.detected == excludes_zero
    assert ("worse" in verdict) == (verdict.worse or verdict in (Verdict.CANNOT_TELL_WORSE, Verdict.CANNOT_TELL_EITHER))
    # "No detectable change" only where nothing was detected and nothing that matters could hide.
    assert (verdict == NO_CHANGE) == (not excludes_zero and -0.02 < low and high < 0.02)


def test_exit_status_fails_exactly_where_the_head_may_be_worse_by_as_much_as_matters():
    statuses = {verdict: exit_status(verdict) for verdict in Verdict}
    assert {verdict for verdict, status in statuses.items() if status == 1} == {
        Verdict.REGRESSED, Verdict.WORSE_MAY_MATTER, Verdict.CANNOT_TELL_WORSE, Verdict.CANNOT_TELL_EITHER}
    assert {verdict for verdict, status in statuses.items() if status == 2} == {NOT_COMPARABLE, COULD_NOT_JUDGE}
    # A detected worsening that passes says so: its words hold "worse".
    assert all("worse" in verdict for verdict in Verdict if verdict.worse and statuses[verdict] == 0)


def test_a_large_loss_of_accuracy_is_regressed_with_mcnemar_p_value_and_interval():
    base = base_table()
    head = with_flips(base, to_wrong=60, to_right=10)
    judged = judge(results(base), results(head), policy())
    accuracy = next(metric for metric in judged.metrics if metric.name == "accuracy")
    assert judged.verdict == REGRESSED and exit_status(judged.verdict) == 1
    assert accuracy.verdict == REGRESSED and accuracy.delta == pytest.approx(-0.05)
    assert accuracy.low < accuracy.delta < accuracy.high < -0.005
    assert (judged.paired.base_only, judged.paired.head_only) == (60, 10)
    # McNemar's score test: (c - b) / sqrt(b + c) against the normal, no continuity correction.
    assert judged.paired.p_value == pytest.approx(2 * stats.norm.sf(50 / np.sqrt(70)))
    assert judged.paired.p_value < 1e-8 and judged.confidence == 0.95


def test_the_accuracy_interval_is_tango_s_score_interval():
    # 26 right only at base, none only at head, of 1,051: the scaled Clopper-Pearson interval said
    # [-0.0247, -0.0182], which misses the truth more often than not for such one-sided changes.
    low, high = accuracy_interval(26, 0, 1051, 0.95)
    assert (float(low), float(high)) == pytest.approx((-0.0360, -0.0169), abs=5e-5)
    # Each end is where Tango's statistic, the observed change's distance in fitted standard
    # errors, reaches 1.96: recompute it from the restricted likelihood (Tango 1998) with scipy.
    for base_only, head_only, n in ((60, 10, 1000), (3, 9, 1051), (0, 0, 20), (40, 41, 10_000)):
        ends = accuracy_interval(base_only, head_only, n, 0.95)
        for end in ends:
            end = float(end)
            fitted = optimize.minimize_scalar(
                lambda share: -(base_only * np.log(share) + head_only * np.log(share + end)
                                + (n - base_only - head_only) * np.log(1 - 2 * share - end)),
                bounds=(max(0, -end) + 1e-12, (1 - end) / 2 - 1e-12), method="bounded",
                options={"xatol": 1e-14}).x
            statistic = (head_only - base_only - n * end) / np.sqrt(n * (2 * fitted + end * (1 - end)))
            assert abs(statistic) == pytest.approx(stats.norm.ppf(0.975), abs=2e-3) or abs(end) == 1


def test_accuracy_s_interval_excludes_zero_exactly_when_mcnemar_rejects_for_every_count_pair():
    base_only, head_only = np.meshgrid(np.arange(0, 80), np.arange(0, 80))
    for n in (160, 1051, 10_000):
        for alpha in (0.01, 0.05, 0.2):
            low, high = accuracy_interval(base_only, head_only, n, 1 - alpha)
            excludes_zero = (low > 0) | (high < 0)
            assert np.array_equal(excludes_zero, mcnemar_p(base_only, head_only) < alpha), (n, alpha)
            assert np.all(low <= (head_only - base_only) / n) and np.all((head_only - base_only) / n <= high)


@pytest.mark.parametrize("to_wrong, to_right", [(5, 0), (6, 0), (9, 2), (10, 2), (3, 12), (2, 10)])
def test_accuracy_s_interval_and_p_value_never_disagree(to_wrong, to_right):
    # Few discordant pairs, all or most one way: where a percentile bootstrap and McNemar part.
    base = base_table()
    judged = judge(results(base), results(with_flips(base, to_wrong, to_right)), policy(accuracy=0.02))
    accuracy = judged.metrics[0]
    assert (accuracy.low > 0 or accuracy.high < 0) == (judged.paired.p_value < 0.05) == accuracy.verdict.detected


def test_a_gain_is_improved():
    base = base_table()
    judged = judge(results(base), results(with_flips(base, to_wrong=5, to_right=40)), policy())
    assert judged.verdict == IMPROVED
    assert {metric.name: metric.verdict for metric in judged.metrics}["accuracy"] == IMPROVED


def test_a_real_change_below_min_effect_is_worse_but_by_less_than_matters():
    base = base_table(n=10_000)
    head = with_flips(base, to_wrong=30, to_right=0)  # -0.003: certain, but smaller than 0.005
    judged = judge(results(base), results(head), policy(loss=1.0, macro_f1=1.0))
    accuracy = next(metric for metric in judged.metrics if metric.name == "accuracy")
    assert -0.005 < accuracy.low and accuracy.high < 0 and judged.paired.p_value < 1e-6
    assert accuracy.verdict == Verdict.WORSE_SMALL and judged.verdict == Verdict.WORSE_SMALL
    assert exit_status(judged.verdict) == 0 and headline(judged).startswith("worse, but by less than matters (accuracy")
    # The same change with a smaller min_effect is worse by more than matters: the policy decides what matters.
    smaller = policy(accuracy=0.002, loss=1.0, macro_f1=1.0)
    assert judge(results(base), results(head), smaller).verdict == REGRESSED


def test_a_real_change_whose_interval_crosses_min_effect_may_matter():
    base = base_table()
    judged = judge(results(base), results(with_flips(base, to_wrong=25, to_right=0)), policy(accuracy=0.02))
    accuracy = judged.metrics[0]
    assert accuracy.low < -0.02 < accuracy.high < 0
    assert accuracy.verdict == Verdict.WORSE_MAY_MATTER and exit_status(judged.verdict) == 1


def test_a_large_change_that_noise_could_explain_cannot_be_told():
    base = base_table(n=100)
    head = with_flips(base, to_wrong=2, to_right=0)  # -0.02, four times min_effect, but only 2 examples
    judged = judge(results(base), results(head), policy(loss=1.0, macro_f1=1.0))
    accuracy = next(metric for metric in judged.metrics if metric.name == "accuracy")
    assert accuracy.delta == pytest.approx(-0.02) and judged.paired.p_value == pytest.approx(2 * stats.norm.sf(np.sqrt(2)))
    assert accuracy.low <= -0.005 and accuracy.high >= 0.005
    assert accuracy.verdict == Verdict.CANNOT_TELL_EITHER and exit_status(accuracy.verdict) == 1


@pytest.mark.parametrize("to_wrong, to_right, expected", [
    (8, 4, Verdict.CANNOT_TELL_WORSE), (4, 8, Verdict.CANNOT_TELL_BETTER)])
def test_cannot_tell_says_which_way_a_change_that_matters_could_hide(to_wrong, to_right, expected):
    base = base_table()
    judged = judge(results(base), results(with_flips(base, to_wrong, to_right)), policy(loss=1.0, macro_f1=1.0))
    accuracy = judged.metrics[0]
    assert accuracy.low < 0 < accuracy.high and accuracy.verdict == expected
    assert exit_status(judged.verdict) == (1 if expected == Verdict.CANNOT_TELL_WORSE else 0)


def test_a_mixed_result_is_judged_by_its_worst_news_and_names_every_metric():
    base = base_table()
    # Accuracy up by far more than matters; every example's loss up a little, for certain.
    head = with_flips(base, to_wrong=2, to_right=40).assign(loss=base["loss"] + 0.01)
    judged = judge(results(base), results(head), policy(loss=0.05))
    verdicts = {metric.name: metric.verdict for metric in judged.metrics}
    assert verdicts["accuracy"] == IMPROVED and verdicts["loss"] == Verdict.WORSE_SMALL
    assert judged.verdict == Verdict.WORSE_SMALL
    line = headline(judged)
    assert line.startswith("worse, but by less than matters (loss ") and "better by more than matters (accuracy +0.0380" in line


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


def test_a_measurably_worse_challenger_within_the_margin_is_kept_out_unless_the_policy_tolerates_it():
    # 10,000 examples: the challenger loses 0.003 accuracy (30 examples), a loss the paired test
    # resolves and that is under min_effect (0.005), so it is non-inferior, and yet measurably worse.
    champion = base_table(n=10_000, accuracy=0.95)
    challenger = with_flips(champion, to_wrong=30, to_right=0)
    decision = gate(champion, challenger, policy(loss=1.0, macro_f1=1.0), None)
    assert decision.checks["accuracy non-inferior"] and not decision.checks["accuracy not measurably worse"]
    assert not decision.promote and decision.judgement.metrics[0].verdict == Verdict.WORSE_SMALL
    assert decision.reason.startswith("not promoted: worse, but by less than matters (accuracy -0.0030")
    assert "Measurably worse on accuracy (95% interval -0.00" in decision.reason
    assert "keep_out_measurably_worse" in decision.reason
    tolerant = policy(loss=1.0, macro_f1=1.0).model_copy(update={"keep_out_measurably_worse": []})
    decision = gate(champion, challenger, tolerant, None)
    assert decision.promote and "accuracy not measurably worse" not in decision.checks
    # Promoted all the same, the words still say what the interval says.
    assert decision.reason.startswith("promoted: worse, but by less than matters (accuracy -0.0030")


def test_a_chain_of_slightly_worse_challengers_is_not_all_promoted():
    # The policy tolerates measurable worsening here, to show what the record alone does: each
    # challenger loses 0.003 accuracy, non-inferior on its own.
    champion = base_table(n=10_000, accuracy=0.95)
    rules = policy(loss=1.0, macro_f1=1.0).model_copy(update={"keep_out_measurably_worse": []})
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
    rules = policy(loss=1.0, macro_f1=1.0).model_copy(update={"keep_out_measurably_worse": []})
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


@pytest.mark.parametrize("module", sorted(path.stem for path in (PROJECT_ROOT / "src" / "classifier" / "judging").glob("*.py")))
def test_judging_is_pure(module):
    tree = ast.parse((PROJECT_ROOT / "src" / "classifier" / "judging" / f"{module}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "subprocess", "dvc", "git", "os", "pathlib", "random"}, imported


def test_the_same_tables_always_give_the_same_judgement():
    base = base_table()
    head = with_flips(base, to_wrong=12, to_right=5).assign(loss=lambda table: table["loss"] * 1.1)
    assert judge(results(base), results(head), policy()) == judge(results(base), results(head.copy()), policy())


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


def test_the_default_policy_keeps_out_a_challenger_worse_by_min_effect():
    rules = default_policy()
    assert promotion_rate(discordant=40, worse_by=rules.min_effect.accuracy, trials=60, rules=rules) <= 0.1


def test_the_default_policy_keeps_out_a_measurably_worse_challenger_within_the_margin():
    # The epochs 10 -> 3 change on the default data: 22 test images right only for the champion,
    # 9 only for the challenger (accuracy -0.0124, McNemar p = 0.029; min_effect 0.025).
    rng = np.random.default_rng(7)
    champion, _ = realistic_pair(rng, discordant=0)
    challenger = with_flips(champion, to_wrong=22, to_right=9)
    decision = gate(champion, challenger, default_policy(), None)
    accuracy = decision.judgement.metrics[0]
    assert accuracy.delta == pytest.approx(-13 / DEFAULT_TEST_IMAGES) and accuracy.verdict == Verdict.WORSE_SMALL
    assert decision.checks["accuracy non-inferior"] and not decision.promote


def test_a_margin_below_the_resolution_is_decided_by_chance():
    # Why the defaults are what they are: at 0.005 an equally good challenger is mostly kept out.
    assert promotion_rate(discordant=30, worse_by=0.0, trials=30, rules=policy()) < 0.6


def test_resolution_follows_the_discordance_and_says_what_the_margin_needs():
    champion, challenger = realistic_pair(np.random.default_rng(3), discordant=30)
    decision = gate(champion, challenger, policy(accuracy=0.005), None)
    accuracy = {item.name: item for item in decision.resolution}["accuracy"]
    # Each discordant pair moves the accuracy delta by 1/n: its spread is sqrt(d) / n, and the
    # interval's lower end must clear the margin 95% of the time.
    expected = (stats.norm.ppf(0.975) + stats.norm.ppf(0.95)) * np.sqrt(30) / DEFAULT_TEST_IMAGES
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


# ---------------------------------------------------------------- the gate and the report agree


def loss_shift_pair(n: int, mean_change: float, spread: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same predictions; each example's loss moved by mean_change + spread x (a standardised draw)."""
    champion = base_table(n=n).assign(loss=2.0)
    draws = np.random.default_rng(4).standard_normal(n)
    draws = (draws - draws.mean()) / draws.std(ddof=1)
    return champion, champion.assign(loss=champion["loss"] + mean_change + spread * draws)


def test_a_challenger_the_report_fails_is_not_promoted_the_loss_0654_shape():
    # The retrain that parted them: "promoted: worse, perhaps by enough to matter (loss +0.0654) ...
    # non-inferior on every metric" while --fail-on-regression exited 1. A one-sided 95% bound
    # (a 90% interval's end) stayed under min_effect 0.1; the report's 95% interval crosses it.
    rules = default_policy()
    champion, challenger = loss_shift_pair(1051, 0.0654, spread=0.019 * np.sqrt(1051))
    one_sided = stats.t.interval(0.90, 1050, loc=0.0654, scale=0.019)[1]
    assert one_sided < rules.min_effect.loss  # where the old rule promoted
    decision = gate(champion, challenger, rules, None)
    loss = {metric.name: metric for metric in decision.judgement.metrics}["loss"]
    assert loss.verdict == Verdict.WORSE_MAY_MATTER and loss.delta == pytest.approx(0.0654)
    assert loss.low < 0.1 <= loss.high and exit_status(decision.judgement.verdict) == 1
    assert not decision.promote and not decision.checks["loss non-inferior"]
    assert decision.reason.startswith("not promoted: worse, perhaps by enough to matter (loss +0.0654)")
    assert f"Loss gain could be as low as {-loss.high:+.4f} (the 95% interval's lower end), below -0.1" in decision.reason
    assert decision.gain_lower_bounds["loss"] == pytest.approx(-loss.high)


def test_every_challenger_the_gate_promotes_passes_the_report_on_the_same_tables():
    # Random pairs around every boundary: accuracy changes either way, loss shifts near min_effect,
    # macro F1 moved by mistakes changing class; small and larger test sets.
    rng = np.random.default_rng(29)
    rules = default_policy()
    promoted = 0
    for trial in range(150):
        n = int(rng.choice([60, 300, 1051]))
        champion = base_table(n=n, accuracy=rng.uniform(0.85, 0.97), seed=trial)
        right = int((champion["actual"] == champion["predicted"]).sum())
        challenger = with_flips(champion, to_wrong=int(rng.integers(0, max(1, right // 20))),
                                to_right=int(rng.integers(0, max(1, (n - right) // 2))), seed=trial)
        challenger = challenger.assign(loss=np.maximum(challenger["loss"] + rng.normal(rng.uniform(-0.1, 0.12),
                                                                                        rng.uniform(0, 1.5), n), 0))
        decision = gate(champion, challenger, rules, None)
        report = judge(results(champion), results(challenger), rules)
        # The rule restated from the report's printed intervals, not from its words: non-inferior when the
        # gain's lower end stays above -min_effect; kept out when the interval lies wholly on the worse side.
        expected = {}
        for metric in report.metrics:
            higher_is_better = metric.name != "loss"
            gain_low, gain_high = (metric.low, metric.high) if higher_is_better else (-metric.high, -metric.low)
            expected[f"{metric.name} non-inferior"] = gain_low > -getattr(rules.min_effect, metric.name) + 1e-9
            if metric.name in rules.keep_out_measurably_worse:
                expected[f"{metric.name} not measurably worse"] = not gain_high < 0
        accuracy = next(metric for metric in report.metrics if metric.name == "accuracy")
        expected["accuracy not below the best minus min_effect"] = (
            accuracy.head >= accuracy.base - rules.min_effect.accuracy - 1e-9)
        assert decision.checks == expected, decision.reason
        assert decision.promote == all(expected.values())
        if decision.promote:
            promoted += 1
            assert exit_status(report.verdict) == 0, decision.reason  # a promotion never turns CI red
    assert 10 < promoted < 140  # both outcomes were tried


# ---------------------------------------------------------------- macro F1 on one class set


def test_macro_f1_s_change_and_interval_average_over_one_class_set():
    # The base predicts a class the test split does not hold ("X"); the head makes those mistakes
    # in real classes. The change and its interval both average over the union of classes.
    base = base_table()
    wrong = np.flatnonzero(base["actual"] != base["predicted"])[:40]
    base.loc[wrong, "predicted"] = "X"
    head = base.copy()
    head.loc[wrong, "predicted"] = [CLASSES[(int(actual) + 1) % 10] for actual in head.loc[wrong, "actual"]]
    judged = judge(results(base), results(head), policy(macro_f1=0.02))
    macro = {metric.name: metric for metric in judged.metrics}["macro_f1"]
    labels = sorted(set(base["actual"]) | set(base["predicted"]) | set(head["predicted"]))
    expected = [f1_score(table["actual"], table["predicted"], labels=labels, average="macro", zero_division=0)
                for table in (base, head)]
    assert (macro.base, macro.head) == pytest.approx(expected)
    # Each side over its own classes read +0.068; over one set the head's 40 mistakes in real
    # classes are 40 false positives there, a real drop, and the interval is around it.
    assert point_metrics(head)["macro_f1"] - point_metrics(base)["macro_f1"] > 0.05
    assert macro.low <= macro.delta <= macro.high < 0 and macro.delta == pytest.approx(-0.0174, abs=1e-4)
    assert macro.verdict.worse
