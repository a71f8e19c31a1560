"""make run's closing verdict on real git repos holding synthetic results (no DVC, no torch):
same bytes, within noise, differs, not comparable."""

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
    assert line.startswith("reproduces the committed results within noise: 1,000 paired test images, "
                           "9 right only in the committed model and 7 only in this one (McNemar p = 0.8"), line
    assert "accuracy -0.0020" in line and "macro F1 " in line and "loss " in line


def test_a_real_loss_of_accuracy_differs(repo):
    write_results(repo, predictions(flips_to_wrong=60), "b" * 32)
    line = against_committed(repo)
    assert line.startswith("differs from the committed results (regressed): 1,000 paired test images, "
                           "60 right only in the committed model and 0 only in this one"), line
    assert "accuracy -0.0600" in line


def test_another_test_split_is_not_comparable(repo):
    write_results(repo, predictions(), "b" * 32, fingerprint="sha256:" + "cd" * 32)
    line = against_committed(repo)
    assert line.startswith("not comparable with the committed results: the test sets differ"), line


def test_no_committed_results_is_not_comparable(repo):
    git(repo, "rm", "-q", "--cached", "metrics/predictions.csv")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "no results")
    write_results(repo, predictions(), "b" * 32)
    assert against_committed(repo) == "not comparable with the committed results: HEAD has no per-example results"
