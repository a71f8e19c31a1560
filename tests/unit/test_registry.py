"""The registry is GTO's tags (pipeline/registry.py): `register` makes the next version and assigns prod when
the model's md5 in dvc.lock changed, and nothing when it did not; the tag carries the md5, the data, the params
change and the retrain's verdict; the champion is what `gto show classifier#prod` says, so a rollback with
`gto assign` moves it. A git repo with hand-written dvc.lock files and the real `gto`; no DVC run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import registry
from pipeline.registry import ARTIFACT, RegistryError, champion, champion_note, latest, register
from tests.conftest import git, run

GTO = str(Path(sys.executable).parent / "gto")


def gto(repo: Path, *args: str):
    """The `gto` CLI, as a user types it."""
    return run([GTO, *args], cwd=repo, check=False)


def lock(model_md5: str, epochs: int = 1) -> dict:
    return {"schema": "2.0", "stages": {
        "snapshot": {"outs": [{"path": "data/snapshot.csv", "md5": "snap0"}]},
        "train": {"params": {"params.yaml": {"seed": 42, "train": {"epochs": epochs, "lr": 0.001}}},
                  "outs": [{"path": "models/candidate.pth", "md5": "cand"}]},
        "save": {"outs": [{"path": "models/model.pth", "md5": model_md5}, {"path": "models/model.json", "md5": "card"}]}}}


def commit(repo: Path, model_md5: str, message: str, epochs: int = 1) -> str:
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock(model_md5, epochs)))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/evaluation.json").write_text(json.dumps(
        {"dataset": "mnist-5k", "test_fingerprint": "sha256:abc", "test_samples": 1051}))
    (repo / "metrics/metrics.json").write_text(json.dumps({"test": {"accuracy": 0.95}}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "tests@example.invalid")
    git(root, "config", "user.name", "tests")
    return root


def tag_message(repo: Path, tag: str) -> str:
    return git(repo, "tag", "--list", "--format=%(contents)", tag)


def test_register_names_each_new_model_once_and_the_champion_follows_gto(repo):
    first = commit(repo, "aaa111", "the first model")
    tags, line = register(repo)
    assert tags == [f"{ARTIFACT}@v0.1.0", f"{ARTIFACT}#prod#1"], line
    message = tag_message(repo, f"{ARTIFACT}@v0.1.0")
    assert "models/model.pth md5 aaa111" in message and "data/snapshot.csv md5 snap0" in message
    assert "sha256:abc (1051 images)" in message and "params: the first registered version" in message
    assert champion(repo).version == "v0.1.0" and champion(repo).commit == first
    assert champion_note(repo) == [f"The registry's champion ({ARTIFACT}#prod, what a retrain is judged against): "
                                   f"{ARTIFACT} v0.1.0 ({ARTIFACT}@v0.1.0, commit {first[:7]})."]

    # Idempotent: the same model again (a docs-only merge) makes no version.
    commit(repo, "aaa111", "docs only")
    assert register(repo)[0] == []

    second = commit(repo, "bbb222", "Retrain: new model\n\nVerdict: better (accuracy +0.0100)\n", epochs=3)
    tags, _ = register(repo)
    assert tags == [f"{ARTIFACT}@v0.2.0", f"{ARTIFACT}#prod#2"]
    message = tag_message(repo, f"{ARTIFACT}@v0.2.0")
    assert "params changed since v0.1.0: train.epochs 1 -> 3" in message
    assert "verdict: better (accuracy +0.0100)" in message
    assert champion(repo).commit == second and latest(repo).version == "v0.2.0"
    # GTO orders assignments by their tags' whole-second times: the second must not share the first's second.
    times = [int(tag_time) for tag_time in git(repo, "tag", "--list", "--format=%(taggerdate:unix)",
                                                 f"{ARTIFACT}#prod#1", f"{ARTIFACT}#prod#2").split()]
    assert times[0] < times[1], times

    # A rollback is GTO's own assignment (--force: v0.1.0 held prod before); the tags' times order them.
    time.sleep(1.1)
    done = gto(repo, "assign", ARTIFACT, "--version", "v0.1.0", "--stage", "prod", "--force")
    assert done.returncode == 0, done.stderr
    assert champion(repo).version == "v0.1.0" and champion(repo).commit == first
    assert register(repo)[0] == []  # main's model is still v0.2.0's: no new version, prod stays rolled back
    assert champion(repo).version == "v0.1.0"
    shown = gto(repo, "show", "--plain").stdout
    assert "v0.2.0" in shown and "v0.1.0" in shown


def test_a_version_registered_without_its_stage_gets_it_on_the_next_run(repo):
    commit(repo, "aaa111", "first")
    assert gto(repo, "register", ARTIFACT, "HEAD", "--version", "v0.1.0").returncode == 0  # then the run died
    tags, line = register(repo)
    assert tags == [f"{ARTIFACT}#prod#1"], line
    assert champion(repo).version == "v0.1.0"


def test_no_champion_before_the_first_registration_and_no_model_is_an_error(repo):
    commit(repo, "aaa111", "first")
    assert champion(repo) is None and latest(repo) is None and champion_note(repo) == []
    (repo / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {}}))
    git(repo, "commit", "-qam", "no model")
    with pytest.raises(RegistryError, match="records no models/model.pth"):
        register(repo)


def test_register_pushes_its_tags_to_origin(repo, tmp_path, capsys):
    commit(repo, "aaa111", "first")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    assert registry.main(["--repo", str(repo), "register", "--push"]) == 0
    assert set(git(origin, "tag", "--list").split()) == {f"{ARTIFACT}@v0.1.0", f"{ARTIFACT}#prod#1"}
    assert registry.main(["--repo", str(repo), "register", "--push"]) == 0
    assert "no new version" in capsys.readouterr().out


def test_the_register_workflow_runs_on_main_only_and_may_write_tags_only():
    workflow = yaml.safe_load((Path(__file__).resolve().parents[2] / ".github/workflows/register.yml").read_text())
    assert workflow[True] == {"push": {"branches": ["main"]}}  # PyYAML reads the bare key `on` as True
    assert workflow["permissions"] == {} and workflow["concurrency"]["cancel-in-progress"] is False
    [job] = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "write"}
    steps = job["steps"]
    assert all(len(step["uses"].split("@")[1]) == 40 for step in steps if "uses" in step)  # pinned to a commit
    assert any("python -m pipeline.registry register --rev HEAD --push" in step.get("run", "") for step in steps)
