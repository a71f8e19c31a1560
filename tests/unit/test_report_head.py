"""What the pull-request report judges at the head (pipeline.report.head): its pure rules (issues 29.1-2, 38)."""

from __future__ import annotations

import pandas as pd

from pipeline.report.head import forged, lock_breaks, lock_outputs, staleness

LOCK = {"stages": {
    "prepare": {"deps": [{"path": "data/raw", "md5": "a.dir"}], "outs": [{"path": "data/prepared", "md5": "b.dir"}]},
    "train": {"deps": [{"path": "data/prepared", "md5": "b.dir"}], "outs": [{"path": "models/candidate.pth", "md5": "c"}]},
}}
# `dvc status --json` in a fresh clone that pulled nothing: every output absent, nothing stale.
NOTHING_PULLED = {"prepare": [{"changed deps": {"data/raw": "deleted"}}, {"changed outs": {"data/prepared": "not in cache"}}],
                  "train": [{"changed deps": {"data/prepared": "deleted"}}, {"changed outs": {"models/candidate.pth": "deleted"}}]}


def test_outputs_that_are_only_absent_are_not_stale():
    outputs = lock_outputs(LOCK) | {"data/raw": "a.dir"}
    assert staleness(NOTHING_PULLED) == []


def test_a_changed_param_command_or_committed_metric_is_stale():
    status = {"train": [{"changed deps": {"params.yaml": {"train": "modified"}, "src/classifier/training/train.py": "modified"}},
                        "changed command"],
              "evaluate": [{"changed outs": {"metrics/metrics.json": "modified"}}]}
    stale = staleness(status)
    assert len(stale) == 4
    assert any("`train`" in reason for reason in stale) and any("metrics/metrics.json" in reason for reason in stale)


def test_a_stage_that_runs_on_every_command_is_not_stale():
    assert staleness({"snapshot": ["always changed"]}) == []


def test_a_lock_that_contradicts_itself_is_found():
    assert lock_breaks(LOCK) == []
    broken = {"stages": {**LOCK["stages"], "train": {"deps": [{"path": "data/prepared", "md5": "x.dir"}], "outs": []}}}
    assert len(lock_breaks(broken)) == 1 and "data/prepared" in lock_breaks(broken)[0]


def table(correct: int, total: int = 400, loss: float = 0.1) -> pd.DataFrame:
    predicted = [label if index < correct else (label + 1) % 10 for index, label in enumerate(i % 10 for i in range(total))]
    return pd.DataFrame({"id": [f"{i:016x}" for i in range(total)], "actual": [i % 10 for i in range(total)],
                         "predicted": predicted, "loss": [loss] * total})


def test_committed_results_that_agree_with_cis_scoring_are_not_forged():
    assert forged(table(380), table(380, loss=0.1004)) is None  # another CPU's last digits
    assert forged(table(380).iloc[:100], table(380)) is None     # the images both hold (data grew)
    assert forged(table(380), table(380).assign(id=lambda t: "x" + t["id"])) is None  # none shared: nothing to check


def test_hand_edited_predictions_or_losses_are_named_with_a_count_and_the_first_image():
    found = forged(table(400), table(380))
    assert found.startswith("the committed results are not this model's: 20 of 400 test images differ")
    assert "image 000000000000017c" in found
    assert "1 of 400" not in found and forged(table(380, loss=0.001), table(380)).startswith(
        "the committed results are not this model's: 400 of 400")
