"""train_pipeline and the DVC runner: real dvc, a real (temporary) Prefect API, and the
project's own background server through `python -m pipeline`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.run.stages import RAN, RESTORED, SKIPPED, PipelineError, StageFailed, outcomes, repro
from tests.conftest import PROJECT_ROOT, commit_all, dvc, git, subprocess_env, write_params


def test_only_dvcs_own_didnt_change_counts_as_skipped():
    lines = [
        "Stage 'validate' didn't change, skipping",
        "Stage 'prepare' is cached - skipping run, checking out outputs",
        "Running stage 'train':",
        "> python -m classifier.training.train ...",
        "Stage 'evaluate' is cached - skipping run, checking out outputs",
        "Running stage 'evaluate':",  # a wording DVC may add later must not weaken a run
    ]
    found = {r.name: r.outcome for r in outcomes(lines, expected=["validate", "prepare", "train", "evaluate", "save"])}
    assert found == {"validate": SKIPPED, "prepare": RESTORED, "train": RAN, "evaluate": RAN,
                     "save": RAN}  # never named: counted as changed, not as skipped


def one_stage_repo(tmp_path: Path, stage: str, code: str) -> Path:
    """A git + DVC repo whose only stage runs `python -c code`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    (repo / "dvc.yaml").write_text(f'stages:\n  {stage}:\n    cmd: python -c "{code}"\n    outs: [never]\n')
    return repo


@pytest.mark.slow
def test_timeout_kills_the_stage_process_group(tmp_path):
    repo = one_stage_repo(tmp_path, "sleep", "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(120)")
    with pytest.raises(PipelineError, match="dvc repro ran past its timeout"):
        repro(repo, lambda line: None, timeout_s=8)
    pid = int((repo / "pid").read_text())
    for _ in range(50):  # the group got SIGTERM; give the kernel a moment to reap it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's python (pid {pid}) outlived the timeout")


@pytest.mark.slow
def test_a_failed_stage_names_itself_and_its_commands_exit_status(tmp_path):
    repo = one_stage_repo(tmp_path, "check", "import sys; print('bad input, x must be positive', file=sys.stderr); sys.exit(2)")
    with pytest.raises(StageFailed, match=r"(?s)stage 'check' failed \(exit 2\):\nbad input, x must be positive") as error:
        repro(repo, lambda line: None, timeout_s=60)
    assert error.value.stage == "check" and error.value.exit_code == 2


def flow_artifacts(flow_run_id) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in artifacts}


