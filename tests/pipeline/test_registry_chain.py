"""The registry chained on loopback (issue 42.5): main's model is registered (what register.yml runs on a
push to main, in a clone of the origin), a retrain is judged against that version and opens its pull request
on the loopback forge (tests/forge_server.py), the branch is merged, the merge is registered as the next
version in prod, `gto show` and `gto history` list both, prod is rolled back with `gto assign`, the rolled-back
champion is fetched with `make champion`'s command and classifies an image, and the next retrain is judged
against the rolled-back champion, not main's model. A bare origin, a directory DVC remote; two trainings."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.registry import ARTIFACT
from pipeline.retrain.flow import PROMOTED, retrain
from pipeline.retrain.pull_request import API_ENV, REPO_ENV, TOKEN_ENV
from pipeline.run.stages import lock_md5
from tests.conftest import commit_all, dvc, git, run, write_params
from tests.forge_server import ForgeScript, fake_forge
from tests.pipeline.test_retrain_pull_request import TOKEN, artifacts_of

pytestmark = pytest.mark.slow
MODEL = "models/model.pth"
GTO = str(Path(sys.executable).parent / "gto")
# What .github/workflows/register.yml runs in its checkout of main.
REGISTER = [sys.executable, "-m", "pipeline.registry", "register", "--rev", "HEAD", "--push"]


def clone_of(origin: Path, folder: Path) -> Path:
    """A fresh clone of main with a committer (GTO's tags are annotated), as the workflow's checkout."""
    git(folder.parent, "clone", "--quiet", str(origin), str(folder))
    git(folder, "config", "user.email", "ci@example.invalid")
    git(folder, "config", "user.name", "ci")
    return folder


def gto(repo: Path, *args: str) -> str:
    return run([GTO, *args], cwd=repo).stdout


def md5_at(repo: Path, rev: str) -> str:
    return lock_md5(yaml.safe_load(git(repo, "show", f"{rev}:dvc.lock")), MODEL)


def champion_accuracy(report: str) -> str:
    """The champion's accuracy in the retrain-comparison table (4 decimals)."""
    return re.search(r"^\| accuracy \| (\d\.\d{4}) \|", report, re.M)[1]


def test_a_merged_promotion_is_registered_rolled_back_and_the_next_retrain_faces_the_rolled_back_champion(
        reproduced_project, tmp_path, prefect_harness, monkeypatch):
    team = reproduced_project
    dvc(team, "remote", "add", "-d", "storage", str(tmp_path / "store"))
    write_params(team, **{"train.epochs": 3})  # main asks for more than its one-epoch champion had
    commit_all(team, "a directory DVC remote; train longer")
    dvc(team, "push", "-q")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(team), str(origin))
    first_md5 = md5_at(origin, "main")

    # The workflow on main's first push: v0.1.0 in prod; run again, nothing new.
    ci = clone_of(origin, tmp_path / "ci")
    assert "registered classifier v0.1.0" in run(REGISTER, cwd=ci).stdout
    assert "no new version" in run(REGISTER, cwd=ci).stdout
    assert set(git(origin, "tag", "--list").split()) == {f"{ARTIFACT}@v0.1.0", f"{ARTIFACT}#prod#1"}

    for key, value in {API_ENV: "", REPO_ENV: "octo/models", TOKEN_ENV: TOKEN}.items():
        monkeypatch.setenv(key, value)
    with fake_forge(ForgeScript(token=TOKEN)) as forge:
        monkeypatch.setenv(API_ENV, forge.api)
        first = retrain(repo=str(origin), base="main", workspace_root=str(tmp_path / "ws"))
        assert first["result"] == PROMOTED and first["champion_version"] == "v0.1.0", first
        [pull] = forge.script.pulls
    branch = first["branch"]
    assert pull["head"]["ref"] == branch
    assert pull["body"].startswith(f"# Retrain against the champion at `{ARTIFACT}@v0.1.0` ({ARTIFACT}#prod, commit ")
    verdict = next(line for line in git(origin, "log", "-1", "--format=%B", branch).splitlines()
                   if line.startswith("Verdict: "))

    # A person merges; the push to main runs the workflow: v0.2.0, in prod, says what it is and why.
    git(origin, "update-ref", "refs/heads/main", f"refs/heads/{branch}")
    promoted_md5 = md5_at(origin, "main")
    assert promoted_md5 != first_md5
    ci = clone_of(origin, tmp_path / "ci-after-merge")
    assert "registered classifier v0.2.0" in run(REGISTER, cwd=ci).stdout
    git(ci, "fetch", "--quiet", "--tags", "origin")
    message = git(ci, "tag", "--list", "--format=%(contents)", f"{ARTIFACT}@v0.2.0")
    assert f"{MODEL} md5 {promoted_md5}" in message
    assert "params changed since v0.1.0: train.epochs 1 -> 3" in message
    assert f"verdict: {verdict.removeprefix('Verdict: ')}" in message
    assert "test split: sha256:" in message
    assert gto(ci, "show", f"{ARTIFACT}#prod", "--version").strip() == "v0.2.0"
    history = gto(ci, "history", ARTIFACT)
    assert all(tag in history for tag in (f"{ARTIFACT}@v0.1.0", f"{ARTIFACT}@v0.2.0", f"{ARTIFACT}#prod#2"))

    # Rollback: GTO's own command (--force: v0.1.0 held prod before), pushed; the tags' times order them.
    time.sleep(1.1)
    gto(ci, "assign", ARTIFACT, "--version", "v0.1.0", "--stage", "prod", "--force", "--push")
    assert gto(ci, "show", f"{ARTIFACT}#prod", "--version").strip() == "v0.1.0"
    assert "no new version" in run(REGISTER, cwd=ci).stdout  # main's model is still v0.2.0's: prod stays put

    # The rolled-back champion, fetched anywhere (make champion's command) and classifying an image.
    fetched = run([sys.executable, "-m", "pipeline.registry", "fetch", "--out", str(tmp_path / "champion")], cwd=ci)
    assert f"{ARTIFACT}@v0.1.0" in fetched.stdout
    card = json.loads((tmp_path / "champion/model.json").read_text())
    run([sys.executable, "-m", "classifier.data.export_folder", str(tmp_path / "digits"), "--stop", "1"], cwd=ci)
    image = next((tmp_path / "digits").rglob("*.png"))
    predicted = run([sys.executable, "-m", "classifier.training.predict", str(tmp_path / "champion/model.pth"), str(image)], cwd=ci)
    assert predicted.stdout.split("\t")[1] in card["classes"]
    assert dvc(ci, "artifacts", "get", ".", ARTIFACT, "--rev", "v0.1.0", "-o", str(tmp_path / "by-dvc.pth")).returncode == 0
    assert (tmp_path / "by-dvc.pth").read_bytes() == (tmp_path / "champion/model.pth").read_bytes()

    # main changes again (two epochs): the next retrain is judged against v0.1.0, the one in prod, not main's v0.2.0.
    write_params(ci, **{"train.epochs": 2})
    commit_all(ci, "train two epochs")
    git(ci, "push", "--quiet", "origin", "HEAD:main")
    second = retrain(repo=str(origin), base="main", workspace_root=str(tmp_path / "ws"), return_state=True)
    result = second.result()
    assert result["champion_version"] == "v0.1.0", result
    [artifact] = [item for item in artifacts_of(second) if item["key"] == "retrain-comparison"]
    assert artifact["data"].startswith(f"# Retrain against the champion at `{ARTIFACT}@v0.1.0`")
    first_accuracy = json.loads(git(origin, "show", f"{ARTIFACT}@v0.1.0:metrics/metrics.json"))["test"]["accuracy"]
    assert champion_accuracy(artifact["data"]) == f"{first_accuracy:.4f}"
