"""Nothing lost: interrupted and concurrent runs against the real `dvc repro`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from classifier.files import file_digest
from tests.conftest import dvc, subprocess_env, write_params

pytestmark = pytest.mark.slow

EPOCHS = 20  # long enough that the kill lands mid-training on a fast, quiet machine


def start_repro(project) -> subprocess.Popen:
    # Its own session, so the kill reaches dvc and the stage process it started.
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def locked_stages(project) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def wait_for(condition, timeout: float = 120.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def test_sigkill_during_training_loses_nothing_and_the_rerun_resumes(reproduced_project, reproduced_template, tmp_path):
    import shutil

    project = reproduced_project
    reference = shutil.copytree(reproduced_template, tmp_path / "reference", symlinks=True)
    for root in (project, reference):
        write_params(root, **{"train.epochs": EPOCHS, "train.checkpoint_every": 1})
    dvc(reference, "repro")  # the uninterrupted run to compare with

    published = file_digest(project / "models/model.pth")
    lock = locked_stages(project)
    resume_dir = project / ".cache/train-resume"
    process = start_repro(project)
    try:
        wait_for(lambda: resume_dir.is_dir() and any(resume_dir.glob("train-*.pt")))
        time.sleep(0.05)  # into the next epoch
        assert process.poll() is None, "training finished before it could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert file_digest(project / "models/model.pth") == published
    # validate ran to completion and recorded the new params; what train would publish did not move.
    after = locked_stages(project)
    assert {name: after[name] for name in ("train", "evaluate", "save")} == {
        name: lock[name] for name in ("train", "evaluate", "save")}

    rerun = dvc(project, "repro")
    assert "resuming from epoch" in rerun.stderr + rerun.stdout
    assert f"epoch 1/{EPOCHS}" not in rerun.stderr + rerun.stdout
    assert file_digest(project / "models/model.pth") == file_digest(reference / "models/model.pth")
    assert (project / "metrics/metrics.json").read_bytes() == (reference / "metrics/metrics.json").read_bytes()
    assert not any(resume_dir.glob("train-*.pt"))  # spent once the run is complete


def test_two_repros_in_one_workspace_never_corrupt_an_output(reproduced_project):
    project = reproduced_project
    write_params(project, **{"train.epochs": 3})
    first, second = start_repro(project), start_repro(project)
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    codes = [first.returncode, second.returncode]
    assert 0 in codes
    if codes != [0, 0]:  # one of them lost the race for DVC's locks and said so
        loser = outputs[codes.index(next(code for code in codes if code != 0))]
        assert "Unable to acquire lock" in loser or "is busy, it is being blocked by" in loser, loser
    assert "up to date" in dvc(project, "status").stdout
    card = json.loads((project / "models/model.json").read_text())
    assert card["sha256"] == file_digest(project / "models/model.pth")
    assert card["params"]["train"]["epochs"] == 3
    assert dvc(project, "repro").returncode == 0  # and no stale lock is left behind
