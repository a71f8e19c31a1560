"""The real `dvc repro` in a temporary git copy of the project, trained for one epoch."""

import json
import re

import pytest

from classifier.files import file_digest
from tests.conftest import ALWAYS_RUNS, assert_up_to_date, commit_all, dvc, git, write_params

pytestmark = pytest.mark.slow

ALL_STAGES = ["validate", *ALWAYS_RUNS, "download", "prepare", "train", "evaluate", "save"]
# A params change that reaches train: validate checks the file, snapshot lists the data as always, then train on.
TRAIN_ONWARDS = ["validate", *ALWAYS_RUNS, "train", "evaluate", "save"]
OUTPUTS = [
    "data/raw/mnist_5k.csv.gz",
    "data/prepared/train_images.npy",
    "data/prepared/meta.json",
    "models/candidate.pth",
    "models/candidate.json",
    "models/candidate-history.csv",
    "models/candidate-metrics.json",
    "models/candidate-predictions.csv",
    "models/model.pth",
    "models/model.json",
    "metrics/metrics.json",
    "metrics/history.csv",
    "metrics/evaluation.json",
    "metrics/predictions.csv",
    "metrics/per_class.csv",
]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def output_hashes(project) -> dict[str, str]:
    return {relative: file_digest(project / relative) for relative in OUTPUTS if (project / relative).exists()}


def test_repro_runs_everything_once_then_only_what_changed(project):
    first = dvc(project, "repro")
    assert ran_stages(first.stdout) == ALL_STAGES
    for relative in OUTPUTS:
        assert (project / relative).is_file(), relative
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert json.loads((project / "metrics/evaluation.json").read_text())["dataset"] == "mnist-5k"
    # Content-hash splits: about 72 / 8 / 20 per cent of the 5,000 images, every one in exactly one split.
    samples = metrics["samples"]
    assert sum(samples.values()) == 5000 and 900 < samples["test"] < 1100 and 300 < samples["val"] < 500
    assert json.loads((project / "metrics/evaluation.json").read_text())["test_samples"] == samples["test"]
    assert 0.5 < metrics["test"]["accuracy"] <= 1
    card = json.loads((project / "models/model.json").read_text())
    assert card["sha256"] == file_digest(project / "models/model.pth")

    second = dvc(project, "repro")
    assert ran_stages(second.stdout) == ALWAYS_RUNS  # the listing is the same bytes: nothing after it reruns
    assert_up_to_date(project)

    write_params(project, **{"train.epochs": 2})
    third = dvc(project, "repro")
    assert ran_stages(third.stdout) == TRAIN_ONWARDS
    assert len((project / "metrics/history.csv").read_text().splitlines()) == 1 + 2


def test_forced_reruns_give_identical_model_bytes_and_metrics(reproduced_project):
    project = reproduced_project
    model_sha = file_digest(project / "models/model.pth")
    metrics = (project / "metrics/metrics.json").read_bytes()
    dvc(project, "repro", "-f")
    assert file_digest(project / "models/model.pth") == model_sha
    assert (project / "metrics/metrics.json").read_bytes() == metrics


def test_exp_run_with_a_set_param_reruns_train_evaluate_and_save_only(reproduced_project):
    result = dvc(reproduced_project, "exp", "run", "-S", "train.epochs=2")
    assert ran_stages(result.stdout) == TRAIN_ONWARDS


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("train.epochs", 0, "train.epochs = 0"),
        ("train.optimizer", "adamw", "train.optimizer = 'adamw'"),
        ("data.dataset", "cifar", "data.dataset = 'cifar'"),
        ("save.min_accuracy", "high", "save.min_accuracy = 'high'"),
    ],
)
def test_bad_params_stop_the_run_before_any_output_is_touched(reproduced_project, key, value, named):
    project = reproduced_project
    before = output_hashes(project)
    write_params(project, **{key: value})
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0
    assert named in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert ran_stages(result.stdout) == ["validate"]
    assert output_hashes(project) == before


def published_files(project) -> dict[str, str]:
    """The published model, its card and its git-tracked results: what a refused candidate must not touch."""
    return {relative: digest for relative, digest in output_hashes(project).items()
            if relative.startswith(("models/model.", "metrics/"))}


