"""The team's server on a real PostgreSQL (tests/postgres_server.py: Debian's binaries, a private cluster on
127.0.0.1 run as a non-root user): `make server DATABASE_URL=...` checks the database in one line, brings it
to Prefect's schema and keeps its runs there (docs/scaling-out.md, "The server's database"). Then a team's
cluster on it (tests/pipeline/test_scale_out.py's loopback walkthrough with four worker machines): a sweep
completes with no server error, a sweep held past the crash window is never marked Crashed (it sends
heartbeats), and a point whose machine is killed mid-training is retried on another worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.pipeline.prefect_server import (MAKE, api_call, descendants, heartbeats, prefect_server, server_errors,
                                           state_history, stop, wait_for)
from tests.pipeline.test_scale_out import (GRID, artifact_rows, logs_tail, loopback_cluster, make, sweep_run_id,
                                           worker_name)
from tests.postgres_server import postgres_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres(postgres_binaries):
    with postgres_server(postgres_binaries) as running:
        yield running


def check(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.server.database", "check", url], capture_output=True,
                          text=True, timeout=120)


def test_the_database_check_says_in_one_line_what_is_wrong_and_never_the_password(postgres):
    postgres.admin("CREATE ROLE limited LOGIN PASSWORD 'limited-secret'", "CREATE DATABASE bare")
    cases = {
        postgres.url(password="wrong-secret"): "refused the credentials of role 'prefect'",
        postgres.url().replace(f":{postgres.port}/", ":1/"): "cannot reach PostgreSQL at 127.0.0.1:1",
        postgres.url(database="missing"): "there is no database 'missing'",
        postgres.url(database="bare", user="limited", password="limited-secret"):
            "pg_trgm is not created in database 'bare' and role 'limited' may not create it",
        postgres.url().replace("postgresql+asyncpg", "postgresql"): "the URL must start with postgresql+asyncpg://",
    }
    for url, reason in cases.items():
        done = check(url)
        assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and reason in done.stderr, done.stderr
        assert "secret" not in done.stderr and postgres.password not in done.stderr
    done = check(postgres.url())
    assert done.returncode == 0, done.stderr
    assert f"prefect:***@127.0.0.1:{postgres.port}/prefect: PostgreSQL 15" in done.stdout and "pg_trgm 1." in done.stdout
    assert postgres.password not in done.stdout


def test_make_server_keeps_its_runs_in_the_postgresql_it_is_given(postgres, project, tmp_path):
    # Credentials refused: one line, before any server starts, without the password.
    refused = subprocess.run([*MAKE, "server", "PREFECT_PORT=1", f"DATABASE_URL={postgres.url(password='wrong-secret')}"],
                             cwd=project, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "refused the credentials" in refused.stderr, refused.stdout + refused.stderr
    assert "wrong-secret" not in refused.stdout + refused.stderr

    # The password from PGPASSWORD, not the URL (asyncpg reads it, as libpq does).
    url = postgres.url_without_password()
    with prefect_server(tmp_path, make_project=project, database_url=url,
                        server_extra_env={"PGPASSWORD": postgres.password}) as (api, _env):
        flow = api_call(api, "POST", "/flows/", json={"name": "stored-in-postgres"})
        assert postgres.query(f"SELECT name FROM flow WHERE id = '{flow['id']}'") == [("stored-in-postgres",)]
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    log = (tmp_path / "server.log").read_text()
    assert f"make server: database {url}: PostgreSQL 15" in log and "schema up to date" in log, log[-3000:]
    assert postgres.password not in log
    assert not list(Path(tmp_path / "prefect-home").glob("*.db")), "the server also wrote a SQLite database"


# --- a team's cluster on that PostgreSQL: four workers, heartbeats, a machine that dies -----------------------

MACHINES = tuple((f"machine-{index}", "cpu") for index in range(1, 5))
CRASH_AFTER_S = 60  # prefect.yaml's 90 s, shortened so the tests wait less; still two heartbeats' worth
PAUSE_HOOK = Path(__file__).with_name("pause_after_checkpoint")


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """docs/scaling-out.md's walkthrough with `make server DATABASE_URL=...` on the PostgreSQL, four `make worker
    LIMIT=1` machines and `make deploy CRASH_AFTER=60`. Every worker carries the pause hook, unarmed (its marker
    exists) until a test removes the marker: then the first trainer to write a checkpoint stops there."""
    root = tmp_path_factory.mktemp("team")
    marker = root / "paused"
    marker.write_text("unarmed")
    server = {"database_url": postgres.url_without_password(),  # the password from PGPASSWORD
              "server_extra_env": {"PGPASSWORD": postgres.password, "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true"}}
    worker_env = {"PYTHONPATH": str(PAUSE_HOOK), "PAUSE_AFTER_CHECKPOINT_MARKER": str(marker)}
    with loopback_cluster(root, MACHINES, server=server, worker_env=worker_env) as cluster:
        done = make(cluster.laptop, cluster.env, "deploy", "REPO=origin", f"CRASH_AFTER={CRASH_AFTER_S}")
        assert done.returncode == 0, done.stdout + done.stderr
        cluster.marker = marker
        yield cluster


def grid_flags(*values: str) -> str:
    return "GRID=" + " ".join(f"-S '{value}'" for value in values)


def crashed_states(api: str, flow_run_id: str) -> list[dict]:
    return [state for state in state_history(api, flow_run_id) if state["type"] == "CRASHED"]


def test_a_sweep_over_four_workers_on_postgresql_completes_with_no_server_error(team):
    swept = make(team.laptop, team.env, "sweep", grid_flags(*GRID), "SWEEP_FLAGS=--name pg --timeout 900", timeout=1200)
    assert swept.returncode == 0, swept.stdout + swept.stderr + logs_tail(team)
    sweep = sweep_run_id(swept.stdout + swept.stderr)
    rows = artifact_rows(team.api, "sweep", sweep)
    assert sorted(row["experiment"] for row in rows) == ["pg-1", "pg-2", "pg-3", "pg-4"]
    assert {row["status"] for row in rows} == {"COMPLETED"}
    assert len({row["worker"] for row in rows}) >= 2, rows  # spread over the machines
    assert crashed_states(team.api, sweep) == []
    assert server_errors((team.root / "server.log").read_text()) == {"503": 0, "500": 0, "database is locked": 0}


def test_a_sweep_held_past_the_crash_window_is_never_marked_crashed(team):
    # No gpu worker: the point waits, and the sweep waits for it, twice the crash window, then gives up.
    held_s = 2 * CRASH_AFTER_S + 15
    swept = make(team.laptop, team.env, "sweep", grid_flags("train.epochs=1"),
                 f"SWEEP_FLAGS=--deployment sweep-point/sweep-point-gpu --name held --timeout {held_s}", timeout=600)
    assert swept.returncode != 0 and "TIMED OUT" in swept.stdout + swept.stderr, swept.stdout + swept.stderr
    sweep = sweep_run_id(swept.stdout + swept.stderr)
    assert api_call(team.api, "GET", f"/flow_runs/{sweep}")["state"]["type"] == "FAILED"
    assert crashed_states(team.api, sweep) == [], state_history(team.api, sweep)
    beats = heartbeats(team.api, sweep)
    assert len(beats) >= 3, beats  # every 30 s, not Prefect's default 180
    assert max((later - earlier).total_seconds() for earlier, later in zip(beats, beats[1:])) < CRASH_AFTER_S


def test_a_point_whose_machine_dies_is_retried_on_another_worker_and_the_sweep_completes(team):
    team.marker.unlink()  # armed: the first trainer to write a checkpoint stops there, as if mid-epoch
    log = team.root / "sweep-killed.log"
    # Two epochs: the trainer writes its resume checkpoint after the first (none after the last).
    sweep = subprocess.Popen([*MAKE, "sweep", grid_flags("train.learning_rate=0.001,0.002", "train.epochs=2"),
                              "SWEEP_FLAGS=--name killed --timeout 900"], cwd=team.laptop, env=team.env,
                             stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(team.marker.exists, "a point's trainer to stop at its first checkpoint", 400)
        trainer = int(team.marker.read_text())
        machine = next(key for key, process in team.workers.items() if trainer in descendants(process.pid))
        dying = team.workers[machine]
        dead_name = worker_name(team.logs[machine])
        # The machine dies: its worker's whole process group, and everything below it (the flow run, DVC, the
        # trainer), parents first so that no survivor sees a child die and reports it.
        doomed = [dying.pid, *descendants(dying.pid)]
        os.killpg(dying.pid, signal.SIGKILL)
        for pid in doomed:  # those that run in a session of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        dying.wait()
        assert sweep.wait(timeout=900) == 0, log.read_text()[-4000:] + logs_tail(team)
    finally:
        stop(sweep)
    output = log.read_text()
    rows = artifact_rows(team.api, "sweep", sweep_run_id(output))
    assert {row["status"] for row in rows} == {"COMPLETED"}, rows
    retried = [row for row in rows if row["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["worker"] != dead_name, rows
    assert "its run crashed" in output and "retrying it once" in output
    # The point's own run went Crashed (no heartbeat) -> AwaitingRetry -> Completed on another machine.
    runs = api_call(team.api, "POST", "/flow_runs/filter", json={"flow_runs": {"name": {}}, "flows": {
        "name": {"any_": ["sweep-point"]}}})
    point = next(run for run in runs if run["parameters"].get("name") == retried[0]["experiment"])
    history = [(state["type"], state["name"]) for state in state_history(team.api, point["id"])]
    assert ("CRASHED", "Crashed") in history and history[history.index(("CRASHED", "Crashed")) + 1] == (
        "SCHEDULED", "AwaitingRetry"), history
    assert history[-1] == ("COMPLETED", "Completed") and point["run_count"] == 2
