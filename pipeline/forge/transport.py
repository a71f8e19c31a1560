"""One HTTP exchange with a forge, bounded whatever the other end does.

- A deadline for the whole call: connecting, the TLS handshake, sending, the status line and headers, and
  the body. The sockets are httpcore's, through a network backend (httpcore's documented hook) that cuts
  every wait to what is left of the call: a socket timeout alone bounds one read, and a server that
  trickles a byte a second would hold the call, and the retrains queued behind it, for ever. (Resolving
  the host's name is the system resolver's, bounded by its own timeouts.)
- A byte cap on what is read; headers are capped by h11 (100 KiB).
- Redirects followed only to the same origin, the method kept (307, 308) or a GET's (301, 302, 303):
  a request to another host would carry the Authorization header with it.
- The proxy of the environment (`https_proxy`, `no_proxy`), as urllib found it.
- Every failure is a ForgeError naming the call, with the forge's own words cut to MAX_LOGGED characters,
  control characters removed, and the token blanked in every form it can be echoed in (itself, escaped by
  repr or JSON, percent-encoded, after `Authorization:` or `Bearer`).
"""

from __future__ import annotations

import json
import re
import ssl
import time
import unicodedata
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus

import httpcore

MAX_ANSWER_BYTES = 8 * 2**20  # a page of 100 GitHub pull requests is about 2.5 MB
MAX_ERROR_BYTES = 64 * 2**10  # an error's body is read for its message only
MAX_LOGGED = 300  # characters of the forge's own words in a message
MAX_REDIRECTS = 3
_CREDENTIALS = (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\r\n\"']+"),
                re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"))


class ForgeError(Exception):
    """The forge said no (its status and its `message`), or could not be reached. Never holds the token."""

    def __init__(self, what: str, status: int | None = None):
        super().__init__(what)
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    json: object  # None for an empty body
    links: dict[str, str]  # the Link header's URLs by rel


# ---------------------------------------------------------------- words (pure)


def redacted(text: str, secret: str = "") -> str:
    """`text` with `secret` blanked as itself and as repr, JSON and a URL would escape it, and whatever
    follows an `Authorization:` or a `Bearer` (an echo of a header, whoever's)."""
    if secret:
        forms = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1], json.dumps(secret)[1:-1],
                 urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    for pattern in _CREDENTIALS:
        text = pattern.sub(r"\1***", text)
    return text