def test_a_refused_candidate_leaves_the_published_model_and_its_metrics_and_says_what_to_do(reproduced_project):
    """Issue 40.4: after a refusal metrics/ still describes models/model.pth (the candidate's results stay in
    DVC's cache, models/candidate-*), the error names the two ways on, and `dvc repro` reruns save alone."""
    project = reproduced_project
    published = published_files(project)
    write_params(project, **{"save.min_accuracy": 0.999, "train.epochs": 2})
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0
    assert re.search(r"test accuracy 0\.\d{4} is below save.min_accuracy 0.9990: the candidate was not published",
                     result.stderr)
    assert "raise train.epochs or lower save.min_accuracy, e.g. dvc exp run -S train.epochs=4" in result.stderr
    assert re.search(r"or dvc exp run -S save.min_accuracy=0\.\d+\b", result.stderr)
    assert published_files(project) == published
    assert git(project, "status", "--porcelain", "--", "metrics").strip() == ""
    candidate = json.loads((project / "models/candidate-metrics.json").read_text())
    assert candidate != json.loads((project / "metrics/metrics.json").read_text())

    # Honest about what is stale: the refused save alone, again and again.
    status = json.loads(dvc(project, "status", "--json").stdout)
    assert sorted(status) == sorted([*ALWAYS_RUNS, "save"]), status
    again = dvc(project, "repro", check=False)
    assert again.returncode != 0 and ran_stages(again.stdout) == [*ALWAYS_RUNS, "save"]

    # The flag the error names: save alone reruns and publishes the candidate with its own results.
    write_params(project, **{"save.min_accuracy": 0.5})
    accepted = dvc(project, "repro")
    assert ran_stages(accepted.stdout) == ["validate", *ALWAYS_RUNS, "save"]
    assert json.loads((project / "metrics/metrics.json").read_text()) == candidate
    assert json.loads((project / "models/model.json").read_text())["metrics"] == candidate["test"]
    assert len((project / "metrics/history.csv").read_text().splitlines()) == 1 + 2
    assert_up_to_date(project)


def test_after_merging_a_branch_trained_here_dvc_restores_its_model_instead_of_training(reproduced_project):
    """Issue 40.7: a promoted branch merged in the checkout whose DVC cache trained it (`make retrain`'s
    worktree shares it). DVC restores a stage from its cache only when every out is cached; train's
    and evaluate's are, so only save, a copy, runs. (With a `cache: false` history.csv, train retrained.)"""
    project = reproduced_project
    write_params(project, **{"train.epochs": 2})
    dvc(project, "repro")
    commit_all(project, "the promoted branch")
    branch = output_hashes(project)

    git(project, "checkout", "-q", "HEAD~1")  # the champion's commit, with its model checked out
    dvc(project, "checkout")
    assert output_hashes(project) != branch
    git(project, "checkout", "-q", "main")  # the merge: git brings dvc.lock and metrics/, not the model
    merged = dvc(project, "repro")
    assert ran_stages(merged.stdout) == [*ALWAYS_RUNS, "save"]
    assert "Stage 'train' is cached - skipping run" in merged.stdout
    assert "Stage 'evaluate' is cached - skipping run" in merged.stdout
    assert output_hashes(project) == branch
    assert git(project, "status", "--porcelain").strip() == ""
    assert_up_to_date(project)


def test_metrics_and_plots_show(reproduced_project):
    project = reproduced_project
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    # dvc keys the workspace as "" in its JSON
    assert shown[""]["data"]["metrics/metrics.json"]["data"]["test"]["accuracy"] > 0.5
    dvc(project, "plots", "show", "-o", "plots-out")
    html = (project / "plots-out" / "index.html").read_text()
    # DVC's element id per plot (its id, / and . as _), and the titles dvc.yaml gives them
    for plot in ("loss", "accuracy", "metrics_predictions_csv", "metrics_per_class_csv"):
        assert f'<div id = "{plot}">' in html
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix", "F1 score per class"):
        assert title in html
