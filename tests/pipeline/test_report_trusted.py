"""A verdict the pull request cannot write (issue 38), tried as an attacker would: a contributor who
controls one branch of the repository (and may push to its DVC remote) opens a pull request; CI's exact
command (`make pr-report BASE=origin/main`) runs in a fresh clone of it, from a bare origin, with a
directory DVC remote that the base's `.dvc/config` names. Each attack ends non-zero with a line naming
what was wrong, never "better"; the honest control reads worse (exit 1).

One base run is shared by every case (the session's 1-epoch template); three cases train one epoch
(the honest control, the leaking prepare, and CI's reproduction when the model is only in the PR's
own remote)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from classifier.training.serialization import to_bytes
from pipeline.report.head import BASE_TREE_ENV, base_env
from tests.conftest import commit_all, dvc, git, subprocess_env, write_params
from tests.pipeline.test_remote_s3 import fresh_clone, make

pytestmark = pytest.mark.slow
MODEL = "models/model.pth"
CI_COMMAND = ["pr-report", "BASE=origin/main", "REPORT_FLAGS=--artifacts-url https://ci.example/runs/1"]


@dataclass
class Team:
    root: Path
    origin: Path
    cache: Path


@pytest.fixture(scope="module")
def team(reproduced_template, tmp_path_factory) -> Team:
    """main: the 1-epoch run, its outputs pushed to a folder DVC remote named in .dvc/config; a bare origin."""
    root = tmp_path_factory.mktemp("trusted")
    base = Path(shutil.copytree(reproduced_template, root / "base", symlinks=True))
    dvc(base, "remote", "add", "--default", "storage", str(root / "dvc-remote"))
    commit_all(base, "DVC remote: a folder")
    dvc(base, "push", "-q")
    origin = root / "origin.git"
    git(root, "clone", "--quiet", "--bare", str(base), str(origin))
    return Team(root, origin, base / ".dvc" / "cache")


def contributor(team: Team, branch: str) -> Path:
    """A clone of main on a new branch, its outputs checked out (the DVC cache shared, to save copying)."""
    clone = fresh_clone(team.origin, team.root / f"dev-{branch}")
    git(clone, "checkout", "-q", "-b", branch)
    dvc(clone, "config", "--local", "cache.dir", str(team.cache))
    dvc(clone, "checkout", "-q")
    return clone


def repro_with_own_code(clone: Path) -> None:
    """The contributor's `dvc repro`, with the clone's own src/ (the venv's editable install names another)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=clone, capture_output=True, text=True,
                          env=subprocess_env(PYTHONPATH=str(clone / "src")))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def publish(clone: Path, branch: str, message: str, dvc_push: bool = True) -> None:
    commit_all(clone, message)
    git(clone, "push", "-q", "origin", branch)
    if dvc_push:
        dvc(clone, "push", "-q")


