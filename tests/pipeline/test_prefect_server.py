"""End to end on loopback: a real `prefect server`, a process work pool, a real worker, prefect.yaml deployed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from classifier.files import file_digest
from tests.conftest import dvc, subprocess_env, write_params

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop a process we started, and its children, by its process group id."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(predicate, what: str, limit_s: float = 300):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = subprocess_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                         DO_NOT_TRACK="1", PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_API_URL=api)
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                return False
        wait_for(healthy, "the Prefect server", 120)
        yield api, env
    finally:
        stop(process)
        log.close()


def api_call(api: str, method: str, path: str, **kwargs):
    # The server answers 503 while SQLite is busy; Prefect's own client retries those, so do we.
    for attempt in range(6):
        response = httpx.request(method, f"{api}{path}", timeout=30, **kwargs)
        if response.status_code != 503:
            break
        time.sleep(0.5 * 2**attempt)
    response.raise_for_status()
    return response.json()


def run_deployment(api: str, deployment_id: str) -> str:
    return api_call(api, "POST", f"/deployments/{deployment_id}/create_flow_run", json={})["id"]


def final_state(api: str, flow_run_id: str) -> str:
    def state():
        kind = api_call(api, "GET", f"/flow_runs/{flow_run_id}")["state"]["type"]
        return kind if kind in FINAL else None
    return wait_for(state, f"flow run {flow_run_id} to finish")


def test_deployments_run_on_a_real_worker_and_never_overlap(project, server, tmp_path):
    api, env = server
    for pool in ("cpu", "gpu"):
        subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process"], env=env, check=True,
                       capture_output=True, timeout=120)
    deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    retrain = api_call(api, "GET", "/deployments/name/retrain/retrain-cpu")
    assert retrain["global_concurrency_limit"]["limit"] == 1 and retrain["work_pool_name"] == "cpu"
    assert retrain["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert retrain["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
    assert api_call(api, "GET", "/deployments/name/retrain/retrain-gpu")["parameters"]["device"] == "cuda"
    train = api_call(api, "GET", "/deployments/name/train-pipeline/train-cpu")

    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cpu"], cwd=project, env=env,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
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
        worker_log.close()

    # Outputs are whole: DVC sees nothing stale, and the model matches its card.
    assert dvc(project, "status", "--json").stdout.strip() == "{}"
    card = json.loads((project / "models/model.json").read_text())
    assert file_digest(project / "models/model.pth") == card["sha256"]
    assert card["params"]["train"]["epochs"] == 2
