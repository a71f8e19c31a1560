"""A GitHub-style forge on 127.0.0.1 for the pull-request tests: the REST endpoints pipeline.forge calls,
answered the way GitHub documents them (paths, JSON bodies, 201/200, Link-header pages, 401 for a bad
token, 422 for a second pull request of one head and base), every request recorded, errors on demand.

Documented at docs.github.com/en/rest/pulls/pulls (list, create, update) and
docs.github.com/en/rest/issues/labels (add labels); Gitea's and Forgejo's differences are switches:
`ignore_head_filter`, `label_ids` (ids only, as before Gitea 1.20), `prefix="/api/v1"` with `version`.

`hostile_server` is a forge that misbehaves below HTTP (cut bodies, bad chunks, garbage status lines, huge
headers and bodies, a trickle, JSON of the wrong shape), as a broken proxy or a hostile host would answer.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Sent:
    method: str
    path: str  # with its query
    headers: dict[str, str]  # names in lower case
    body: object


@dataclass
class ForgeScript:
    token: str
    owner: str = "octo"
    name: str = "models"
    prefix: str = ""  # where the API lives on the host: "" (api.github.com), "/api/v3", "/api/v1"
    version: str | None = None  # answer GET {prefix}/version as Gitea and Forgejo do
    pulls: list[dict] = field(default_factory=list)
    page_size: int = 30  # GitHub's default per page; the smaller of it and the client's per_page
    ignore_head_filter: bool = False  # Gitea and Forgejo list every open pull request
    list_misses: int = 0  # this many list calls find nothing (a pull request opened meanwhile)
    label_ids: dict[str, int] | None = None  # labels taken by id only: a name is a 422
    failures: dict[str, tuple[int, dict]] = field(default_factory=dict)  # "POST /repos/o/r/pulls" -> answer
    redirect_to: str | None = None  # answer everything with a 307 to this host
    next_host: str | None = None  # Link headers name this host instead of the forge's own
    stall_s: float = 0  # hold every answer this long
    sent: list[Sent] = field(default_factory=list)

    def add(self, head: str, base: str = "main", title: str = "", owner: str | None = None) -> dict:
        """A new open pull request, numbered next, as GitHub's API shows it (what pipeline.forge reads, and more)."""
        number, owner = len(self.pulls) + 1, owner or self.owner
        pull = {"number": number, "state": "open", "title": title, "body": "",
                "html_url": f"https://forge.test/{self.owner}/{self.name}/pull/{number}",
                "head": {"ref": head, "label": f"{owner}:{head}", "repo": {"full_name": f"{owner}/{self.name}"}},
                "base": {"ref": base, "label": f"{self.owner}:{base}"}, "labels": []}
        self.pulls.append(pull)
        return pull


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that gave up (a timeout under test)
        pass


class FakeForge:
    def __init__(self, script: ForgeScript):
        self.script = script
        self.server = _QuietServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"script": script}))
        self.server.daemon_threads = True
        self.server.closing = threading.Event()  # ends stalled answers with the server
        self.host = f"http://127.0.0.1:{self.server.server_port}"
        self.api = self.host + script.prefix

    def calls(self) -> list[str]:
        """`METHOD path` of every request, query left out."""
        return [f"{sent.method} {sent.path.split('?')[0]}" for sent in self.script.sent]


