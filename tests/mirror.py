"""A real HTTP mirror on 127.0.0.1 for download tests, with scripted misbehaviour."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class MirrorScript:
    files: dict[str, bytes] = field(default_factory=dict)
    failures_before_success: dict[str, int] = field(default_factory=dict)  # name -> 503s to send first
    truncate_to: dict[str, int] = field(default_factory=dict)  # name -> bytes actually sent
    stall_seconds: float = 0  # after a truncated body, hold the connection open this long
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Mirror:
    def __init__(self, script: MirrorScript):
        self.script = script
        handler = type("Handler", (_Handler,), {"script": script})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.stalled = threading.Event()  # set on exit, so stalled handlers end with the server
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stalled.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    script: MirrorScript

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/").split("/")[-1]
        self.script.requests[name] += 1
        if self.script.failures_before_success.get(name, 0) >= self.script.requests[name]:
            self.send_error(503, "try again")
            return
        body = self.script.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = self.script.truncate_to.get(name, len(body))
        self.wfile.write(body[:sent])
        self.wfile.flush()
        if sent < len(body) and self.script.stall_seconds:
            self.server.stalled.wait(self.script.stall_seconds)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass
