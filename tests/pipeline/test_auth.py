"""An authenticated Prefect server on loopback: `make server` with the project's ignored auth file,
a client without the string refused in one line, a worker and `make deploy` holding it run a deployment."""

from __future__ import annotations

import secrets
import subprocess
import sys

import httpx
import pytest

from tests.conftest import subprocess_env
from tests.pipeline.prefect_server import (MAKE, api_call, basic_auth, final_state, free_port, make_deploy,
                                           prefect_server, run_deployment, start_worker, stop)

pytestmark = pytest.mark.slow
REFUSAL = "error: the server refused the credentials: set PREFECT_API_AUTH_STRING"


def test_make_server_beyond_loopback_refuses_to_start_without_an_auth_string(project):
    env = {k: v for k, v in subprocess_env().items() if k not in ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")}
    started = subprocess.run([*MAKE, "server", "PREFECT_HOST=0.0.0.0", f"PREFECT_PORT={free_port()}"], cwd=project,
                             env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    said = [line for line in started.stderr.splitlines() if line.startswith("make server:")]
    assert len(said) == 1 and "without an auth string" in said[0] and "make auth-string" in said[0], started.stderr
    assert "PREFECT_SERVER_API_AUTH_STRING" in said[0] and "Uvicorn" not in started.stdout + started.stderr

    # `make auth-string` writes one to the ignored file, readable by its owner only; git never sees it.
    written = subprocess.run([*MAKE, "auth-string"], cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    auth_file = project / ".prefect" / "auth"
    assert len(auth_file.read_text().strip()) >= 32 and auth_file.stat().st_mode & 0o077 == 0
    ignored = subprocess.run(["git", "check-ignore", "-q", ".prefect/auth"], cwd=project)
    assert ignored.returncode == 0


def test_an_authenticated_server_refuses_a_client_without_the_string_and_runs_a_worker_with_it(project, tmp_path):
    auth_string = secrets.token_urlsafe(32)
    (project / ".prefect").mkdir(exist_ok=True)
    (project / ".prefect" / "auth").write_text(auth_string + "\n")  # where `make auth-string` puts it
    # `make server` reads the string from the file; the clients' env holds none: make reads the same file.
    with prefect_server(tmp_path, auth_string, make_project=project) as (api, env):
        assert "authentication on" in (tmp_path / "server.log").read_text()
        assert httpx.post(f"{api}/flows/count", timeout=10).status_code == 401  # no credentials
        assert httpx.post(f"{api}/flows/count", headers=basic_auth("wrong"), timeout=10).status_code == 401
        api_call(api, "POST", "/flows/count")  # with them

        for client_env in (env, {**env, "PREFECT_API_AUTH_STRING": "not-the-string"}):
            refused = subprocess.run([sys.executable, "-m", "pipeline", "run"], cwd=project, env=client_env,
                                     capture_output=True, text=True, timeout=120)
            assert refused.returncode != 0
            assert refused.stderr.strip().splitlines() == [refused.stderr.strip()], refused.stderr  # one line
            assert refused.stderr.startswith(REFUSAL) and "Traceback" not in refused.stderr, refused.stderr

        deployed = make_deploy(project, env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        train = api_call(api, "GET", "/deployments/name/train-pipeline/train-cpu")
        worker = start_worker(project, env, tmp_path / "worker.log")
        try:
            run = run_deployment(api, train["id"])
            assert final_state(api, run) == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        finally:
            stop(worker)
        assert (project / "models" / "model.pth").is_file()