@contextmanager
def fake_forge(script: ForgeScript) -> Iterator[FakeForge]:
    """The forge, serving on 127.0.0.1 until the block ends."""
    forge = FakeForge(script)
    # A short poll: shutdown() waits for the loop's next look, 0.5 s by default, in every test.
    threading.Thread(target=forge.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield forge
    finally:
        forge.server.closing.set()
        forge.server.shutdown()
        forge.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    script: ForgeScript

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.answer()

    def do_POST(self) -> None:  # noqa: N802
        self.answer()

    def do_PATCH(self) -> None:  # noqa: N802
        self.answer()

    def answer(self) -> None:
        script = self.script
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        script.sent.append(Sent(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if script.stall_s:
            self.server.closing.wait(script.stall_s)
        path, _, query = self.path.partition("?")
        if script.redirect_to:
            return self.reply(307, {}, {"Location": script.redirect_to + self.path})
        if self.command == "GET" and path == f"{script.prefix}/version" and script.version:
            return self.reply(200, {"version": script.version})  # Gitea's and Forgejo's: no token needed
        if self.headers.get("Authorization") != f"Bearer {script.token}":
            return self.reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        if (failure := script.failures.get(f"{self.command} {path}")) is not None:
            return self.reply(*failure)
        if not path.startswith(script.prefix):
            return self.reply(404, {"message": "Not Found"})
        self.route(path.removeprefix(script.prefix), urllib.parse.parse_qs(query), body)

    def route(self, path: str, query: dict, body) -> None:
        script = self.script
        repo = f"/repos/{script.owner}/{script.name}"
        if self.command == "GET" and path == f"{repo}/pulls":
            return self.list_pulls(query)
        if self.command == "POST" and path == f"{repo}/pulls":
            return self.create_pull(body)
        if self.command == "PATCH" and path.startswith(f"{repo}/pulls/"):
            return self.update_pull(int(path.rsplit("/", 1)[1]), body)
        if self.command == "POST" and path.startswith(f"{repo}/issues/") and path.endswith("/labels"):
            return self.add_labels(int(path.split("/")[-2]), body)
        if self.command == "GET" and path == f"{repo}/labels" and script.label_ids is not None:
            return self.page([{"id": number, "name": name} for name, number in script.label_ids.items()], query)
        return self.reply(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})

    def list_pulls(self, query: dict) -> None:
        script = self.script
        pulls = [pull for pull in script.pulls if pull["state"] == query.get("state", ["open"])[0]]
        if "head" in query and not script.ignore_head_filter:
            pulls = [pull for pull in pulls if pull["head"]["label"] == query["head"][0]]
        if script.list_misses > 0:
            script.list_misses -= 1
            pulls = []
        self.page(pulls, query)

    def page(self, items: list, query: dict) -> None:
        """One page of `items`, and GitHub's Link header: rel="next" and rel="last" while there are more."""
        size = min(self.script.page_size, int(query.get("per_page", ["30"])[0]))
        number = int(query.get("page", ["1"])[0])
        last = max(1, -(-len(items) // size))
        headers = {}
        if number < last:
            host = self.script.next_host or f"http://127.0.0.1:{self.server.server_port}"
            path = self.path.split("?")[0]

            def at(page: int) -> str:
                return f"{host}{path}?{urllib.parse.urlencode({**{k: v[0] for k, v in query.items()}, 'page': page})}"
            headers["Link"] = f'<{at(number + 1)}>; rel="next", <{at(last)}>; rel="last"'
        self.reply(200, items[(number - 1) * size:number * size], headers)

    def create_pull(self, body: dict) -> None:
        script = self.script
        if not body or not all(body.get(key) for key in ("title", "head", "base")):
            missing = {"resource": "PullRequest", "field": "head", "code": "missing_field"}
            return self.reply(422, {"message": "Validation Failed", "errors": [missing]})
        if any(pull["state"] == "open" and pull["head"]["label"] == f"{script.owner}:{body['head']}"
               and pull["base"]["ref"] == body["base"] for pull in script.pulls):
            return self.reply(422, {"message": "Validation Failed", "errors": [
                {"resource": "PullRequest", "code": "custom",
                 "message": f"A pull request already exists for {script.owner}:{body['head']}."}]})
        pull = script.add(body["head"], body["base"], body["title"])
        pull["body"] = body.get("body") or ""
        self.reply(201, pull)

    def update_pull(self, number: int, body: dict) -> None:
        for pull in self.script.pulls:
            if pull["number"] == number:
                pull.update({key: body[key] for key in ("title", "body", "state") if key in (body or {})})
                return self.reply(200, pull)
        self.reply(404, {"message": "Not Found"})

    def add_labels(self, number: int, body: dict) -> None:
        script = self.script
        wanted = (body or {}).get("labels") or []
        if script.label_ids is not None:
            if not all(isinstance(item, int) for item in wanted):
                return self.reply(422, {"message": "[]: json: cannot unmarshal string into Go value of type int64"})
            wanted = [name for name, number in script.label_ids.items() if number in wanted]
        for pull in script.pulls:
            if pull["number"] == number:
                names = {label["name"] for label in pull["labels"]} | set(wanted)
                pull["labels"] = [{"name": name} for name in sorted(names)]
                return self.reply(200, pull["labels"])
        self.reply(404, {"message": "Not Found"})

    def reply(self, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# ---------------------------------------------------------------- a forge that misbehaves on the wire


class HostileServer:
    """A server on 127.0.0.1 that reads each request's head (and body, by its Content-Length) and writes the
    bytes `answer(head)` gives, piece by piece, then closes: a broken proxy or a hostile host, below HTTP.
    A generator may sleep between pieces (`trickle`); every request's head is kept in `heads`."""

    def __init__(self, answer, read_request: bool = True):
        self.answer, self.heads, self.read_request = answer, [], read_request
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def serve(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self.reply, args=(connection,), daemon=True).start()

    def reply(self, connection: socket.socket) -> None:
        with connection:
            received = b"" if self.read_request else b"\r\n\r\n"  # not HTTP (a TLS hello): answer at once
            try:
                while b"\r\n\r\n" not in received and len(received) < 2**20:
                    if not (more := connection.recv(65536)):
                        return
                    received += more
                head, _, body = received.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                while length and len(body) < int(length[1]) and (more := connection.recv(65536)):
                    body += more
                self.heads.append(head)
                pieces = self.answer(head)
                for piece in [pieces] if isinstance(pieces, bytes) else pieces:
                    if self.closing.is_set():
                        return
                    connection.sendall(piece)
            except OSError:  # the client gave up, as it should
                return


@contextmanager
def hostile_server(answer, read_request: bool = True) -> Iterator[HostileServer]:
    server = HostileServer(answer, read_request)
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        yield server
    finally:
        server.closing.set()
        server.listener.close()


def http_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 answer as bytes, its Content-Length the body's unless `headers` says otherwise (None: none)."""
    fields = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close",
              **(headers or {})}
    lines = [f"HTTP/1.1 {status} Whatever"] + [f"{name}: {value}" for name, value in fields.items() if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(payload, status: int = 200) -> bytes:
    return http_answer(status, json.dumps(payload).encode())


def authorization_of(head: bytes) -> bytes:
    found = re.search(rb"(?im)^authorization:[^\r\n]*", head)
    return found[0] if found else b""


def trickle(data: bytes, every_s: float):
    """`data` a byte at a time, `every_s` apart: each read of the client's is quick, the whole is not."""
    for index in range(len(data)):
        time.sleep(every_s)
        yield data[index:index + 1]


def endless(head: bytes, piece: bytes = b"x" * 65536):
    """A 200 whose JSON body never ends (a huge answer): the client must stop reading."""
    yield http_answer(200, b"", {"Content-Length": str(2**40)})
    yield b"["
    while True:
        yield piece
