"""Nothing lost: interrupted and concurrent runs against the real `dvc repro`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from classifier.files import file_digest
from tests.conftest import assert_up_to_date, dvc, subprocess_env, write_params

pytestmark = pytest.mark.slow

EPOCHS = 5
PAUSE_HOOK = Path(__file__).with_name("pause_after_checkpoint")


def start_repro(project, pause_marker: Path | None = None) -> subprocess.Popen:
    """`dvc repro` in a session of its own, so a kill reaches dvc and the stage it started.
    With `pause_marker`, its train stage stops itself after its first resume checkpoint."""
    extra = {"PYTHONPATH": str(PAUSE_HOOK), "PAUSE_AFTER_CHECKPOINT_MARKER": str(pause_marker)} if pause_marker else {}
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=subprocess_env(**extra),
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
    marker = tmp_path / "paused"
    process = start_repro(project, pause_marker=marker)
    try:
        wait_for(lambda: marker.exists() or process.poll() is not None)
        assert process.poll() is None, process.communicate()[0]
        os.killpg(process.pid, signal.SIGKILL)  # mid-training: one epoch of EPOCHS checkpointed
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


def test_two_repros_in_one_workspace_never_corrupt_an_output(reproduced_project, tmp_path):
    project = reproduced_project
    write_params(project, **{"train.epochs": 3})
    marker = tmp_path / "paused"
    first = start_repro(project, pause_marker=marker)
    try:
        wait_for(lambda: marker.exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()[0]
        # The first run is certainly inside its train stage now, holding DVC's locks.
        second = start_repro(project)
        loser = second.communicate(timeout=300)[0]
        assert second.returncode != 0
        assert "Unable to acquire lock" in loser or "is busy, it is being blocked by" in loser, loser
    finally:
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGCONT)
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    assert_up_to_date(project)
    card = json.loads((project / "models/model.json").read_text())
    assert card["sha256"] == file_digest(project / "models/model.pth")
    assert card["params"]["train"]["epochs"] == 3
    assert dvc(project, "repro").returncode == 0  # and no stale lock is left behind
