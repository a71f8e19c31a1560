"""A machine that dies mid-retrain: its run is Crashed, retried once, and the next retrain runs.

On loopback: a real `prefect server`, `make deploy`, `make worker`; the worker and every process
below it are killed with SIGKILL while the retrain trains, as a power cut would kill them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.retrain.workspace import remove_stale_workspaces
from tests.conftest import commit_all, git, subprocess_env, write_params
from tests.pipeline.prefect_server import (api_call, command_line, descendants, final_state, heartbeats,
                                           make_deploy, run_deployment, start_worker, state_history, stop, wait_for)

pytestmark = pytest.mark.slow
# prefect.yaml: heartbeats every 30 s, Crashed after 90 s without one. The worst case from the kill:
# the last heartbeat just before it, 90 s of silence, the trigger's next evaluation, a retry that
# restores everything from the cache.
CRASHED_WITHIN_S = 150
RETRIED_WITHIN_S = 300

HOLD_A_WORKSPACE = """
import sys, time
from pathlib import Path
from pipeline.retrain.workspace import open_workspace
workspace, _ = open_workspace(sys.argv[1], "main", Path(sys.argv[2]))
print(workspace, flush=True)
time.sleep(600)
"""


def worktrees(repo) -> list[str]:
    return [line.split(" ", 1)[1] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def test_a_dead_retrains_workspace_is_removed_and_a_live_ones_kept(project, tmp_path):
    root = tmp_path / "ws"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_WORKSPACE, str(project), str(root)],
                              env=subprocess_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        workspace = Path(holder.stdout.readline().strip())
        assert workspace.name.startswith("retrain-") and (workspace / "dvc.yaml").is_file()
        (root / "unrelated").mkdir()

        assert remove_stale_workspaces(root, project) == []  # its run is alive: kept
        assert workspace.is_dir() and str(workspace) in worktrees(project)

        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        assert remove_stale_workspaces(root, project) == [workspace]
        assert sorted(path.name for path in root.iterdir()) == ["unrelated"]  # no workspace, no lock file
        assert worktrees(project) == [str(project)]
    finally:
        stop(holder)


PAUSE_HOOK = Path(__file__).with_name("pause_after_checkpoint")


def train_is_running(worker_pid: int) -> bool:
    return any("classifier.training.train" in command_line(pid) for pid in descendants(worker_pid))


def test_a_retrain_whose_machine_dies_is_crashed_then_retried_and_the_next_one_runs(reproduced_project, server, tmp_path):
    api, env = server
    project = reproduced_project  # the one-epoch project, trained
    commit_all(project, "champion")
    write_params(project, **{"train.epochs": 5000})  # minutes of training: the kill lands in it
    commit_all(project, "train long")
    deployed = make_deploy(project, env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    retrain = api_call(api, "GET", "/deployments/name/retrain/retrain-cpu")
    root = tmp_path / "ws"

    # The trainer stops itself (SIGSTOP) after its first checkpoint: the kill still lands mid-training, and
    # the minutes it waits for heartbeats cost no CPU that the tests beside it need.
    marker = tmp_path / "paused"
    paused_env = {**env, "PYTHONPATH": str(PAUSE_HOOK), "PAUSE_AFTER_CHECKPOINT_MARKER": str(marker)}
    first_log = tmp_path / "worker-1.log"
    worker = start_worker(project, paused_env, first_log)
    try:
        run = run_deployment(api, retrain["id"], {"workspace_root": str(root)})
        wait_for(lambda: train_is_running(worker.pid), "the retrain to start training", 300)
        wait_for(marker.exists, "the trainer's first checkpoint", 300)
        beats = wait_for(lambda: (found := heartbeats(api, run)) and len(found) >= 2 and found,
                         "two heartbeats of the retrain", 120)
        assert (beats[1] - beats[0]).total_seconds() < 40  # every 30 s, not Prefect's default 180
        # The machine dies: the worker, the flow's process and DVC's, the trainer. Parents first,
        # so that no survivor sees a child die and reports it.
        for pid in [worker.pid, *descendants(worker.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed = time.monotonic()
        worker.wait()
    finally:
        stop(worker)
    dead_workspaces = [path for path in root.iterdir() if path.is_dir()]
    assert len(dead_workspaces) == 1
    assert api_call(api, "GET", f"/flow_runs/{run}")["state"]["type"] == "RUNNING"

    # Back to the champion's params on main, so that the retry (which checks out main afresh) is quick.
    write_params(project, **{"train.epochs": 1})
    commit_all(project, "train briefly again")

    second_log = tmp_path / "worker-2.log"
    worker = start_worker(project, env, second_log)
    try:
        def crashed():
            return next((state for state in state_history(api, run) if state["type"] == "CRASHED"), None)
        crash = wait_for(crashed, "the dead run to be marked Crashed", CRASHED_WITHIN_S)
        crashed_after_s = time.monotonic() - killed
        assert "heartbeat" in crash["message"]

        # Crashed is a final state, and the retry is another automation's answer to its event, seconds later:
        # the outcome is read once the run is back to AwaitingRetry, not while it may still read Crashed.
        def awaiting_retry():
            return ("SCHEDULED", "AwaitingRetry") in [(state["type"], state["name"]) for state in state_history(api, run)]
        wait_for(awaiting_retry, "the crashed run to be set to AwaitingRetry", 60)
        outcome = final_state(api, run, RETRIED_WITHIN_S)
        retried_after_s = time.monotonic() - killed
        assert outcome == "COMPLETED", second_log.read_text()[-4000:]
        history = [(state["type"], state["name"]) for state in state_history(api, run)]
        crash_at = history.index(("CRASHED", "Crashed"))
        assert history[crash_at + 1] == ("SCHEDULED", "AwaitingRetry"), history
        assert history.count(("CRASHED", "Crashed")) == 1
        assert api_call(api, "GET", f"/flow_runs/{run}")["run_count"] == 2

        # The stages are the retrain run's own tasks (no subflow to crash): the retry ran its train stage again.
        tasks = api_call(api, "POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run]}}})
        assert "COMPLETED" in [task["state"]["type"] for task in tasks if task["name"] == "train"], tasks

        # The retry removed the dead attempt's worktree, and its own: nothing is left.
        assert list(root.iterdir()) == []
        assert worktrees(project) == [str(project)]

        # No manual step: the slot is free, and the next retrain runs.
        following = run_deployment(api, retrain["id"], {"workspace_root": str(root)})
        assert final_state(api, following) == "COMPLETED", second_log.read_text()[-4000:]
    finally:
        stop(worker)

    timings = {"crashed_after_kill_s": round(crashed_after_s), "retry_completed_after_kill_s": round(retried_after_s)}
    print(f"recovery: {json.dumps(timings)}")