def loggable(text: str, secret: str = "", limit: int = MAX_LOGGED) -> str:
    """What a forge (or an error about its answer) said, fit for one line of a log: the secret blanked
    first (so no cut leaves half of it), control and formatting characters dropped, spaces collapsed, cut."""
    text = redacted(text, secret)
    text = "".join(" " if unicodedata.category(character)[0] in "CZ" else character for character in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def forge_message(data: bytes, secret: str = "") -> str:
    """The forge's own words in an error's body: its `message`, and GitHub's `errors` (strings, or objects
    with a message or code); "" for a body of any other shape."""
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(answer, dict):
        return ""
    errors = answer.get("errors") if isinstance(answer.get("errors"), list) else []
    details = [item if isinstance(item, str) else item.get("message") or item.get("code")
               for item in errors[:5] if isinstance(item, (str, dict))]
    return loggable("; ".join(part for part in [answer.get("message"), *details] if isinstance(part, str) and part),
                 secret)


def links(header: str) -> dict[str, str]:
    """`<url>; rel="next", <url>; rel="last"` as {"next": url, "last": url}."""
    return {rel: url for url, rel in re.findall(r'<([^>]+)>\s*;\s*rel="?([\w-]+)"?', header)}


def _phrase(status: int) -> str:
    """The status's standard words: ours, not the forge's (its status line can hold anything)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(no such status)"


def origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


# ---------------------------------------------------------------- the exchange


def exchange(method: str, url: str, headers: dict[str, str], body: bytes | None, within_s: float,
             secret: str = "", max_bytes: int = MAX_ANSWER_BYTES) -> Answer:
    """`method url` with `headers` and `body`, done within `within_s` seconds: a 2xx answer's JSON and links.
    ForgeError for anything else, the forge's status and words in it."""
    request = f"{method} {loggable(urllib.parse.urlsplit(url).path, secret, 120)}"
    deadline = time.monotonic() + within_s
    try:
        for _ in range(MAX_REDIRECTS + 1):
            status, answer_headers, data = _once(method, url, headers, body, deadline, max_bytes)
            location = answer_headers.get("location")
            if status not in (301, 302, 303, 307, 308) or not location:
                break
            target = urllib.parse.urljoin(url, location)
            if origin(target) != origin(url):
                raise ForgeError(f"{request}: {status}, redirected to another host ({loggable(origin(target), secret)});"
                                 " not followed", status)
            if status not in (307, 308):
                method, body = "GET", None
            url = target
        else:
            raise ForgeError(f"{request}: more than {MAX_REDIRECTS} redirects; not followed", status)
    except ForgeError:
        raise
    except httpcore.TimeoutException:
        raise ForgeError(f"{request}: no whole answer from {origin(url)} within {within_s:g} s") from None
    except httpcore.ConnectError as error:
        raise ForgeError(f"{request}: {origin(url)} cannot be reached ({loggable(str(error), secret)})") from None
    except Exception as error:  # a cut body, a bad chunk, a garbage status line, headers past h11's cap...
        raise ForgeError(f"{request}: {type(error).__name__}: {loggable(str(error), secret)}") from None
    if not 200 <= status < 300:
        reason = forge_message(data, secret)
        raise ForgeError(f"{request}: {status} {_phrase(status)}{f': {reason}' if reason else ''}", status)
    try:
        answer = json.loads(data) if data.strip() else None
    except (ValueError, RecursionError) as error:
        raise ForgeError(f"{request}: the answer is not JSON ({type(error).__name__}: "
                         f"{loggable(str(error), secret, 80)})", status) from None
    return Answer(status, answer, links(answer_headers.get("link", "")))


def _once(method: str, url: str, headers: dict[str, str], body: bytes | None, deadline: float,
          max_bytes: int) -> tuple[int, dict[str, str], bytes]:
    """One request, no redirect followed: the status, the headers (names in lower case) and the body, read
    up to `max_bytes` for a 2xx answer (past it: ForgeError) and MAX_ERROR_BYTES for another (past it: cut)."""
    left = _Clock(deadline)
    with _pool(url, left) as pool, pool.stream(method, url, headers=list(headers.items()), content=body,
                                               extensions={"timeout": left.timeouts()}) as response:
        answer_headers: dict[str, str] = {}
        for name, value in response.headers:
            key = name.decode("latin-1").lower()
            answer_headers[key] = ", ".join(filter(None, (answer_headers.get(key), value.decode("latin-1"))))
        limit = max_bytes if 200 <= response.status < 300 else MAX_ERROR_BYTES
        data = bytearray()
        for chunk in response.iter_stream():
            data += chunk
            if len(data) > limit:
                if limit == MAX_ERROR_BYTES:
                    break
                raise ForgeError(f"{method} {urllib.parse.urlsplit(url).path}: the answer ran past "
                                 f"{max_bytes // 2**20} MiB; not read further", response.status)
        return response.status, answer_headers, bytes(data)


class _Overdue(httpcore.TimeoutException):
    """The call's deadline passed."""


class _Clock:
    """What is left of one call's time, for each wait of its sockets."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self, timeout: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Overdue("the call's deadline passed")
        return left if timeout is None else min(timeout, left)

    def timeouts(self) -> dict[str, float]:
        left = self.left()
        return {"connect": left, "read": left, "write": left, "pool": left}


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, clock: _Clock):
        self._stream, self._clock = stream, clock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._clock.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._clock.left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # The ssl module bounds a whole handshake by the socket's timeout, so this bounds it by the call's.
        tls = self._stream.start_tls(ssl_context, server_hostname, self._clock.left(timeout))
        return _DeadlineStream(tls, self._clock)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each wait cut to what is left of the call."""

    def __init__(self, clock: _Clock):
        self._backend, self._clock = httpcore.SyncBackend(), clock

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, self._clock.left(timeout), local_address, socket_options)
        return _DeadlineStream(stream, self._clock)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.UnsupportedProtocol("a forge is reached over TCP")

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._clock.left()))


def _pool(url: str, clock: _Clock) -> httpcore.ConnectionPool:
    """A pool for one call (no connection outlives it), through the environment's proxy for `url`'s
    host where there is one, as urllib chose it."""
    context = ssl.create_default_context()  # the system's certificates, as urllib used
    backend = _DeadlineBackend(clock)
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return httpcore.ConnectionPool(ssl_context=context, network_backend=backend)
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if proxy_parts.scheme not in ("http", "https"):
        raise ForgeError(f"the {parts.scheme} proxy {origin(proxy)} is not an http(s) proxy; not used")
    auth = ((urllib.parse.unquote(proxy_parts.username), urllib.parse.unquote(proxy_parts.password or ""))
            if proxy_parts.username else None)
    return httpcore.HTTPProxy(proxy_url=f"{proxy_parts.scheme}://{proxy_parts.netloc.rpartition('@')[2]}",
                              proxy_auth=auth, ssl_context=context, network_backend=backend)
