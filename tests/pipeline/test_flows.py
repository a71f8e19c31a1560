"""train_pipeline and the DVC stage runner: real dvc, a real (temporary) Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.stages import (
    RAN,
    SKIPPED,
    PipelineError,
    outcome_of,
    read_stage_graph,
    run_stage,
    stage_order,
    stages_until,
)
from tests.conftest import PROJECT_ROOT, commit_all, dvc, git, subprocess_env


def test_stage_order_comes_from_the_graph_not_the_file_order(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  last:\n    cmd: cat b > c\n    deps: [b]\n    outs: [c]\n"
        "  first:\n    cmd: echo > a\n    outs: [a]\n"
        "  middle:\n    cmd: cat a > b\n    deps: [a]\n    outs: [{b: {cache: false}}]\n"
    )
    graph = read_stage_graph(tmp_path)
    assert stage_order(graph) == ["first", "middle", "last"]
    assert stages_until(stage_order(graph), graph, "middle") == ["first", "middle"]


def test_project_stage_order_ends_with_train_evaluate_save():
    order = stage_order(read_stage_graph(PROJECT_ROOT))
    assert order.index("download") < order.index("prepare") < order.index("train")
    assert order[-2:] == ["evaluate", "save"]


def test_unknown_stage_and_missing_dvc_yaml_are_clear_errors(tmp_path):
    graph = read_stage_graph(PROJECT_ROOT)
    with pytest.raises(PipelineError, match="unknown stage 'trian'.*train"):
        stages_until(stage_order(graph), graph, "trian")
    with pytest.raises(PipelineError, match="no dvc.yaml"):
        read_stage_graph(tmp_path)


def test_outcome_is_read_from_dvc_output():
    assert outcome_of("train", ["Running stage 'train':", "> python ..."]) == (RAN, "re-executed")
    assert outcome_of("train", ["Stage 'train' didn't change, skipping"])[0] == SKIPPED
    assert outcome_of("train", ["Stage 'train' is cached - skipping run, checking out outputs"])[0] == SKIPPED


@pytest.mark.slow
def test_timeout_kills_the_stage_process_group(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    sleeper = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(120)"
    (repo / "dvc.yaml").write_text(f'stages:\n  sleep:\n    cmd: python -c "{sleeper}"\n    outs: [never]\n')
    with pytest.raises(PipelineError, match="'sleep' ran past its timeout"):
        run_stage(repo, "sleep", lambda line: None, timeout_s=8)
    pid = int((repo / "pid").read_text())
    for _ in range(50):  # the group got SIGTERM; give the kernel a moment to reap it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's python (pid {pid}) outlived the timeout")


def flow_artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in artifacts}


def task_run_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name for run in runs}


@pytest.mark.slow
def test_flow_runs_every_stage_then_skips_them_and_pins_the_device(project, prefect_harness):
    from pipeline.flows import train_pipeline

    state = train_pipeline(project_dir=str(project), device="cpu", return_state=True)
    assert state.is_completed(), state.message
    first = state.result()
    assert set(first["stages"].values()) == {RAN}
    card = json.loads((project / "models/model.json").read_text())
    assert card["trained_on"] == "cpu" and first["model_sha256"] == card["sha256"]
    assert "--device cpu" in yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]["cmd"]
    artifacts = flow_artifacts(state.state_details.flow_run_id)
    assert {"metrics", "pipeline-run"} <= set(artifacts)
    assert "test.accuracy" in json.dumps(artifacts["metrics"].data)
    assert card["sha256"] in artifacts["pipeline-run"].data

    again = train_pipeline(project_dir=str(project), device="cpu")
    assert set(again["stages"].values()) == {SKIPPED}
    assert dvc(project, "status", "--json").stdout.strip() == "{}"

    # Unpinning changes the train command, so DVC reruns train; its checkpoint comes out
    # byte-identical on the same machine, and DVC skips what reads it.
    unpinned = train_pipeline(project_dir=str(project), device="auto")
    assert unpinned["stages"]["train"] == RAN and unpinned["stages"]["prepare"] == SKIPPED


@pytest.mark.slow
def test_a_failing_stage_fails_the_flow_and_later_stages_do_not_run(project, prefect_harness):
    from pipeline.flows import train_pipeline

    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace(
        "cmd: python -m classifier.prepare data/raw data/prepared",
        "cmd: python -c \"import sys; print('prepare blew up on purpose'); sys.exit(3)\"",
    ))
    commit_all(project, "a prepare stage that fails")
    state = train_pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(PipelineError, match=r"(?s)stage 'prepare' failed \(exit \d+\).*blew up on purpose"):
        state.result()
    names = task_run_names(state.state_details.flow_run_id)
    assert "prepare" in names and not names & {"train", "evaluate", "save"}


def test_bad_device_and_unreachable_server_are_clear_errors(tmp_path):
    env = subprocess_env(PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--project", str(PROJECT_ROOT)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unreachable" in result.stderr and "make server" in result.stderr
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--device", "tpu"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "tpu" in result.stderr
