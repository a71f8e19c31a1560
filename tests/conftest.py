"""Shared fixtures: tiny data built in tmp_path, and temporary git copies of the project."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.run.stages import stage_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def tiny_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights up row block k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4 : 2 * label + 7, 4:24] = 250
    return images, labels.astype(np.int64)


def idx_bytes(array: np.ndarray) -> bytes:
    """The MNIST family's IDX format, gzip'd with a fixed mtime so the bytes are stable."""
    header = np.array([0x0800 | array.ndim, *array.shape], dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def subprocess_env(**extra: str) -> dict:
    """The environment the flows give DVC and git (pipeline.run.stages.stage_env), plus `extra`."""
    return stage_env(extra)


def run(args, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=project, check=check)


def git(project: Path, *args: str) -> str:
    return run(["git", *args], cwd=project).stdout


def write_params(project: Path, **changes) -> None:
    """Set dotted keys, e.g. write_params(p, **{"train.epochs": 1})."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        section = params
        for key in parents:
            section = section[key]
        section[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_plots_template(destination: Path) -> None:
    """The offline `dvc plots` page .dvc/config points at: generated and git-ignored, so not in ls-files."""
    from classifier.plots_template import DEFAULT_PATH, write_template

    template = PROJECT_ROOT / DEFAULT_PATH
    if not template.is_file():
        write_template(template)
    (destination / DEFAULT_PATH).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template, destination / DEFAULT_PATH)


def copy_project(destination: Path) -> Path:
    """A fresh git repo holding the project's files as git sees them (tracked and not ignored) (no venv, data, models or DVC cache)."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for relative in filter(None, tracked.decode().split("\0")):
        source = PROJECT_ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    copy_plots_template(destination)
    git(destination, "init", "-q", "-b", "main")
    git(destination, "config", "user.email", "tests@example.invalid")
    git(destination, "config", "user.name", "tests")
    return destination


def commit_all(project: Path, message: str) -> None:
    """Commit the whole tree; also when a run changed nothing (a copy's results are already committed)."""
    git(project, "add", "-A")
    git(project, "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git copy of the project set to train one epoch, committed, nothing run yet."""
    root = copy_project(tmp_path / "project")
    write_params(root, **{"train.epochs": 1, "save.min_accuracy": 0.5})
    commit_all(root, "one-epoch copy")
    return root


@pytest.fixture(scope="session")
def reproduced_template(tmp_path_factory) -> Path:
    """One one-epoch copy of the project after a full `dvc repro`, committed; built once per session."""
    root = copy_project(tmp_path_factory.mktemp("template") / "project")
    write_params(root, **{"train.epochs": 1, "save.min_accuracy": 0.5})
    dvc(root, "repro")
    commit_all(root, "one-epoch baseline run")
    return root


@pytest.fixture
def reproduced_project(reproduced_template: Path, tmp_path: Path) -> Path:
    """A private copy of the reproduced template (workspace, git history and DVC cache)."""
    return Path(shutil.copytree(reproduced_template, tmp_path / "project", symlinks=True))
