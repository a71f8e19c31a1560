"""One knob, SERVER_URL, says where people browse to the server: `make server`'s UI asks the API there, and the
links the clients print start with it (docs/scaling-out.md, "The address in links").

The Makefile runs here with a stand-in `prefect` and `python` that print the settings they were given:
no server starts. tests/pipeline/test_ui_links.py starts real ones.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SETTINGS = ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_SERVER_UI_API_URL")
STAND_IN = "#!/bin/sh\n" + "".join(f'echo "{name}=${{{name}-unset}}"\n' for name in SETTINGS)
CLIENTS = ["worker", "deploy", "sweep", "data-updated", "retrain"]


def make(folder: Path, target: str, *assignments: str, **env: str) -> subprocess.CompletedProcess:
    """The project's Makefile in `folder` (its CURDIR), with the stand-ins as its BIN and no PREFECT_* settings."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("prefect", "python"):
        (bin_dir / name).write_text(STAND_IN)
        (bin_dir / name).chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "SERVER_URL"}
    return subprocess.run(["make", "--no-print-directory", "-f", str(PROJECT_ROOT / "Makefile"), "-o", ".venv/.installed", "-o", ".venv/.remote-plugins",
                           "-o", ".dvc/offline-plots.html", f"BIN={bin_dir}", target, *assignments],
                          cwd=folder, env={**clean, **env}, capture_output=True, text=True, timeout=60)


def settings(ran: subprocess.CompletedProcess) -> dict[str, str]:
    """What the stand-ins printed; every call of a target must have been given the same."""
    assert ran.returncode == 0, ran.stdout + ran.stderr
    printed = [line.split("=", 1) for line in ran.stdout.splitlines() if line.startswith(SETTINGS)]
    seen = dict(printed)
    assert printed and len(printed) == len(SETTINGS) * (len(printed) // len(SETTINGS)), ran.stdout
    assert all(seen[name] == value for name, value in printed), ran.stdout
    return seen


@pytest.mark.parametrize("target", CLIENTS)
def test_a_server_url_given_is_where_every_client_talks_and_links(target, tmp_path):
    given = settings(make(tmp_path, target, "SERVER_URL=http://ci-box.example:4300"))
    assert given["PREFECT_API_URL"] == "http://ci-box.example:4300/api"
    assert given["PREFECT_UI_URL"] == "http://ci-box.example:4300"
    # A worker on the server's own machine talks to it on loopback, and still links to where people browse.
    beside = settings(make(tmp_path, target, "SERVER_URL=http://ci-box.example:4300",
                           PREFECT_API_URL="http://127.0.0.1:4300/api"))
    assert beside["PREFECT_API_URL"] == "http://127.0.0.1:4300/api" and beside["PREFECT_UI_URL"] == "http://ci-box.example:4300"


@pytest.mark.parametrize("target", CLIENTS)
def test_without_a_server_url_the_links_follow_the_api_url(target, tmp_path):
    """Prefect makes the links from PREFECT_API_URL; make retrain keeps to the project's local server."""
    default = settings(make(tmp_path, target))
    assert default["PREFECT_UI_URL"] == "unset"
    assert default["PREFECT_API_URL"] == ("unset" if target == "retrain" else "http://127.0.0.1:4200/api")
    elsewhere = settings(make(tmp_path, target, "PREFECT_PORT=4300", PREFECT_API_URL="http://server:4200/api"))
    assert elsewhere == {**default, "PREFECT_API_URL": "http://server:4200/api"}


def test_make_server_gives_its_ui_the_address_people_browse_to(tmp_path):
    ran = make(tmp_path, "server", "PREFECT_PORT=4321")
    assert settings(ran)["PREFECT_SERVER_UI_API_URL"] == "http://127.0.0.1:4321/api"
    assert settings(ran)["PREFECT_UI_URL"] == "http://127.0.0.1:4321"
    assert "make server: the UI, and the links runs print, at http://127.0.0.1:4321" in ran.stdout
    ipv6 = settings(make(tmp_path, "server", "PREFECT_HOST=::1"))
    assert ipv6["PREFECT_SERVER_UI_API_URL"] == "http://[::1]:4200/api"
    named = settings(make(tmp_path, "server", "PREFECT_HOST=0.0.0.0", "SERVER_URL=http://ci-box.example:4200",
                          PREFECT_SERVER_API_AUTH_STRING="secret"))
    assert named["PREFECT_SERVER_UI_API_URL"] == "http://ci-box.example:4200/api"
    assert named["PREFECT_UI_URL"] == "http://ci-box.example:4200"


@pytest.mark.parametrize("host, url", [("0.0.0.0", "http://0.0.0.0:4200"), ("::", "http://[::]:4200")])
def test_make_server_on_every_interface_asks_for_the_address_people_browse_to(host, url, tmp_path):
    ran = make(tmp_path, "server", f"PREFECT_HOST={host}", PREFECT_SERVER_API_AUTH_STRING="secret")
    assert ran.returncode == 2 and "PREFECT_" not in ran.stdout, ran.stdout  # refused before the server starts
    said = [line for line in ran.stderr.splitlines() if line.startswith("make server:")]
    assert len(said) == 1 and f"SERVER_URL={url} is no address a browser can open" in said[0], ran.stderr
    assert f"make server PREFECT_HOST={host} SERVER_URL=http://" in said[0]
