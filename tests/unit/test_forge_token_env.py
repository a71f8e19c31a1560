"""The forge token reaches no subprocess of a retrain: every `subprocess` call in pipeline/retrain/ and
pipeline/device.py names its environment (read from the source), and the ones that do not go through
stage_env are seen without the token when run."""

from __future__ import annotations

import ast
import subprocess

import pytest

from pipeline import device
from pipeline.retrain import workspace
from tests.conftest import PROJECT_ROOT

TOKEN_ENV = "CLASSIFIER_FORGE_TOKEN"
SPAWNING = {"run", "Popen", "call", "check_call", "check_output"}


def subprocess_calls_without_env(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SPAWNING
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                and not any(keyword.arg == "env" for keyword in node.keywords)):
            found.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    return found


def test_every_subprocess_of_a_retrain_names_its_environment():
    paths = [*sorted((PROJECT_ROOT / "pipeline" / "retrain").glob("*.py")), PROJECT_ROOT / "pipeline" / "device.py"]
    assert not [line for path in paths for line in subprocess_calls_without_env(path)]


@pytest.fixture
def seen_envs(monkeypatch) -> list[dict]:
    """Every environment a subprocess is started with, the token set in ours."""
    monkeypatch.setenv(TOKEN_ENV, "ghp_never_in_a_subprocess")
    envs = []

    def record(args, **options):
        envs.append(options.get("env"))
        return subprocess.CompletedProcess(args, 0, stdout="False\n", stderr="")
    monkeypatch.setattr(subprocess, "run", record)
    return envs


def test_the_git_calls_of_the_workspace_and_the_device_probe_run_without_the_token(seen_envs, tmp_path):
    workspace.work_tree(str(tmp_path))
    workspace.close_workspace(tmp_path / "retrain-gone", tmp_path)
    workspace.remove_stale_workspaces(tmp_path, tmp_path)
    with pytest.raises(device.DeviceError):
        device.require_device("cuda")
    assert len(seen_envs) == 4
    assert all(env is not None and TOKEN_ENV not in env and "PATH" in env for env in seen_envs)
