"""The embedded default: the Prefect server `make run` and `make retrain` use when PREFECT_API_URL names none.

One server, one UI: when `make server`'s address answers (CLASSIFIER_SERVER_URL, which the Makefile sets to
SERVER_URL, http://127.0.0.1:4200 by default), runs go there, beside the deployments. Otherwise the project's
own server is started in the background on first use and reused by every later run, so nothing has to be
started by hand: on that same address when its port is free (4200: the address deployments and workers use, so
`make deploy` and `make worker` find it too), else on the port it had before, else on the next free one after
the configured port; never a random port, so the "View at" links earlier runs printed keep opening. It keeps
its database and log under `.prefect/local-server/` and stays up until `make server-stop`. Its address and
pid are in `.prefect/local-server.json`; a stale file (the server died) is noticed by its health check and the
server restarted, on the same port.

Prefect's temporary server (what a flow gets with no PREFECT_API_URL) costs about 6 s per process, more than
the whole of a no-op run; this one starts once (10 s to a minute on a fresh home: it creates its database).

It is a private, loopback server with a SQLite file of its own: the database settings of a team server
(PREFECT_API_DATABASE_CONNECTION_URL and the rest) are removed from its environment, and it starts in its own
folder, so no prefect.toml or .env of the checkout points it at the team's database.

Its UI asks the API at the address in `/ui-settings`, which Prefect builds from settings, not from
`--port` (127.0.0.1:4200 unless told), so the server is told its own address
(PREFECT_SERVER_UI_API_URL, and PREFECT_UI_URL for the links it makes); one found serving another
(started by an older checkout) is restarted. Then every "View at" link a run prints opens the run.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

STATE_FILE = "local-server.json"
SERVER_DIR = "local-server"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
# Where `make server` listens unless told (the Makefile's SERVER_URL), and so where runs look for it first.
DEFAULT_SERVER_URL = "http://127.0.0.1:4200"
SERVER_URL_VARIABLE = "CLASSIFIER_SERVER_URL"
# How many ports after the configured one the background server may take when that one is busy.
FALLBACK_PORTS = 20
# How long a server whose port is taken may take to answer before runs start their own elsewhere.
BUSY_ANSWER_S = 20.0
# How often a waiting command says the server is still starting.
PROGRESS_EVERY_S = 10.0
# Database settings of a team server (docs/scaling-out.md): never the private server's.
DATABASE_SETTINGS = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_")


class LocalServerError(RuntimeError):
    """The local server could not be started; the message says why and where its log is."""


class CredentialsRefused(RuntimeError):
    """The server answers, but not to this client: its auth string is missing or wrong."""


def auth_header() -> dict[str, str]:
    """Prefect's basic-auth header for PREFECT_API_AUTH_STRING, as its own client sends it; none when unset."""
    secret = os.environ.get("PREFECT_API_AUTH_STRING")
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()} if secret else {}


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the Prefect API at `url` answers this client. A server with an auth string answers
    /health to anyone, so ask /admin/version, which it answers only with the credentials;
    a 401 raises CredentialsRefused rather than reading as "down"."""
    request = urllib.request.Request(f"{url}/admin/version", headers=auth_header())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        if error.code == 401:
            raise CredentialsRefused(url) from None
        return False
    except OSError:
        return False


def ui_api_url(url: str, timeout_s: float = 2.0) -> str | None:
    """The API address the UI of the server at `url` (an API URL) asks; None when it serves no UI."""
    try:
        with urllib.request.urlopen(f"{url.removesuffix('/api')}/ui-settings", timeout=timeout_s) as response:
            return json.load(response).get("api_url")
    except (OSError, ValueError):
        return None


def configured_url() -> str:
    """`make server`'s address (CLASSIFIER_SERVER_URL, else 127.0.0.1:4200), as an API URL."""
    url = (os.environ.get(SERVER_URL_VARIABLE) or DEFAULT_SERVER_URL).rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds (uvicorn sets SO_REUSEADDR): a port whose last server just stopped, its connections
        # in TIME_WAIT, is free to it; one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_of(url: str) -> int | None:
    return urllib.parse.urlsplit(url).port


def _choose_port(configured: str, previous: str | None) -> int:
    """The configured port when free, else the one this server had before, else the next free one after the
    configured port: stable, so the links earlier runs printed keep opening."""
    first = _port_of(configured) or 4200
    candidates = [first, *([_port_of(previous)] if previous and _port_of(previous) else []),
                  *range(first + 1, first + 1 + FALLBACK_PORTS)]
    for port in candidates:
        if _port_free(port):
            return port
    raise LocalServerError(f"ports {first} to {first + FALLBACK_PORTS} of 127.0.0.1 are all busy: stop what holds "
                           f"them, or set {SERVER_URL_VARIABLE} (make SERVER_URL=...) to another address")


def server_env(url: str, server_home: Path) -> dict[str, str]:
    """The private server's environment: its own home and UI address; nothing of a team server's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(DATABASE_SETTINGS)}
    # The UI (on whatever the environment says: the links runs print open it) asks the server's own address, not
    # Prefect's default of port 4200's; the settings' own names outrank PREFECT_UI_API_URL and PREFECT_UI_ENABLED.
    env.update({"PREFECT_HOME": str(server_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_UI_ENABLED": "true", "PREFECT_SERVER_UI_API_URL": url,
                "PREFECT_UI_URL": url.removesuffix("/api")})
    env.pop("PREFECT_API_URL", None)
    # Loopback only, and unauthenticated: a server's auth string exported for `make server` stays out.
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    return env


def _read_state(home: Path) -> dict | None:
    try:
        state = json.loads((home / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) and {"url", "pid"} <= set(state) else None


@contextmanager
def _locked(home: Path):
    """One starter at a time: two runs started together must not start two servers."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{STATE_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    """Whether `pid` is still our server: a dead server's pid may since belong to another program."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to asking the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return b"prefect" in command and b"server" in command


