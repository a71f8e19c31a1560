"""make run's closing verdict on real git repos holding synthetic results (no DVC, no torch):
same bytes, within noise, differs (with the verdict's words), cannot tell, not comparable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.committed import against_committed
from tests.conftest import PROJECT_ROOT, git

FINGERPRINT = "sha256:" + "ab" * 32


def predictions(flips_to_wrong: int = 0, flips_to_right: int = 0, n: int = 1000) -> str:
    """n test examples, 95% right; some of the right ones made wrong and some wrong ones made right."""
    actual = np.arange(n) % 10
    predicted = actual.copy()
    predicted[:50] = (actual[:50] + 1) % 10  # the committed model's 50 mistakes
    predicted[50:50 + flips_to_wrong] = (actual[50:50 + flips_to_wrong] + 1) % 10
    predicted[:flips_to_right] = actual[:flips_to_right]
    loss = np.where(predicted == actual, 0.05, 2.5)
    return pd.DataFrame({"id": [f"{i:06d}" for i in range(n)], "actual": actual.astype(str),
                         "predicted": predicted.astype(str), "loss": loss}).to_csv(index=False)


def write_results(repo: Path, table: str, model_md5: str, fingerprint: str = FINGERPRINT) -> None:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/predictions.csv").write_text(table)
    (repo / "metrics/evaluation.json").write_text(json.dumps({"test_fingerprint": fingerprint}))
    lock = {"schema": "2.0", "stages": {"save": {"outs": [{"path": "models/model.pth", "md5": model_md5}]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo with HEAD's committed results and params.yaml (the project's compare policy)."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    write_results(root, predictions(), "a" * 32)
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "results")
    return root


def test_the_same_model_is_same_bytes(repo):
    assert against_committed(repo) == "same bytes as the committed model (models/model.pth at HEAD)"


def test_a_few_examples_changing_sides_both_ways_is_within_noise(repo):
    write_results(repo, predictions(flips_to_wrong=9, flips_to_right=7), "b" * 32)
    line = against_committed(repo)
    assert line.startswith("reproduces the committed results within noise: no detectable change (accuracy -0.0020, "
                           "macro F1 -0.0020, loss +0.0049); 1,000 paired test images, 9 right only in the committed "
                           "model and 7 only in this one (McNemar p = 0.62)"), line


def test_a_real_loss_smaller_than_matters_differs_and_says_worse(repo):
    # -0.012: McNemar p = 0.0005, the interval excludes 0 and stays within min_effect (0.025).
    write_results(repo, predictions(flips_to_wrong=12), "b" * 32)
    line = against_committed(repo)
    assert line.startswith("differs from the committed results: worse, but by less than matters (accuracy -0.0120, "
                           "macro F1 "), line
    assert "within noise" not in line and "no detectable change (loss" not in line
    assert "12 right only in the committed model and 0 only in this one (McNemar p = 0.00053)" in line


def test_a_large_loss_of_accuracy_differs_by_more_than_matters(repo):
    write_results(repo, predictions(flips_to_wrong=60), "b" * 32)
    line = against_committed(repo)
    assert line.startswith("differs from the committed results: worse by more than matters (accuracy -0.0600"), line
    assert "60 right only in the committed model and 0 only in this one" in line


def test_a_change_too_small_a_test_set_cannot_settle_is_cannot_tell(repo):
    # 100 test images: -0.04 on 5 against 1 is nothing the tests can detect (McNemar p = 0.10),
    # but the interval reaches past -min_effect, so "within noise" would claim more than the numbers hold.
    write_results(repo, predictions(n=100), "a" * 32)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "100 images")
    write_results(repo, predictions(flips_to_wrong=5, flips_to_right=1, n=100), "b" * 32)
    line = against_committed(repo)
    assert line.startswith("may differ from the committed results, this test set cannot tell: cannot tell: perhaps "
                           "worse by enough to matter (accuracy -0.0400"), line
    assert "within noise" not in line and "(McNemar p = 0.1)" in line


def test_another_test_split_is_not_comparable(repo):
    write_results(repo, predictions(), "b" * 32, fingerprint="sha256:" + "cd" * 32)
    line = against_committed(repo)
    assert line.startswith("not comparable with the committed results: the test sets differ"), line


def test_no_committed_results_is_not_comparable(repo):
    git(repo, "rm", "-q", "--cached", "metrics/predictions.csv")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "no results")
    write_results(repo, predictions(), "b" * 32)
    assert against_committed(repo) == "not comparable with the committed results: HEAD has no per-example results"
