"""`dvc exp run -S` on the project's own params.yaml: only the set value changes, and the README's way back works."""

from __future__ import annotations

import difflib
import shutil

import pytest

from classifier.files import file_digest
from tests.conftest import PROJECT_ROOT, assert_up_to_date, commit_all, copy_project, dvc, git

OVERRIDES = ["train.epochs=3", "model.hidden_sizes=[256,128]", "data.dataset=mnist",
             "seed=7", "save.min_accuracy=0.5"]


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("override", OVERRIDES)
def test_dvcs_rewrite_of_params_yaml_changes_only_the_set_value(override, tmp_path):
    """DVC's own `-S` writer (hydra overrides, ruamel round-trip) on a copy of params.yaml."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    original = params.read_text()
    apply_overrides(params, [override])
    changed = changed_lines("\n".join(difflib.unified_diff(original.splitlines(), params.read_text().splitlines(), n=0)))
    removed = [line[1:] for line in changed if line.startswith("-")]
    added = [line[1:] for line in changed if line.startswith("+")]
    key, value = override.rsplit("=", 1)
    if value.startswith("["):  # a list: only its item lines change, at the indent they had
        indent = removed[0][: len(removed[0]) - len(removed[0].lstrip())]
        assert all(line.startswith(indent + "- ") for line in removed), removed
        assert added == [f"{indent}- {item}" for item in value.strip("[]").split(",")]
    else:
        assert len(removed) == len(added) == 1, changed
        assert added[0].split("#")[0].strip() == f"{key.rsplit('.', 1)[-1]}: {value}"
        assert removed[0].partition("#")[2] == added[0].partition("#")[2], "the line's comment moved"


@pytest.mark.slow
def test_an_experiment_changes_one_line_of_params_yaml_and_the_way_back_restores_the_model(tmp_path):
    project = copy_project(tmp_path / "project")
    commit_all(project, "copy")
    dvc(project, "repro")
    commit_all(project, "baseline")
    baseline_model = file_digest(project / "models" / "model.pth")

    dvc(project, "exp", "run", "-S", "train.epochs=2")
    assert changed_lines(git(project, "diff", "-U0", "params.yaml")) == ["-  epochs: 10", "+  epochs: 2"]
    # The experiment's results are the workspace's: a new model and new metrics, uncommitted.
    experiment_model = file_digest(project / "models" / "model.pth")
    assert experiment_model != baseline_model
    assert "metrics/metrics.json" in git(project, "diff", "--name-only")

    # The README's view: the params and metrics that differ, no mirror URLs, no dep hashes.
    shown = dvc(project, "exp", "show", "--only-changed", "--drop", ".*/|params.yaml", "--csv").stdout
    header = shown.splitlines()[0].split(",")
    assert "train.epochs" in header and any("accuracy" in column for column in header)
    assert not [column for column in header if "/" in column or "mirrors" in column or column == "params.yaml"], header
    # Even unfiltered, no URL is a param: the mirrors live in classifier/datasets.py (it was 3,065 characters wide).
    every_column = dvc(project, "exp", "show", "--csv").stdout.splitlines()[0]
    assert "mirrors" not in every_column and "https:" not in every_column, every_column

    # The way back, as the README gives it.
    git(project, "checkout", "--", "params.yaml", "dvc.lock", "metrics")
    dvc(project, "checkout")
    assert file_digest(project / "models" / "model.pth") == baseline_model
    assert_up_to_date(project)

    # And forward again: the experiment is kept, under the name `dvc exp show` lists.
    experiment = dvc(project, "exp", "list", "--name-only").stdout.split()[0]
    dvc(project, "exp", "apply", experiment)
    assert file_digest(project / "models" / "model.pth") == experiment_model
    assert changed_lines(git(project, "diff", "-U0", "params.yaml")) == ["-  epochs: 10", "+  epochs: 2"]
