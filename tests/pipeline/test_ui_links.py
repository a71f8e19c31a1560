"""The link a run prints opens the run: `make run`'s "View at" page, in a real browser, shows the run's name and
its state, and the UIs of the project's local server and of `make server` ask their own address for the API.

Prefect builds the UI's API address from its settings, not from `--port`: a server on another port than 4200
told nothing serves `http://127.0.0.1:4200/api`, and its pages say only "Oops. Something went wrong."
Chromium is the shared `chromium` fixture (tests/conftest.py), offline but for loopback; the screenshot goes
to test-artifacts/ui-links/ (git-ignored; TEST_ARTIFACTS moves it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeline.server.local import healthy, stop_server
from tests.conftest import OFFLINE_ARGS, PROJECT_ROOT, subprocess_env
from tests.pipeline.prefect_server import MAKE, free_port, stop, wait_for

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts")) / "ui-links"
VIEW_AT = re.compile(r"View at (http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36})\b")
BEGINNING = re.compile(r"Beginning flow run '([^']+)' for flow 'train-pipeline'")
# Offline as the plots tests are, but for the loopback address the server listens on (an IP literal still meets
# the host resolver rules).
LOOPBACK_ONLY_ARGS = [arg + ", EXCLUDE 127.0.0.1" if arg.startswith("--host-resolver-rules=") else arg for arg in OFFLINE_ARGS]
# Settings from the environment the tests run in that would point a server or a client elsewhere.
OUTSIDE_SETTINGS = ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL",
                    "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING", "SERVER_URL")


def clean_env(**extra: str) -> dict[str, str]:
    env = subprocess_env(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    for name in OUTSIDE_SETTINGS:
        env.pop(name, None)
    return env


def ui_settings_api_url(base_url: str) -> str:
    return httpx.get(f"{base_url}/ui-settings", timeout=10).json()["api_url"]


def start_server_as_before(home: Path) -> subprocess.Popen:
    """The local server as a checkout from before the fix started it (told no UI address), in its state file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    (home / "local-server").mkdir(parents=True)
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                               env=clean_env(PREFECT_HOME=str(home / "local-server")), stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: healthy(url), "the server started as before", 120)
    (home / "local-server.json").write_text(json.dumps({"url": url, "pid": process.pid}) + "\n")
    return process


def make_run(project: Path) -> subprocess.CompletedProcess:
    """What `make run` runs, with the project's own Prefect home: its local server."""
    ran = subprocess.run([sys.executable, "-m", "pipeline", "run"], cwd=project,
                         env=clean_env(PREFECT_HOME=str(project / ".prefect")), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran


def open_in_browser(chromium: str, link: str, run_name: str, screenshot: Path) -> tuple[str, list[str]]:
    """The text of the page at `link` once it shows the run's name and Completed, or an error page (at most 60 s),
    and the requests it made beyond the server, which are refused."""
    from playwright.sync_api import Error, sync_playwright

    server = link.split("/runs/", 1)[0] + "/"
    outside = []

    def refuse(route):
        outside.append(route.request.url)
        route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=LOOPBACK_ONLY_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route(lambda url: not url.startswith(server), refuse)
            page.goto(link, wait_until="load")
            try:
                page.wait_for_function(
                    """name => { const text = document.body.innerText;
                                 return (text.includes(name) && text.includes('Completed')) || text.includes('Oops'); }""",
                    arg=run_name, timeout=60_000)
            except Error:
                pass  # the assertions say what the page showed
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=screenshot, full_page=True)
            return page.inner_text("body"), outside
        finally:
            browser.close()


def test_the_link_a_run_prints_opens_the_run_in_a_browser_and_an_older_server_is_restarted(reproduced_project, chromium):
    home = reproduced_project / ".prefect"
    older = start_server_as_before(home)
    try:
        older_url = json.loads((home / "local-server.json").read_text())["url"]
        assert ui_settings_api_url(older_url.removesuffix("/api")) == "http://127.0.0.1:4200/api"  # the bug

        ran = make_run(reproduced_project)
        assert "restarting the project's local Prefect server" in ran.stderr, ran.stderr[-3000:]
        older.wait(timeout=30)  # the run stopped the older server (TimeoutExpired if not)
        api_url = json.loads((home / "local-server.json").read_text())["url"]
        base_url = api_url.removesuffix("/api")
        assert api_url != older_url
        link, run_name = VIEW_AT.search(ran.stderr), BEGINNING.search(ran.stderr)
        assert link and run_name, ran.stderr[-3000:]
        link, run_name = link.group(1), run_name.group(1)
        assert link.startswith(f"{base_url}/runs/flow-run/")

        text, outside = open_in_browser(chromium, link, run_name, ARTIFACTS / "make-run-view-at.png")
        assert "Oops" not in text and run_name in text and "Completed" in text, f"{link} showed:\n{text[:2000]}"
        assert ui_settings_api_url(base_url) == api_url
        assert not any(url.startswith("http://127.0.0.1") for url in outside), outside

        again = make_run(reproduced_project)  # a server that serves its own address is kept
        assert "local Prefect server" not in again.stderr, again.stderr[-3000:]
        assert json.loads((home / "local-server.json").read_text())["url"] == api_url
    finally:
        stop(older)
        stop_server(home)


def test_make_server_serves_its_ui_at_server_url(tmp_path):
    """A server on a port of its own, browsed to by another name for this host: its UI asks that name."""
    port = free_port()
    env = clean_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen([*MAKE, "-f", str(PROJECT_ROOT / "Makefile"), "-o", ".dvc/offline-plots.html", "server",
                                   "PREFECT_HOST=127.0.0.1", f"PREFECT_PORT={port}", f"SERVER_URL=http://localhost:{port}"],
                                  cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}/api") or server.poll() is not None, "make server", 120)
        assert server.poll() is None, log.read_text()
        assert ui_settings_api_url(f"http://localhost:{port}") == f"http://localhost:{port}/api"
        assert f"make server: the UI, and the links runs print, at http://localhost:{port}" in log.read_text()
    finally:
        stop(server)
