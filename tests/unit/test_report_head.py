"""Which head results the pull-request report judges (pipeline.report.head): its pure rules (issue 29.1-2)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from classifier.compare import Results, judge
from classifier.params import CompareParams
from pipeline.report.head import lock_breaks, lock_outputs, reproduction_line, staleness

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
LOCK = {"stages": {
    "prepare": {"deps": [{"path": "data/raw", "md5": "a.dir"}], "outs": [{"path": "data/prepared", "md5": "b.dir"}]},
    "train": {"deps": [{"path": "data/prepared", "md5": "b.dir"}], "outs": [{"path": "models/candidate.pth", "md5": "c"}]},
}}
# `dvc status --json` in a fresh clone that pulled nothing: every output absent, nothing stale.
NOTHING_PULLED = {"prepare": [{"changed deps": {"data/raw": "deleted"}}, {"changed outs": {"data/prepared": "not in cache"}}],
                  "train": [{"changed deps": {"data/prepared": "deleted"}}, {"changed outs": {"models/candidate.pth": "deleted"}}]}


def test_outputs_that_are_only_absent_are_not_stale():
    outputs = lock_outputs(LOCK) | {"data/raw": "a.dir"}
    assert staleness(NOTHING_PULLED, outputs) == ([], [])


def test_a_changed_param_command_or_committed_metric_is_stale():
    status = {"train": [{"changed deps": {"params.yaml": {"train": "modified"}, "src/classifier/train.py": "modified"}},
                        "changed command"],
              "evaluate": [{"changed outs": {"metrics/metrics.json": "modified"}}]}
    stale, unchecked = staleness(status, lock_outputs(LOCK))
    assert len(stale) == 4 and not unchecked
    assert any("`train`" in reason for reason in stale) and any("metrics/metrics.json" in reason for reason in stale)


def test_a_stage_that_runs_on_every_command_is_not_stale():
    assert staleness({"snapshot": ["always changed"]}, lock_outputs(LOCK)) == ([], [])


def test_a_data_folder_of_another_machine_is_unchecked_not_stale():
    status = {"download": [{"changed deps": {"/mnt/images": "deleted"}}]}
    assert staleness(status, lock_outputs(LOCK)) == ([], ["`/mnt/images` (`download`'s input) is not on this runner"])


def test_a_lock_that_contradicts_itself_is_found():
    assert lock_breaks(LOCK) == []
    broken = {"stages": {**LOCK["stages"], "train": {"deps": [{"path": "data/prepared", "md5": "x.dir"}], "outs": []}}}
    assert len(lock_breaks(broken)) == 1 and "data/prepared" in lock_breaks(broken)[0]


def table(correct: int, total: int = 400) -> pd.DataFrame:
    predicted = [label if index < correct else (label + 1) % 10 for index, label in enumerate(i % 10 for i in range(total))]
    return pd.DataFrame({"id": range(total), "actual": [i % 10 for i in range(total)], "predicted": predicted,
                         "loss": [0.1] * total})


def test_the_reproduction_line_follows_bytes_then_the_verdict():
    policy = CompareParams.model_validate(yaml.safe_load(PARAMS.read_text())["compare"])
    same = judge(Results("sha256:x", table(380)), Results("sha256:x", table(380)), policy)
    assert reproduction_line("abc", "abc", same).startswith("**Reproduced: same bytes.**")
    assert reproduction_line("abc", "def", same).startswith("**Reproduced: within noise.**")
    far = judge(Results("sha256:x", table(380)), Results("sha256:x", table(200)), policy)
    line = reproduction_line("abc", "def", far)
    assert line.startswith("**Not reproduced:**") and str(far.verdict) in line
