"""The embedded default: a Prefect server of the project's own, started in the background on
first use and reused by every later run, so nothing has to be started by hand.

Prefect's temporary server (what a flow gets with no PREFECT_API_URL) costs about 6 s per
process, more than the whole of a no-op run. This one starts once (about 10 s), listens on
a free port of 127.0.0.1, keeps its database and log under `.prefect/local-server/`, and
stays up until `make server-stop`. Its address and pid are in `.prefect/local-server.json`;
a stale file (the server died) is noticed by its health check and the server restarted.

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
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

STATE_FILE = "local-server.json"
SERVER_DIR = "local-server"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    """The API URL of the project's local server, starting it first when it is not up."""
    with _locked(home):
        state = _read_state(home)
        if state and healthy(state["url"]):
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
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        # The UI (on whatever the environment says: the links runs print open it) asks the server's own address, not
        # Prefect's default of port 4200's; the settings' own names outrank PREFECT_UI_API_URL and PREFECT_UI_ENABLED.
        env = {**os.environ, "PREFECT_HOME": str(server_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DO_NOT_TRACK": "1", "PREFECT_SERVER_UI_ENABLED": "true", "PREFECT_SERVER_UI_API_URL": url,
               "PREFECT_UI_URL": url.removesuffix("/api")}
        env.pop("PREFECT_API_URL", None)
        # Loopback only, and unauthenticated: a server's auth string exported for `make server` stays out.
        env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
        with open(log_path, "ab") as log:
            # Its own session: Ctrl-C on the run that started it must not stop the server.
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        say(f"starting a local Prefect server for this project at {url.removesuffix('/api')} "
            f"(database and log in {server_home}); later runs reuse it; stop it with `make server-stop`")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    _stop(process.pid)
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise LocalServerError(f"the local Prefect server did not start (see {log_path}):\n" + "\n".join(tail))
            time.sleep(0.25)
        (home / STATE_FILE).write_text(json.dumps({"url": url, "pid": process.pid}) + "\n", encoding="utf-8")
        return url


def stop_server(home: Path) -> str | None:
    """Stop the project's local server; returns its URL, or None when none was running."""
    with _locked(home):
        state = _read_state(home)
        (home / STATE_FILE).unlink(missing_ok=True)
        if not state or not _alive(state["pid"]):
            return None
        _stop(state["pid"])
        return state["url"]
