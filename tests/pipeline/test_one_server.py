"""One Prefect server (issue 40.1): `python -m pipeline run` (make run, make retrain) uses `make server`'s address
when it answers, else starts the project's background server on that same port, and on the same port again after a
stop, so earlier "View at" links keep opening. The background server never takes a team database's URL (issue 39).

Real `prefect server` processes on loopback; the pipeline is a reproduced copy, so a run is DVC's no-op.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.server.local import _choose_port, held_port_problem, stop_server
from tests.conftest import subprocess_env
from tests.pipeline.prefect_server import api_call, free_port

# A team server's database, unreachable here: a server that took it would never come up.
TEAM_DATABASE = "postgresql+asyncpg://prefect:secret@127.0.0.1:9/prefect"


def pipeline_run(project: Path, **extra: str) -> subprocess.CompletedProcess:
    env = subprocess_env(PREFECT_HOME=str(project / ".prefect"), **extra)
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "pipeline", "run"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=400)


def test_the_background_server_takes_the_configured_port_or_the_next_free_one():
    port = free_port()
    assert _choose_port(f"http://127.0.0.1:{port}/api", None) == port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        chosen = _choose_port(f"http://127.0.0.1:{port}/api", None)
        assert port < chosen <= port + 20  # never a random port: the next free one after the configured port


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process's command line from /proc")
def test_make_server_says_when_the_background_server_holds_its_port(tmp_path):
    home = tmp_path / ".prefect"
    home.mkdir()
    # A live process that reads as a Prefect server, in the state file the background server writes.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "prefect", "server"])
    try:
        for _ in range(100):  # until the child has exec'd (its command line is ours until then)
            if b"server" in Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0"):
                break
            time.sleep(0.1)
        (home / "local-server.json").write_text(json.dumps({"url": "http://127.0.0.1:4321/api", "pid": process.pid}))
        said = held_port_problem(home, 4321)
        assert said and "already serves http://127.0.0.1:4321" in said and "make server-stop" in said
        assert held_port_problem(home, 4200) is None  # another port: make server goes ahead
    finally:
        process.kill()
        process.wait()
    assert held_port_problem(home, 4321) is None  # that server is gone


@pytest.mark.slow
def test_a_run_uses_make_servers_address_when_it_answers(reproduced_project, server):
    api, _ = server
    ran = pipeline_run(reproduced_project, CLASSIFIER_SERVER_URL=api.removesuffix("/api"))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert f"using the Prefect server at {api.removesuffix('/api')}" in ran.stderr
    assert "starting a local Prefect server" not in ran.stderr
    assert not (reproduced_project / ".prefect/local-server.json").exists()
    runs = api_call(api, "POST", "/flow_runs/filter", json={"flows": {"name": {"any_": ["train-pipeline"]}}})
    assert [run["state_type"] for run in runs] == ["COMPLETED"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the server's environment from /proc")
def test_the_background_server_keeps_its_port_and_never_takes_a_team_database(reproduced_project):
    home = reproduced_project / ".prefect"
    configured = os.environ["CLASSIFIER_SERVER_URL"]  # tests/conftest.py: a free port of this test's own
    team = {"PREFECT_API_DATABASE_CONNECTION_URL": TEAM_DATABASE, "PREFECT_SERVER_DATABASE_CONNECTION_URL": TEAM_DATABASE,
            "PREFECT_API_DATABASE_PASSWORD": "secret"}
    try:
        first = pipeline_run(reproduced_project, **team)
        assert first.returncode == 0, first.stderr[-3000:]
        assert f"starting a local Prefect server for this project at {configured}" in first.stderr
        assert "the Prefect server is up after" in first.stderr
        state = json.loads((home / "local-server.json").read_text())
        assert state["url"] == f"{configured}/api"
        environment = Path(f"/proc/{state['pid']}/environ").read_bytes().split(b"\0")
        assert not [entry for entry in environment if b"DATABASE" in entry], "a team database setting reached it"
        assert (home / "local-server/prefect.db").exists()  # its own SQLite file

        stop_server(home)
        again = pipeline_run(reproduced_project)
        assert again.returncode == 0, again.stderr[-3000:]
        # The same address after a restart: the links earlier runs printed open this server again.
        assert json.loads((home / "local-server.json").read_text())["url"] == state["url"]
    finally:
        stop_server(home)
