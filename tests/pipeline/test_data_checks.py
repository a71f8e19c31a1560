"""The data checks before training under real `dvc repro` and the retrain loop: a blocking finding stops prepare,
nothing trains, metrics/data_checks.json says which files and why, and a retrain ends `blocked`, not Failed; the
same images in a copy of the project elsewhere give the same dvc.lock."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml
from PIL import Image

from classifier.data.export_folder import export
from classifier.files import file_digest, sha256_bytes
from classifier.params import load_params
from classifier.data.prepare import assign_splits
from pipeline.retrain.flow import BLOCKED, KEPT_EVENT, retrain
from tests.conftest import commit_all, copy_project, dvc, git, write_params
from tests.pipeline.test_retrain import events_of, retrain_branches
from tests.pipeline.test_retrain_on_new_data import champion_on_a_folder

pytestmark = pytest.mark.slow


def leak_a_picture(tree, project) -> tuple[str, str]:
    """Save one more picture as .png under class 3 and as .bmp under class 5, the two files' hashes in two
    different splits of the project's seed: the same pixels in train and test (or val)."""
    params = load_params(project / "params.yaml")
    for shade in range(256):
        png, bmp = tree / "3" / f"leak-{shade}.png", tree / "5" / f"leak-{shade}.bmp"
        picture = Image.new("L", (28, 28), shade)
        picture.save(png)
        picture.save(bmp)
        hashes = [sha256_bytes(png.read_bytes()), sha256_bytes(bmp.read_bytes())]
        if len(set(assign_splits(hashes, params.seed, params.data))) == 2:
            return f"3/{png.name}", f"5/{bmp.name}"
        png.unlink()
        bmp.unlink()
    raise AssertionError("no shade fell in two splits")


def test_a_leaking_folder_is_blocked_before_training_and_warn_lets_it_train(project, tmp_path):
    tree = tmp_path / "digits"
    champion_on_a_folder(project, tree, 300)
    model = file_digest(project / "models/candidate.pth")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]

    png, bmp = leak_a_picture(tree, project)
    (tree / "7" / "notes.png").write_text("not a picture")
    failed = dvc(project, "repro", check=False)
    assert failed.returncode != 0 and "Running stage 'train'" not in failed.stdout
    [line] = [text for text in (failed.stdout + failed.stderr).splitlines() if "data checks block training" in text]
    assert f"{tree}/{png}" in line and f"{tree}/{bmp}" in line and "same pixels" in line
    assert f"broken (checks.broken: block): 1 file(s) that do not decode: {tree}/7/notes.png: not an image" in line
    report = json.loads((project / "metrics/data_checks.json").read_text())
    assert report["blocked"] and report["checks"]["leakage"]["count"] == 1 and report["rejected"] == 1
    assert file_digest(project / "models/candidate.pth") == model
    after = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert all(after[stage] == lock[stage] for stage in ("prepare", "train", "evaluate", "save"))

    write_params(project, **{"checks.leakage": "warn", "checks.broken": "warn"})
    ran = dvc(project, "repro")
    assert "Running stage 'train'" in ran.stdout
    report = json.loads((project / "metrics/data_checks.json").read_text())
    assert not report["blocked"] and report["checks"]["leakage"]["status"] == "warn" and report["images"] == 302
    assert "metrics/data_checks.json" in git(project, "status", "--porcelain")  # git-tracked, like metrics.json
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]["params"]["params.yaml"][
        "checks"]["leakage"] == "warn"


def test_the_same_images_in_a_copy_elsewhere_give_the_same_dvc_lock(tmp_path):
    projects = []
    for name in ("here", "elsewhere/deeper"):
        root = copy_project(tmp_path / name)
        write_params(root, **{"data.dataset": "folder", "data.folder": "images"})
        commit_all(root, "a folder inside the project")
        projects.append(root)
    export(projects[0] / "images", 0, 200)
    shutil.copytree(projects[0] / "images", projects[1] / "images", copy_function=shutil.copy,
                    dirs_exist_ok=True)  # new times, inodes
    for root in projects:
        dvc(root, "repro", "prepare")
    locks = [yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in projects]
    for stage in ("snapshot", "download", "prepare"):
        assert locks[0][stage] == locks[1][stage], stage
    assert (projects[0] / "metrics/data_checks.json").read_bytes() == (projects[1] / "metrics/data_checks.json").read_bytes()


@pytest.fixture
def champion(reproduced_project):
    commit_all(reproduced_project, "champion")
    return reproduced_project


def test_a_retrain_the_data_checks_block_ends_blocked_not_failed(champion, tmp_path, prefect_harness):
    # A policy that every class of MNIST-5k fails: prepare reruns (its params changed) and blocks.
    write_params(champion, **{"checks.small_class": "block", "checks.min_images_per_class": 100_000})
    commit_all(champion, "every class is too small")
    state = retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"), return_state=True)
    assert state.is_completed() and state.name == "Blocked"
    result = state.result()
    assert result["result"] == BLOCKED and result["branch"] is None
    assert result["reason"].startswith("blocked: data checks block training: small_class (checks.small_class: "
                                       "block): 10 class(es) with fewer than 100000 images")
    [kept] = events_of(state, KEPT_EVENT)
    assert kept["payload"]["outcome"] == BLOCKED and kept["payload"]["reason"] == result["reason"]
    assert retrain_branches(champion) == []
    # The run's data-checks artifact (pipeline.run.flow) shows the findings of the blocked run.
    from prefect.settings import PREFECT_API_URL

    found = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter",
                       json={"artifacts": {"key": {"any_": ["data-checks"]}}}).raise_for_status().json()
    assert any("| small_class | block | **block** |" in (item.get("data") or "") for item in found)