def forge_results(clone: Path) -> None:
    """Every committed test prediction right, with a tiny loss, and the lock's md5s fixed to match."""
    predictions = pd.read_csv(clone / "metrics/predictions.csv", dtype={"id": str})
    predictions["predicted"] = predictions["actual"]
    predictions["loss"] = 0.001
    predictions.to_csv(clone / "metrics/predictions.csv", index=False, lineterminator="\n")
    metrics = json.loads((clone / "metrics/metrics.json").read_text())
    metrics["test"].update(accuracy=1.0, macro_f1=1.0, loss=0.001)
    (clone / "metrics/metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    dvc(clone, "commit", "-f", "-q")


def swap_classes(clone: Path, first: int = 1, second: int = 7) -> None:
    """A much worse model: the output rows of two classes swapped, written as the candidate and the published model."""
    state = torch.load(io.BytesIO((clone / MODEL).read_bytes()), weights_only=True)
    last = [key for key in state if key.endswith(".weight")][-1].removesuffix(".weight")
    for suffix in (".weight", ".bias"):
        tensor = state[last + suffix]
        tensor[[first, second]] = tensor[[second, first]]
    for path in ("models/candidate.pth", MODEL):
        (clone / path).write_bytes(to_bytes(state))


def ci(team: Team, branch: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    """CI's exact command in a fresh clone of the branch; its output, the report and the clone."""
    clone = fresh_clone(team.origin, team.root / f"ci-{branch}", branch)
    done = make(clone, subprocess_env(), *CI_COMMAND)
    report = clone / "report/report.md"
    return done, report.read_text() if report.is_file() else "", clone


def verdict_of(report: str) -> str:
    return next((line for line in report.splitlines() if line.startswith("**Verdict: ")), "")


def exits(done: subprocess.CompletedProcess, clone: Path, status: int) -> str:
    """make exits 2 for any failure; the report's own status is in report/exit-status."""
    output = done.stdout + done.stderr
    assert done.returncode == (0 if status == 0 else 2), output[-3000:]
    written = clone / "report/exit-status"
    assert written.is_file() and written.read_text().strip() == str(status), output[-3000:]
    return output


def test_the_honest_control_reads_worse_and_a_loosened_report_and_policy_change_nothing(team):
    clone = contributor(team, "slower")
    write_params(clone, **{"train.learning_rate": 0.00002, "save.min_accuracy": 0.1})
    repro_with_own_code(clone)
    publish(clone, "slower", "learn 50 times slower")
    done, report, ci_clone = ci(team, "slower")
    exits(done, ci_clone, 1)
    assert "worse" in verdict_of(report) and "better" not in verdict_of(report)
    assert "**Judged: CI's own scoring** of the head's model" in report
    assert "fetched, md5" in report and "the base's `.dvc/config` names" in report

    # The same head with its own report code and policy loosened: the base's code and policy judge it.
    git(clone, "checkout", "-q", "-b", "slower-loosened")
    main_py = clone / "pipeline/report/__main__.py"
    main_py.write_text(main_py.read_text().replace("status = exit_status(judgement.verdict)", "status = 0"))
    params = yaml.safe_load((clone / "params.yaml").read_text())
    write_params(clone, **{f"compare.min_effect.{key}": 0.9 for key in params["compare"]["min_effect"]})
    repro_with_own_code(clone)  # validate reruns (params.yaml changed), nothing else
    publish(clone, "slower-loosened", "judge by my own rules")
    done, report, ci_clone = ci(team, "slower-loosened")
    exits(done, ci_clone, 1)
    assert "worse" in verdict_of(report) and "better" not in verdict_of(report)


def test_a_swapped_worse_model_with_forged_results_is_caught_not_judged(team):
    clone = contributor(team, "swapped")
    swap_classes(clone)
    forge_results(clone)
    publish(clone, "swapped", "a better model, honest")
    done, report, ci_clone = ci(team, "swapped")
    output = exits(done, ci_clone, 2)
    assert "the committed results are not this model's" in output
    assert "the committed results are not this model's" in report and "better" not in verdict_of(report)


def test_the_heads_own_evaluate_lies_and_the_bases_scores(team):
    clone = contributor(team, "lying-evaluate")
    evaluate = clone / "src/classifier/training/evaluate.py"
    evaluate.write_text(evaluate.read_text().replace(
        "    summary, per_class, predictions, losses = score(logits, test.labels, data.num_classes)\n",
        "    logits = torch.nn.functional.one_hot(test.labels, data.num_classes).float() * 50\n"
        "    summary, per_class, predictions, losses = score(logits, test.labels, data.num_classes)\n"))
    repro_with_own_code(clone)  # evaluate and save rerun with the lying code; train does not
    assert json.loads((clone / "metrics/metrics.json").read_text())["test"]["accuracy"] == 1.0
    publish(clone, "lying-evaluate", "evaluate: faster")
    done, report, ci_clone = ci(team, "lying-evaluate")
    output = exits(done, ci_clone, 2)
    assert "the committed results are not this model's" in output


def test_a_model_only_in_the_prs_own_remote_is_never_fetched_from_it(team):
    clone = contributor(team, "own-remote")
    swap_classes(clone, 2, 5)  # not the swapped model another case pushed to the base's remote
    forge_results(clone)
    dvc(clone, "remote", "add", "--default", "--force", "mine", str(clone / "store"))
    dvc(clone, "push", "-q", "-r", "mine")
    publish(clone, "own-remote", "outputs in the repository", dvc_push=False)
    done, report, ci_clone = ci(team, "own-remote")
    output = exits(done, ci_clone, 2)
    assert "is in neither this clone's DVC cache nor the base's remote" in output, output[-3000:]
    assert "better" not in verdict_of(report)


def test_a_prepare_that_trains_on_the_test_images_is_not_comparable(team):
    clone = contributor(team, "leaky")
    prepare = clone / "src/classifier/data/prepare.py"
    prepare.write_text(prepare.read_text().replace(
        "    arrays = split_arrays(source, splits)  # checked before anything is written\n"
        "    return write_prepared(out_dir, arrays, data_params.dataset, source.classes, manifest(source, splits))\n",
        "    arrays = split_arrays(source, splits)  # checked before anything is written\n"
        "    arrays['train'] = tuple(np.concatenate([a, b]) for a, b in zip(arrays['train'], arrays['test']))\n"
        "    table = manifest(source, splits)\n"
        "    table = pd.concat([table, table[table['split'] == 'test'].assign(split='train')])\n"
        "    return write_prepared(out_dir, arrays, data_params.dataset, source.classes, table)\n"))
    assert "table = manifest(source, splits)" in prepare.read_text()
    repro_with_own_code(clone)
    publish(clone, "leaky", "more training data")
    done, report, ci_clone = ci(team, "leaky")
    output = exits(done, ci_clone, 2)
    assert "test images are in the head's training data" in output, output[-3000:]


def test_shell_in_params_never_runs_in_ci(team):
    clone = contributor(team, "shell")
    write_params(clone, **{"data.folder": "images$(touch pwned)"})
    publish(clone, "shell", "another folder", dvc_push=False)
    done, report, ci_clone = ci(team, "shell")
    output = exits(done, ci_clone, 2)
    assert "data.folder = 'images$(touch pwned)': must not hold '$'" in output, output[-3000:]
    assert not (ci_clone / "pwned").exists()


def test_the_bases_worktree_on_pythonpath_wins_over_the_editable_install(tmp_path):
    # The venv's editable install maps `classifier` to one checkout; the report scores with another's.
    tree = tmp_path / "base"
    (tree / "src" / "classifier").mkdir(parents=True)
    (tree / "pipeline").mkdir()
    (tree / "src" / "classifier" / "__init__.py").write_text("")
    (tree / "src" / "classifier" / "training").mkdir()
    (tree / "src" / "classifier" / "training" / "__init__.py").write_text("")
    (tree / "src" / "classifier" / "training" / "evaluate.py").write_text("print('the base tree evaluate')\n")
    (tree / "pipeline" / "__init__.py").write_text("WHERE = 'base tree'\n")
    env = {**base_env(tree), "PATH": os.environ["PATH"]}
    assert env[BASE_TREE_ENV] == str(tree)
    done = subprocess.run([sys.executable, "-P", "-m", "classifier.training.evaluate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.stdout.strip() == "the base tree evaluate", done.stderr
    done = subprocess.run([sys.executable, "-P", "-c", "import pipeline; print(pipeline.WHERE)"], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "base tree", done.stderr
