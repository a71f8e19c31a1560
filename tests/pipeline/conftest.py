"""Fixtures for the Prefect tests: one temporary Prefect API for the whole session, on request."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """prefect_test_harness costs seconds to start: one per session, only for tests that ask."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def server(tmp_path):
    """A real `prefect server` on a free port of 127.0.0.1 (tests/pipeline/prefect_server.py): (api url, env)."""
    from tests.pipeline.prefect_server import prefect_server

    with prefect_server(tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_binaries():
    """Debian's PostgreSQL bin folder (initdb, pg_ctl), installed with apt-get when missing (tests/postgres_server.py)."""
    from tests.postgres_server import install_postgres, postgres_bin

    found = postgres_bin()
    if found is not None:
        return found
    try:
        return install_postgres()
    except RuntimeError as error:
        if os.environ.get("CI") or "failed" in str(error):
            pytest.fail(str(error))
        pytest.skip(str(error))
