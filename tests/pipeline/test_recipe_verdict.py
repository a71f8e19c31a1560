"""`python -m pipeline.report --seeds 3` end to end: real `dvc exp run`s (1 epoch, a tiny network), the
recipe section's words follow from its numbers, and a second report trains nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from classifier.judging.compare import metric_verdict
from tests.conftest import commit_all, copy_project, dvc, git, subprocess_env, write_params

pytestmark = pytest.mark.slow

NAMES = {"accuracy": "accuracy", "macro_f1": "macro F1", "loss": "loss"}


def report(project: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.report", "--base", "main", "--out", "report", *flags],
                          cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=1800)


def section(text: str) -> str:
    start = text.index("### Recipe (")
    return text[start:text.index("\n### ", start + 1)]


def test_three_seeds_per_side_judged_in_the_model_verdicts_words(tmp_path):
    project = copy_project(tmp_path / "project")
    write_params(project, **{"train.epochs": 1, "model.hidden_sizes": [16], "save.min_accuracy": 0.5})
    dvc(project, "repro")
    commit_all(project, "base: one epoch, a tiny network")
    git(project, "checkout", "-q", "-b", "pr")
    write_params(project, **{"train.learning_rate": 0.003})
    dvc(project, "repro")
    commit_all(project, "head: a larger learning rate")

    first = report(project, "--seeds", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "recipe: base seed 3 (3/3)" in first.stderr and "recipe: head seed 1 (1/3)" in first.stderr
    text = section((project / "report" / "report.md").read_text())
    assert (project / "report" / "recipe_seeds.png").stat().st_size > 10_000

    # Each seed's numbers, then each metric's row: the mean change, the paired t interval and the words.
    seed_rows = [line for line in text.splitlines() if re.match(r"\| [123] \| ", line)]
    per_seed = np.array([[float(cell) for cell in line.strip("|").split("|")[1:]] for line in seed_rows])
    assert per_seed.shape == (3, 6)
    half_t = stats.t.ppf(0.975, 2) / np.sqrt(3)
    words = []
    for column, name in enumerate(("accuracy", "macro_f1", "loss")):
        changes = per_seed[:, 2 * column + 1] - per_seed[:, 2 * column]
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |")).strip("|").split("|")
        cells = [cell.strip() for cell in row]
        delta = float(cells[4])
        low, high = (float(end) for end in cells[5].split(" to "))
        min_effect = float(cells[7])
        assert delta == pytest.approx(changes.mean(), abs=2e-4)
        spread = changes.std(ddof=1)
        assert (low, high) == pytest.approx((changes.mean() - half_t * spread, changes.mean() + half_t * spread),
                                            abs=1e-3)
        verdict = cells[8].strip("*")
        # The words are metric_verdict's for the interval shown (away from a boundary rounding could move).
        if min(abs(low), abs(high), abs(abs(low) - min_effect), abs(abs(high) - min_effect)) > 2e-4:
            assert verdict == metric_verdict(name, low, high, min_effect)
        words.append((verdict, name))
    verdict_line = next(line for line in text.splitlines() if line.startswith("**Recipe verdict: "))
    for verdict, name in words:
        assert verdict in verdict_line and NAMES[name] in verdict_line
    assert "base: recipe" in text and "0 of 3 seed(s) found from an earlier run, 3 trained here" in text

    # The same recipes again: every seed is found among the experiments, nothing trains.
    again = report(project, "--seeds", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dvc exp run" not in again.stderr
    second = section((project / "report" / "report.md").read_text())
    assert second.count("3 of 3 seed(s) found from an earlier run") == 2
    assert [line for line in second.splitlines() if re.match(r"\| [123] \| ", line)] == seed_rows

    # CI's report (--check-head, `make pr-report SEEDS=3`): every seed trained by the BASE's code, none of the
    # head's run, no experiment reused. The head's train.py now leaves a mark when imported; `dvc commit`
    # records it, so the head's model is the one in the cache and nothing retrains it.
    mark = tmp_path / "the-head's-train-ran"
    train_py = project / "src" / "classifier" / "training" / "train.py"
    train_py.write_text(train_py.read_text() + f"\nopen({str(mark)!r}, 'w').close()\n")
    dvc(project, "commit", "-f", "train")
    commit_all(project, "head: a train.py that leaves a mark")
    ci = report(project, "--check-head", "--seeds", "3")
    assert ci.returncode == 0, ci.stderr[-3000:]
    assert "recipe: head seed 3 (3/3): the base's train and evaluate" in ci.stderr and "dvc exp run" not in ci.stderr
    assert not mark.exists()
    trusted = section((project / "report" / "report.md").read_text())
    assert trusted.count("3 seed(s) trained here by the base's code on the base's split") == 2
    assert len([line for line in trusted.splitlines() if re.match(r"\| [123] \| ", line)]) == 3
