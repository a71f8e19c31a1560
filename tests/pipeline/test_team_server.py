"""The team's server on a real PostgreSQL (tests/postgres_server.py: Debian's binaries, a private cluster on
127.0.0.1 run as a non-root user): `make server DATABASE_URL=...` checks the database in one line, brings it
to Prefect's schema and keeps its runs there (docs/scaling-out.md, "The server's database").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.pipeline.prefect_server import MAKE, api_call, prefect_server
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
    url = f"postgresql+asyncpg://prefect@127.0.0.1:{postgres.port}/prefect"
    with prefect_server(tmp_path, make_project=project, database_url=url,
                        server_extra_env={"PGPASSWORD": postgres.password}) as (api, _env):
        flow = api_call(api, "POST", "/flows/", json={"name": "stored-in-postgres"})
        assert postgres.query(f"SELECT name FROM flow WHERE id = '{flow['id']}'") == [("stored-in-postgres",)]
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    log = (tmp_path / "server.log").read_text()
    assert f"make server: database {url}: PostgreSQL 15" in log and "schema up to date" in log, log[-3000:]
    assert postgres.password not in log
    assert not list(Path(tmp_path / "prefect-home").glob("*.db")), "the server also wrote a SQLite database"
