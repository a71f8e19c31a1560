"""End to end on loopback: a real `prefect server`, a process work pool, a real worker, prefect.yaml deployed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from classifier.files import file_digest
from tests.conftest import assert_up_to_date, write_params
from tests.pipeline.prefect_server import (api_call, automations_named, final_state, make_deploy, run_deployment,
                                           start_worker, stop, wait_for)

pytestmark = pytest.mark.slow
AUTOMATIONS = ("crash-silent-flow-runs", "retry-crashed-retrain-once")


def test_deployments_run_on_a_real_worker_and_never_overlap(project, server, tmp_path):
    api, env = server
    for _ in range(2):  # `make deploy` twice: still one of each deployment and automation
        deployed = make_deploy(project, env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    # A line per deployment, Prefect's panels in a log; the worker to start said as this project starts it.
    printed = deployed.stdout.splitlines()
    assert len(printed) <= 20 and "make deploy:   retrain/retrain-cpu (pool cpu)" in printed, deployed.stdout
    assert "make worker POOL=cpu; make worker POOL=gpu" in deployed.stdout and "prefect worker start --pool 'gpu'" not in deployed.stdout
    assert "Deployment 'retrain/retrain-gpu' successfully" in (Path(env["PREFECT_HOME"]) / "deploy.log").read_text()
    for name in AUTOMATIONS:
        assert len(automations_named(api, name)) == 1, name

    retrain = api_call(api, "GET", "/deployments/name/retrain/retrain-cpu")
    assert retrain["global_concurrency_limit"]["limit"] == 1 and retrain["work_pool_name"] == "cpu"
    assert retrain["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert retrain["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert retrain["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
    assert api_call(api, "GET", "/deployments/name/retrain/retrain-gpu")["parameters"]["device"] == "cuda"
    train = api_call(api, "GET", "/deployments/name/train-pipeline/train-cpu")

    worker = start_worker(project, env, tmp_path / "worker.log")
    try:
        first = run_deployment(api, train["id"])
        assert final_state(api, first) == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        card = json.loads((project / "models/model.json").read_text())
        assert file_digest(project / "models/model.pth") == card["sha256"] and card["trained_on"] == "cpu"
        artifacts = api_call(api, "POST", "/artifacts/filter",
                             json={"artifacts": {"flow_run_id": {"any_": [first]}}})
        keys = {artifact["key"] for artifact in artifacts}
        assert {"metrics", "pipeline-run"} <= keys

        # Two at once, with something to train so the first holds its slot: the second is cancelled.
        write_params(project, **{"train.epochs": 2})
        runs = [run_deployment(api, train["id"]), run_deployment(api, train["id"])]
        states = sorted(final_state(api, run) for run in runs)
        assert states == ["CANCELLED", "COMPLETED"], (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        stop(worker)

    # Outputs are whole: DVC sees nothing stale, and the model matches its card.
    assert_up_to_date(project)
    card = json.loads((project / "models/model.json").read_text())
    assert file_digest(project / "models/model.pth") == card["sha256"]
    assert card["params"]["train"]["epochs"] == 2


def test_make_worker_stops_on_the_first_interrupt(project, server, tmp_path):
    # Started as a script's `make worker &` starts it: SIGINT ignored. Prefect's handler used to
    # drop the first SIGINT then, and the worker ran on until a second one.
    api, env = server
    log = tmp_path / "worker.log"
    worker = start_worker(project, env, log, ignore_sigint=True)
    try:
        wait_for(lambda: "started!" in log.read_text(), "the worker to start", 120)
        os.killpg(worker.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        started = time.monotonic()
        while worker.poll() is None and time.monotonic() - started < 10:
            time.sleep(0.2)
        assert worker.poll() is not None, f"still running 10 s after one SIGINT:\n{log.read_text()[-2000:]}"
        assert "stopped!" in log.read_text()
    finally:
        stop(worker)