def stage_tasks(flow_run_id) -> list[tuple[str, str, list[str]]]:
    """The flow run's task runs in the order they started: (name, state name, log lines)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are sent in batches: send this run's before reading them
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        runs = sorted(runs, key=lambda run: run.start_time)
        return [(run.name, run.state.name, [log.message for log in client.read_logs(
                    log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[run.id])), sort=LogSort.TIMESTAMP_ASC)])
                for run in runs]


@pytest.mark.slow
def test_flow_runs_every_stage_then_skips_them_and_leaves_git_clean(project, prefect_harness):
    from pipeline.run.flow import train_pipeline

    state = train_pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    first = state.result()
    decided = dict(first["stages"])  # in the order DVC named them
    # snapshot lists the data folder on every command (always_changed): never counted as a change itself.
    assert first["stages"].pop("snapshot") == SKIPPED
    assert set(first["stages"].values()) == {RAN}
    card = json.loads((project / "models/model.json").read_text())
    assert first["model_sha256"] == card["sha256"] and first["model_path"] == "models/model.pth"
    # One task run per stage, in DVC's order, named after it, its state named after DVC's decision, its log DVC's lines.
    tasks = stage_tasks(state.state_details.flow_run_id)
    assert [(name, state_name) for name, state_name, _ in tasks] == [
        (stage, outcome.capitalize()) for stage, outcome in decided.items()]
    assert list(decided)[:3] == ["validate", "snapshot", "download"] and len(tasks) == 7
    train_log = dict((name, log) for name, _, log in tasks)["train"]
    assert train_log[0].startswith("Running stage 'train':") and any(line.startswith("> python -m classifier.training.train")
                                                                      for line in train_log)
    artifacts = flow_artifacts(state.state_details.flow_run_id)
    assert {"metrics", "pipeline-run"} <= set(artifacts)
    assert "test.accuracy" in json.dumps(artifacts["metrics"].data)
    assert card["sha256"] in artifacts["pipeline-run"].data
    commit_all(project, "first run")

    again_state = train_pipeline(project_dir=str(project), return_state=True)
    again = again_state.result()
    assert set(again["stages"].values()) == {SKIPPED} and again["changed"] == []
    assert {state_name for _, state_name, _ in stage_tasks(again_state.state_details.flow_run_id)} == {"Skipped"}
    assert git(project, "status", "--porcelain") == ""  # a plain run writes no tracked file

    # Asking for a device class is a params change, and so part of DVC's cache key: train
    # reruns (on the same CPU, to the same bytes); nothing upstream of it does.
    pinned = train_pipeline(project_dir=str(project), device="cpu")
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["device"] == "cpu"
    assert pinned["stages"]["train"] == RAN and pinned["stages"]["prepare"] == SKIPPED
    assert pinned["model_sha256"] == first["model_sha256"]


@pytest.mark.slow
def test_a_params_round_trip_ends_with_the_first_runs_results(reproduced_project, prefect_harness):
    """0.1 -> 0.2 -> 0.1: DVC restores prepare from its run-cache, and everything after it must follow."""
    from pipeline.run.flow import train_pipeline

    project = reproduced_project  # trained once already: the first run finds it up to date
    train_pipeline(project_dir=str(project))
    first_metrics = (project / "metrics/metrics.json").read_text()
    first_model = json.loads((project / "models/model.json").read_text())["sha256"]
    params = (project / "params.yaml").read_text()

    write_params(project, **{"data.val_fraction": 0.2})
    moved = train_pipeline(project_dir=str(project))
    assert moved["stages"]["prepare"] == RAN
    assert (project / "metrics/metrics.json").read_text() != first_metrics

    (project / "params.yaml").write_text(params)
    back = train_pipeline(project_dir=str(project))
    # prepare writes the git-tracked metrics/data_checks.json (cache: false), which DVC never serves from its
    # run-cache: it reruns, to the same bytes; what follows it must still end with the first run's results.
    assert back["stages"]["prepare"] in (RAN, RESTORED)
    assert {"train", "evaluate", "save"} <= set(back["changed"])
    # Nothing stale: DVC lists only the stage that runs on every command, as "always changed".
    assert json.loads(dvc(project, "status", "--json").stdout) == {"snapshot": ["always changed"]}
    assert (project / "metrics/metrics.json").read_text() == first_metrics
    assert json.loads((project / "models/model.json").read_text())["sha256"] == first_model


def with_prepare_cmd(dvc_yaml: str, command: str) -> str:
    """dvc.yaml's text with prepare's `cmd:` (a folded block since the data checks) replaced by `command`."""
    replaced = re.sub(r"(?m)^(  prepare:\n(?:    #.*\n)*)    cmd: >-\n(?:      .*\n)+", lambda m: f"{m[1]}    cmd: {command}\n",
                      dvc_yaml, count=1)
    assert replaced != dvc_yaml, "prepare's cmd not found in dvc.yaml"
    return replaced


def test_the_prepare_stage_can_be_made_to_fail():
    text = with_prepare_cmd((PROJECT_ROOT / "dvc.yaml").read_text(), "python -c \"import sys; sys.exit(3)\"")
    assert yaml.safe_load(text)["stages"]["prepare"]["cmd"] == "python -c \"import sys; sys.exit(3)\""


@pytest.mark.slow
def test_a_failing_stage_fails_the_flow_and_later_stages_do_not_run(project, prefect_harness):
    from pipeline.run.flow import train_pipeline

    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(with_prepare_cmd(dvc_yaml.read_text(),
                                         "python -c \"import sys; print('prepare blew up on purpose'); sys.exit(3)\""))
    commit_all(project, "a prepare stage that fails")
    state = train_pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match=r"(?s)stage 'prepare' failed \(exit 3\):\nprepare blew up on purpose"):
        state.result()
    assert (project / "data/raw").exists() and not (project / "models/candidate.pth").exists()


@pytest.mark.slow
def test_a_run_that_leaves_a_stale_stage_fails_naming_it(project, prefect_harness):
    from pipeline.run.flow import train_pipeline

    # The second stage changes the first one's out after DVC recorded it: DVC's run succeeds,
    # and only `dvc status` can tell that the results on disk are not the pipeline's.
    (project / "dvc.yaml").write_text(
        "stages:\n"
        "  first:\n    cmd: python -c \"open('a', 'w').write('a')\"\n    outs: [a]\n"
        "  second:\n    cmd: python -c \"open('b', 'w').write('b'); open('a', 'a').write('!')\"\n"
        "    deps: [a]\n    outs: [b]\n")
    state = train_pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(PipelineError, match="still reports first as not up to date"):
        state.result()


def pipeline_command(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env(PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=home.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_make_run_starts_the_projects_server_once_and_says_what_it_produced(project):
    home = project / ".prefect"
    try:
        first = pipeline_command("run", home=home)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "starting a local Prefect server" in first.stderr and "make server-stop" in first.stderr
        card = json.loads((project / "models/model.json").read_text())
        metrics = json.loads((project / "metrics/metrics.json").read_text())
        lines = first.stdout.splitlines()
        assert lines[:3] + lines[4:] == [
            f"test accuracy {metrics['test']['accuracy']}, macro F1 {metrics['test']['macro_f1']}",
            f"model models/model.pth sha256 {card['sha256']}",
            "stages run or restored by DVC: validate, download, prepare, train, evaluate, save",
            "to record this run: git add params.yaml dvc.lock metrics && git commit",
        ]
        # One epoch against the committed ten-epoch results: judged worse, in words, with the paired numbers.
        assert re.match(r"differs from the committed results: worse[a-z, ]* \(accuracy -\d\.\d{4}, .*\); "
                        r"[\d,]+ paired test images, ", lines[3]), lines[3]
        url = json.loads((home / "local-server.json").read_text())["url"]

        commit_all(project, "recorded")
        again = pipeline_command("run", home=home)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "starting a local Prefect server" not in again.stderr
        assert json.loads((home / "local-server.json").read_text())["url"] == url
        assert again.stdout.splitlines()[-1] == "stages run or restored by DVC: none, all up to date"

        write_params(project, **{"train.epochs": 0})  # the validate stage's rule: at least 1
        bad = pipeline_command("run", home=home)
        assert bad.returncode == 2
        assert bad.stderr.splitlines() == ["error: params.yaml: invalid params",
                                           "  train.epochs = 0: must be greater than or equal to 1"]
        write_params(project, **{"train.epochs": 1})

        # A stage that fails: its own words in the log, one line at the end, its exit status.
        dvc_yaml = project / "dvc.yaml"
        dvc_yaml.write_text(with_prepare_cmd(dvc_yaml.read_text(),
                                             "python -c \"import sys; print('corrupt image x.png', file=sys.stderr); sys.exit(3)\""))
        failed = pipeline_command("run", home=home)
        assert failed.returncode == 3 and "Traceback" not in failed.stderr
        assert failed.stderr.splitlines()[-1] == "error: stage 'prepare' failed (exit 3): corrupt image x.png (its output is above)"
    finally:
        stopped = pipeline_command("server-stop", home=home)
    assert "stopped the local Prefect server" in stopped.stderr
    assert not (home / "local-server.json").exists()


@pytest.mark.slow
def test_bad_device_and_unreachable_server_are_clear_errors(tmp_path):
    env = subprocess_env(PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--project", str(PROJECT_ROOT)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unreachable" in result.stderr and "make server" in result.stderr
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--device", "tpu"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "tpu" in result.stderr
