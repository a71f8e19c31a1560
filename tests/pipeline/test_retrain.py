"""The retrain gate on real git repos: better -> branch, worse -> kept (Completed, not Failed), unchanged ->
nothing trained; each outcome announced by an event."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from classifier.files import file_digest
from pipeline.retrain.flow import (
    KEPT_EVENT, NO_CHANGE, NOT_PROMOTED, PROMOTED_EVENT, SAME_AS_UNMERGED, SAME_MODEL, RetrainError, retrain,
)
from pipeline.run.stages import RAN, RESTORED
from tests.conftest import commit_all, dvc, git, write_params
from tests.pipeline.test_flows import stage_tasks

pytestmark = pytest.mark.slow


@pytest.fixture
def champion(reproduced_project):
    """The one-epoch project trained and committed on main (a copy of the session's trained template): the champion to beat."""
    commit_all(reproduced_project, "champion")
    return reproduced_project


def retrain_branches(project) -> list[str]:
    return git(project, "branch", "--list", "retrain/*", "--format=%(refname:short)").split()


def events_of(state, name: str, limit_s: float = 60) -> list[dict]:
    """The events called `name` that the flow run ending in `state` emitted (Prefect relates every event
    emitted in a run to it); the server stores events in batches, so wait for the first one."""
    from prefect.settings import PREFECT_API_URL

    run = f"prefect.flow-run.{state.state_details.flow_run_id}"
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    query = {"filter": {"event": {"name": [name]}, "related": {"id": [run]}, "occurred": {"since": since}}, "limit": 50}
    deadline = time.monotonic() + limit_s
    while True:
        found = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=query).raise_for_status().json()["events"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_nothing_changed_keeps_the_champion_and_trains_nothing(champion, tmp_path, prefect_harness):
    state = retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"), return_state=True)
    assert state.is_completed() and state.name == "No change"
    result = state.result()
    assert result["result"] == NO_CHANGE and result["branch"] is None
    [kept] = events_of(state, KEPT_EVENT)
    assert kept["payload"]["outcome"] == NO_CHANGE and kept["payload"]["verdict"] is None  # nothing was judged
    assert kept["payload"]["champion"]["accuracy"] > 0
    assert set(result["stages"].values()) == {"skipped"}
    assert retrain_branches(champion) == []
    assert list((tmp_path / "ws").iterdir()) == []  # the workspace is gone again


def test_a_rerun_that_reproduces_the_champion_promotes_nothing(champion, tmp_path, prefect_harness):
    # The cpu pool pins the device class, a change of train.device: train reruns, and on this
    # CPU-only machine it reproduces the champion byte for byte.
    result = retrain(repo=str(champion), base="main", device="cpu", workspace_root=str(tmp_path / "ws"))
    assert result["stages"]["train"] == RAN
    assert result["result"] == NO_CHANGE and result["reason"] == SAME_MODEL and result["branch"] is None
    assert retrain_branches(champion) == []


def test_a_better_model_is_committed_on_a_retrain_branch(champion, tmp_path, prefect_harness):
    write_params(champion, **{"train.epochs": 3})
    commit_all(champion, "train longer")  # the champion's metrics at main are still the 1-epoch ones
    main_before = git(champion, "rev-parse", "main")
    status_before = git(champion, "status", "--porcelain")

    state = retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"), return_state=True)

    assert state.is_completed() and state.name == "Promoted"
    result = state.result()
    branch = result["branch"]
    assert result["result"] == "promoted" and retrain_branches(champion) == [branch]
    [promoted] = events_of(state, PROMOTED_EVENT)
    assert promoted["payload"]["branch"] == branch and promoted["resource"]["classifier.branch"] == branch
    assert promoted["payload"]["challenger"]["accuracy"] >= promoted["payload"]["champion"]["accuracy"] - 0.025
    assert promoted["payload"]["reason"].startswith("promoted: ")
    assert events_of(state, KEPT_EVENT, limit_s=0) == []
    assert branch.startswith("retrain/")
    new_lock = git(champion, "show", f"{branch}:dvc.lock")
    assert new_lock != git(champion, "show", "main:dvc.lock") and "epochs: 3" in new_lock
    assert git(champion, "show", f"{branch}:metrics/metrics.json") != git(champion, "show", "main:metrics/metrics.json")
    record = json.loads(git(champion, "show", f"{branch}:metrics/best.json"))
    new_metrics = json.loads(git(champion, "show", f"{branch}:metrics/metrics.json"))
    assert record["best_accuracy"] == new_metrics["test"]["accuracy"]
    assert record["test_fingerprint"] == json.loads(git(champion, "show", "main:metrics/evaluation.json"))["test_fingerprint"]
    assert git(champion, "rev-parse", "main") == main_before
    assert git(champion, "status", "--porcelain") == status_before  # the user's checkout untouched
    # The stages are the retrain run's own tasks (what `--watch` follows): training's epochs in its log, and the
    # run's last line says the outcome and the branch.
    tasks = stage_tasks(state.state_details.flow_run_id)
    train_log = next(log for name, _, log in tasks if name == "train")
    assert any(re.search(r"epoch 3/3", line) for line in train_log), train_log
    assert any(line.startswith(f"retrain promoted: {branch}: promoted: ") for line in flow_logs(state)), flow_logs(state)

    # Retrained again before that branch is merged, to the same bytes: no second branch, the first one named.
    again = retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"))
    assert again["result"] == NO_CHANGE and again["branch"] is None and again["unmerged_branch"] == branch
    assert again["reason"] == SAME_AS_UNMERGED.format(branch=branch)
    assert retrain_branches(champion) == [branch]


def flow_logs(state) -> list[str]:
    """The messages the flow run itself logged (not its tasks), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTaskRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                                                     task_run_id=LogFilterTaskRunId(is_null_=True)),
                                sort=LogSort.TIMESTAMP_ASC)
    return [log.message for log in logs]


def test_a_worse_model_is_not_promoted_and_the_run_completes(champion, tmp_path, prefect_harness):
    """Keeping the champion is an outcome, not an error: Completed, named, with the judgement."""
    champion_model = file_digest(champion / "models/model.pth")
    write_params(champion, **{"train.learning_rate": 1e-6, "save.min_accuracy": 0.0})
    commit_all(champion, "a learning rate too small to learn anything in one epoch")
    main_before = git(champion, "rev-parse", "main")

    state = retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"), return_state=True)

    assert state.is_completed() and state.name == "Not promoted", state
    assert state.message.startswith("not promoted: worse by more than matters (accuracy -"), state.message
    assert "accuracy gain could be as low as" in state.message
    assert state.result()["result"] == NOT_PROMOTED and state.result()["branch"] is None
    [kept] = events_of(state, KEPT_EVENT)
    assert kept["payload"]["outcome"] == NOT_PROMOTED and kept["payload"]["branch"] is None
    assert kept["payload"]["verdict"] == "worse by more than matters"
    assert kept["payload"]["checks"]["accuracy non-inferior"] is False
    assert kept["payload"]["challenger"]["accuracy"] < kept["payload"]["champion"]["accuracy"]
    assert set(kept["payload"]["resolution"]) == {"accuracy", "macro_f1", "loss"}
    assert retrain_branches(champion) == []
    assert git(champion, "rev-parse", "main") == main_before
    assert file_digest(champion / "models/model.pth") == champion_model


def test_not_a_git_repo_is_a_clear_error(tmp_path, prefect_harness):
    (tmp_path / "plain").mkdir()
    with pytest.raises(RetrainError, match="not a git repository"):
        retrain(repo=str(tmp_path / "plain"), workspace_root=str(tmp_path / "ws"))


def test_a_params_round_trip_is_a_change_even_when_dvc_restores_it_from_its_cache(champion, tmp_path, prefect_harness):
    """main moves to val_fraction 0.2 (run and committed), then back to 0.1 with only params.yaml
    committed: DVC restores prepare from its run-cache, and train, evaluate and save must follow."""
    write_params(champion, **{"data.val_fraction": 0.2})
    dvc(champion, "repro", "-q")
    commit_all(champion, "hold out more for validation")
    # Back to 0.1, and train longer so that the gate's verdict is certain: promoted.
    write_params(champion, **{"data.val_fraction": 0.1, "train.epochs": 3})
    commit_all(champion, "back to 0.1, train longer, not rerun")

    result = retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"))

    assert result["result"] == "promoted"
    # prepare writes the git-tracked metrics/data_checks.json (cache: false), and DVC never serves a stage with
    # an uncached output from its run-cache: it reruns to the same bytes. What follows it must run all the same.
    assert result["stages"]["prepare"] in (RAN, RESTORED)
    assert {result["stages"][stage] for stage in ("train", "evaluate", "save")} <= {RAN, RESTORED}


def test_a_redrawn_test_split_is_not_comparable_and_promotes_nothing(champion, tmp_path, prefect_harness):
    write_params(champion, **{"data.test_fraction": 0.25})
    commit_all(champion, "a bigger test split")
    with pytest.raises(RetrainError, match=r"nothing promoted: not comparable: the champion at main was scored on "
                                           r"test split sha256:\w+, the new model on sha256:\w+"):
        retrain(repo=str(champion), base="main", workspace_root=str(tmp_path / "ws"))
    assert retrain_branches(champion) == []


def test_an_origin_that_is_a_bare_path_is_cloned_and_the_branch_pushed_back(champion, tmp_path, prefect_harness):
    """An origin on a shared disk (`/srv/git/project.git`) is a path but not a work tree: cloned like a URL."""
    write_params(champion, **{"train.epochs": 3})
    commit_all(champion, "train longer")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(champion), str(origin))

    result = retrain(repo=str(origin), base="main", workspace_root=str(tmp_path / "ws"))

    assert result["result"] == "promoted"
    assert git(origin, "branch", "--list", "retrain/*", "--format=%(refname:short)").split() == [result["branch"]]
    assert "epochs: 3" in git(origin, "show", f"{result['branch']}:dvc.lock")
    assert retrain_branches(champion) == []  # the work tree the origin came from is not touched