def _stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def ensure_server(home: Path, say: Callable[[str], None]) -> str:
    """The API URL runs use: `make server`'s when it answers, else the project's local server, started first
    when it is not up."""
    configured = configured_url()
    with _locked(home):
        state = _read_state(home)
        port = _port_of(configured) or 4200
        # make server's, or this project's own background server on that address.
        if healthy(configured):
            return _use(configured, state, say)
        own_up = bool(state) and healthy(state["url"])
        if not own_up:
            # A busy machine's server may be slow to answer: a taken port, or our own server's process alive, is
            # asked again, patiently, before a second server is started elsewhere.
            if not _port_free(port) and healthy(configured, timeout_s=BUSY_ANSWER_S):
                return _use(configured, state, say)
            own_up = bool(state) and _alive(state["pid"]) and healthy(state["url"], timeout_s=BUSY_ANSWER_S)
        if own_up:
            served = ui_api_url(state["url"])
            if served == state["url"]:
                return state["url"]
            say(f"restarting the project's local Prefect server: its UI asks {served or 'no address'} for the API, "
                f"not its own {state['url']}, so the links runs print open an error page")
        if state and _alive(state["pid"]):
            _stop(state["pid"])  # up but not answering (a wedged server holds the database), or a wrong UI
        server_home = home / SERVER_DIR
        server_home.mkdir(parents=True, exist_ok=True)
        log_path = server_home / "server.log"
        port = _choose_port(configured, state and state["url"])
        url = f"http://127.0.0.1:{port}/api"
        with open(log_path, "ab") as log:
            # Its own session: Ctrl-C on the run that started it must not stop the server. Its own folder: no
            # prefect.toml or .env of the checkout is read.
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env(url, server_home), cwd=server_home, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        say(f"starting a local Prefect server for this project at {url.removesuffix('/api')} "
            f"(database and log in {server_home}); later runs reuse it; stop it with `make server-stop`")
        started = time.monotonic()
        told = started
        while not healthy(url):
            now = time.monotonic()
            if process.poll() is not None or now - started > START_TIMEOUT_S:
                if process.poll() is None:
                    _stop(process.pid)
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise LocalServerError(f"the local Prefect server did not start (see {log_path}):\n" + "\n".join(tail))
            if now - told >= PROGRESS_EVERY_S:
                told = now
                say(f"  still starting the Prefect server ({now - started:.0f} s): {_starting_what(log_path)}")
            time.sleep(0.25)
        say(f"the Prefect server is up after {time.monotonic() - started:.0f} s; "
            f"its UI: {url.removesuffix('/api')}")
        (home / STATE_FILE).write_text(json.dumps({"url": url, "pid": process.pid}) + "\n", encoding="utf-8")
        return url


def _use(url: str, state: dict | None, say: Callable[[str], None]) -> str:
    """`url` answers: make server's (said once per run), or the project's own there (said nothing)."""
    if not (state and state["url"] == url):
        say(f"using the Prefect server at {url.removesuffix('/api')}")
    return url


def _starting_what(log_path: Path) -> str:
    """What a starting server is doing, from its log: a first start creates its database (most of the wait)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    if "Uvicorn running" in text or "Application startup complete" in text:
        return "serving, waiting for its API to answer"
    if "migration" in text.lower() or not (log_path.parent / "prefect.db").exists():
        return "creating its database (a first start only; later runs reuse it)"
    return "loading Prefect and opening its database"


def is_own_server(home: Path, url: str) -> bool:
    """Whether `url` is the project's own background server (which runs no one else's deployments)."""
    state = _read_state(home)
    return bool(state) and state["url"] == url


def stop_server(home: Path) -> str | None:
    """Stop the project's local server; returns its URL, or None when none was running."""
    with _locked(home):
        state = _read_state(home)
        (home / STATE_FILE).unlink(missing_ok=True)
        if not state or not _alive(state["pid"]):
            return None
        _stop(state["pid"])
        return state["url"]


def held_port_problem(home: Path, port: int) -> str | None:
    """Why `make server` cannot listen on `port`: the project's own background server holds it; None otherwise."""
    state = _read_state(home)
    if not state or _port_of(state["url"]) != port or not _alive(state["pid"]):
        return None
    return (f"the project's background Prefect server (started by make run or make retrain) already serves "
            f"{state['url'].removesuffix('/api')}: it is the one server, and make deploy, make worker and "
            f"make data-updated use it as it is; to run make server there instead, run make server-stop first")


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.server.local --held-port PORT`: exit 1, saying why, when the background server holds PORT."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.server.local", description=main.__doc__)
    parser.add_argument("--held-port", type=int, required=True)
    args = parser.parse_args(argv)
    problem = held_port_problem(Path(os.environ.get("PREFECT_HOME", ".prefect")), args.held_port)
    if problem:
        print(f"make server: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
