"""pipeline.report.recipe's pure parts: a recipe's params and key, the -S values that make one, the markdown."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import yaml

from classifier.judging.compare import judge_recipe
from classifier.params import CompareParams
from pipeline.report.recipe import (
    RecipeSection, found_experiments, overrides, recipe_key, recipe_lines, recipe_of, recipe_section,
)
from pipeline.results import git

POLICY = CompareParams(alpha=0.05, min_effect={"accuracy": 0.025, "macro_f1": 0.025, "loss": 0.1})


def test_a_recipe_is_what_training_reads_without_the_training_seed(default_params):
    default_params["train"]["seed"] = 7
    recipe = recipe_of(default_params)
    assert recipe["seed"] == default_params["seed"] and recipe["model.hidden_sizes"] == [512, 512]
    assert "train.seed" not in recipe and not any(key.startswith(("compare", "save")) for key in recipe)
    assert recipe_key(recipe, {"src/x.py": "1"}) == recipe_key(recipe_of(default_params), {"src/x.py": "1"})
    assert recipe_key(recipe, {"src/x.py": "2"}) != recipe_key(recipe, {"src/x.py": "1"})


def test_overrides_turn_the_workspace_into_the_recipe():
    workspace = {"train.epochs": 3, "train.learning_rate": 0.001, "model.hidden_sizes": [512], "train.extra": 1}
    recipe = {"train.epochs": 10, "train.learning_rate": 0.001, "model.hidden_sizes": [512, 512]}
    assert overrides(recipe, workspace) == ["++train.epochs=10", "++model.hidden_sizes=[512, 512]", "~train.extra"]
    assert overrides(recipe, recipe) == []


def scores(accuracy):
    return pd.DataFrame({"seed": [1, 2, 3], "accuracy": accuracy, "macro_f1": accuracy, "loss": [0.2, 0.2, 0.2]})


def test_the_section_says_the_words_the_numbers_and_whether_the_model_verdict_agrees():
    judgement = judge_recipe(scores([0.95, 0.94, 0.96]), scores(np.array([0.95, 0.94, 0.96]) - 0.04 + [0, 0.004, -0.004]),
                             POLICY)
    section = RecipeSection(seeds=[1, 2, 3], judgement=judgement, lines=["base: recipe `abc`, ..."],
                            figure="recipe_seeds.png", model_verdict="no detectable change")
    text = "\n".join(recipe_lines(section))
    assert text.startswith("### Recipe (3 seeds)")
    assert "**Recipe verdict: worse by more than matters** (accuracy -0.0400, macro F1 -0.0400); no detectable " \
           "change (loss +0.0000)." in text
    assert "The model verdict above says *no detectable change*" in text
    assert "| accuracy | higher | 0.9500 | 0.9100 | -0.0400 | -0.0499 to -0.0301 | 0.0040 | 0.025 | " \
           "**worse by more than matters** |" in text
    assert "| 2 | 0.9400 | 0.9040 | 0.9400 | 0.9040 | 0.2000 | 0.2000 |" in text
    assert "![Test scores per training seed](recipe_seeds.png)" in text
    assert "`recipe_seeds.png` in [the workflow run's artifacts](https://ci/run)" in \
        "\n".join(recipe_lines(section, inline_images=False, artifacts_url="https://ci/run"))
    agreeing = RecipeSection(seeds=[1, 2, 3], judgement=judgement, model_verdict="worse by more than matters")
    assert "The model verdict above agrees: worse by more than matters." in "\n".join(recipe_lines(agreeing))


def test_a_section_without_a_verdict_says_why():
    section = RecipeSection(seeds=[1, 2], problem="a recipe verdict needs at least 3 seeds per side (got 2): ...")
    assert recipe_lines(section) == ["### Recipe (2 seeds)", "",
                                     "No recipe verdict: a recipe verdict needs at least 3 seeds per side (got 2): ....",
                                     ""]


def test_fewer_than_three_seeds_are_refused_before_any_work(tmp_path, capsys):
    from pipeline.report.__main__ import main

    assert main(["--seeds", "2", "--out", str(tmp_path / "report")]) == 2
    assert "--seeds 2: a recipe verdict needs at least 3 seeds per side (got 2): with 2 seeds the paired t interval " \
           "has 1 degree of freedom" in capsys.readouterr().err
    # No report, only the status (`make` cannot tell 1 from 2).
    assert [path.name for path in (tmp_path / "report").iterdir()] == ["exit-status"]
    assert (tmp_path / "report" / "exit-status").read_text() == "2\n"


def test_ci_refuses_a_head_recipe_that_changes_the_split_before_training(tmp_path, default_params):
    # CI trains both recipes on the base's split, so a head with another `seed` is not paired there; nothing
    # trains (the base tree given holds no code: a training would fail with another message).
    head = tmp_path / "head"
    head.mkdir()
    (head / "params.yaml").write_text(yaml.safe_dump(default_params))
    for args in (["init", "-q"], ["add", "params.yaml"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "base"]):
        subprocess.run(["git", *args], cwd=head, check=True)
    (head / "params.yaml").write_text(yaml.safe_dump({**default_params, "seed": default_params["seed"] + 1}))
    empty = tmp_path / "base-tree"
    empty.mkdir()
    section = recipe_section(head, git(head, "rev-parse", "HEAD").stdout.strip(), POLICY, 3, tmp_path / "out",
                             base_tree=empty, prepared=empty)
    assert section.judgement is None and "changes the split" in section.problem


def test_an_experiment_counts_for_a_recipe_only_when_its_params_are_that_recipe(tmp_path, default_params):
    # A worker that trained the wrong params under the recipe's name (or a ref anyone pushed) is not believed.
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    recipe = recipe_of(default_params)
    for seed, rate in ((1, default_params["train"]["learning_rate"]), (2, 0.003)):
        params = {**default_params, "train": {**default_params["train"], "seed": seed, "learning_rate": rate}}
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        subprocess.run(["git", "add", "params.yaml"], cwd=repo, check=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m",
                        f"seed {seed}"], cwd=repo, check=True)
        sha = git(repo, "rev-parse", "HEAD").stdout.strip()
        subprocess.run(["git", "update-ref", f"refs/exps/ab/cdef/recipe-k1-seed-{seed}", sha], cwd=repo, check=True)
    assert sorted(found_experiments(repo, "k1")) == [1, 2]  # by name alone
    assert sorted(found_experiments(repo, "k1", recipe)) == [1]  # seed 2 trained another learning rate
