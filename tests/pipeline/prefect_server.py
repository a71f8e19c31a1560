"""A real `prefect server` and workers on 127.0.0.1 for the loopback tests, and the REST calls they make."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import httpx

from tests.conftest import subprocess_env

VENV_BIN = Path(sys.executable).parent
PREFECT = str(VENV_BIN / "prefect")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
# The Makefile's own targets, run in a copy of the project with this interpreter's venv: `-o` keeps
# make from (re)installing a venv into the copy.
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", ".venv/.remote-plugins", f"BIN={VENV_BIN}"]


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


# Basic-auth headers for the servers started with an auth string, by API URL: api_call sends them.
AUTH_HEADERS: dict[str, dict[str, str]] = {}
AUTH_SETTINGS = ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")


def basic_auth(auth_string: str) -> dict[str, str]:
    """The header Prefect's client sends for PREFECT_API_AUTH_STRING."""
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def migrated_database() -> Path:
    """A SQLite file with Prefect's migrations applied, made once per Prefect version on this machine
    (`prefect server database upgrade`). The servers these tests start begin from a copy of it rather
    than spending 6-8 s of CPU migrating a new one each; a first start's migrations are still run by
    `make run`'s own server (pipeline/server/local.py), which these helpers do not start."""
    made = Path(tempfile.gettempdir()) / f"classifier-tests-prefect-{version('prefect')}.db"
    with open(f"{made}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one xdist worker migrates, the others wait and copy
        if not made.exists():
            with tempfile.TemporaryDirectory() as home:
                subprocess.run([PREFECT, "server", "database", "upgrade", "--yes"], check=True, capture_output=True,
                               env=subprocess_env(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false"))
                os.replace(Path(home) / "prefect.db", made)
    return made


@contextmanager
def prefect_server(folder: Path, auth_string: str | None = None, make_project: Path | None = None,
                   database_url: str | None = None, server_extra_env: dict | None = None):
    """A `prefect server start` on a free port, its home and log in `folder`: yields (api url, env for clients).

    auth_string: the server's PREFECT_SERVER_API_AUTH_STRING (the clients' env does not get it: each test
    says how its clients hold it); make_project: start it with `make server` in that project instead;
    database_url: its database (`make server DATABASE_URL=...`, or PREFECT_API_DATABASE_CONNECTION_URL);
    server_extra_env: more of the server's environment (PGPASSWORD, PREFECT_SERVER_LOG_RETRYABLE_ERRORS)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = folder / "prefect-home"
    # Workers ask for runs every 2 s (Prefect's default: 10 s): a run starts within 2 s. Polling is the server's
    # work: 4 idle workers cost it 7.1 s of CPU a minute asking every second, 2.7 s every 5 s.
    env = subprocess_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                         DO_NOT_TRACK="1", PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_API_URL=api)
    for name in AUTH_SETTINGS:
        env.pop(name, None)
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    if auth_string is not None:
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
        AUTH_HEADERS[api] = basic_auth(auth_string)
    server_env.update(server_extra_env or {})
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if make_project is not None:
        command = [*MAKE, "server", "PREFECT_HOST=127.0.0.1", f"PREFECT_PORT={port}",
                   *([f"DATABASE_URL={database_url}"] if database_url else [])]
    elif database_url:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if database_url is None:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_database(), home / "prefect.db")
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(command, cwd=make_project, env=server_env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert process.poll() is None, (folder / "server.log").read_text()
                return False
        wait_for(healthy, "the Prefect server", 300 if database_url else 120)  # a PostgreSQL is migrated first
        # The first requests that reach the database take seconds on a fresh PostgreSQL (asyncpg's pool, Prefect's
        # start-up work), longer than `python -m pipeline`'s 2 s reachability check: made here, at leisure.
        httpx.get(f"{api}/admin/version", timeout=120, headers=AUTH_HEADERS.get(api, {}))
        httpx.post(f"{api}/flows/filter", json={"limit": 1}, timeout=120, headers=AUTH_HEADERS.get(api, {}))
        yield api, env
    finally:
        stop(process)
        log.close()
        AUTH_HEADERS.pop(api, None)


# What a server logs with PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true: each answer of 503 (an error clients retry: a
# busy SQLite) or 500, and the SQLite lock behind most 503s (prefect/server/api/server.py).
SERVER_ERRORS = {"503": "Encountered retryable exception in request", "500": "Encountered exception in request",
                 "database is locked": "database is locked"}


def server_errors(log: str) -> dict[str, int]:
    """How many of each SERVER_ERRORS a server's log holds."""
    return {name: log.count(text) for name, text in SERVER_ERRORS.items()}


def api_call(api: str, method: str, path: str, **kwargs):
    # The server answers 503 while SQLite is busy; Prefect's own client retries those, so do we.
    kwargs["headers"] = {**AUTH_HEADERS.get(api, {}), **kwargs.get("headers", {})}
    for attempt in range(6):
        response = httpx.request(method, f"{api}{path}", timeout=30, **kwargs)
        if response.status_code != 503:
            break
        time.sleep(0.5 * 2**attempt)
    response.raise_for_status()
    return response.json()


def run_deployment(api: str, deployment_id: str, parameters: dict | None = None) -> str:
    return api_call(api, "POST", f"/deployments/{deployment_id}/create_flow_run",
                    json={"parameters": parameters} if parameters else {})["id"]


def final_state(api: str, flow_run_id: str, limit_s: float = 300) -> str:
    def state():
        kind = api_call(api, "GET", f"/flow_runs/{flow_run_id}")["state"]["type"]
        return kind if kind in FINAL else None
    return wait_for(state, f"flow run {flow_run_id} to finish", limit_s)


def state_history(api: str, flow_run_id: str) -> list[dict]:
    """Every state the flow run has been in, oldest first."""
    states = api_call(api, "GET", "/flow_run_states/", params={"flow_run_id": flow_run_id})
    return sorted(states, key=lambda state: state["timestamp"])


def heartbeats(api: str, flow_run_id: str) -> list[datetime]:
    """When the flow run's heartbeat events occurred, as the server has stored them, oldest first."""
    found = api_call(api, "POST", "/events/filter", json={"limit": 50, "filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}})
    return sorted(datetime.fromisoformat(event["occurred"]) for event in found["events"])


def automations_named(api: str, name: str) -> list[dict]:
    return api_call(api, "POST", "/automations/filter", json={"automations": {"name": {"any_": [name]}}})


def make_deploy(project: Path, env: dict) -> subprocess.CompletedProcess:
    """`make deploy` in `project`: work pools, prefect.yaml's deployments and automations."""
    return subprocess.run([*MAKE, "deploy"], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def start_worker(project: Path, env: dict, log: Path, pool: str = "cpu", ignore_sigint: bool = False) -> subprocess.Popen:
    """`make worker POOL=pool` in a session of its own. ignore_sigint: as a script's `make worker &` starts it."""
    def ignore():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return subprocess.Popen([*MAKE, "worker", f"POOL={pool}"], cwd=project, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=ignore if ignore_sigint else None)


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, parents before their children (read from /proc: Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name sits in parentheses and may hold spaces: the fields after it are fixed.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
