"""The pull-request step against forges that misbehave on the wire (tests/forge_server.py's hostile_server on
127.0.0.1): a body cut short, a bad chunk, a garbage status line, one that echoes the request's Authorization
header, huge headers, JSON of the wrong shape or nested past Python's recursion limit, a trickle, a huge body
and a huge error message. Each is one ForgeError from pipeline.forge (never another exception), bounded in
time and length, holding no control character and no token; the api_base probe falls back and sends no
token; and the retrain's step (pipeline.retrain.pull_request.open_pull_request) turns any failure, even a
bug's, into one warning and a note, never an exception."""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.parse
from types import SimpleNamespace

import pytest

from pipeline.forge.client import Forge, api_base
from pipeline.forge.address import Project
from pipeline.forge.transport import MAX_LOGGED, ForgeError, loggable
from pipeline.retrain import pull_request
from tests.forge_server import authorization_of, endless, hostile_server, http_answer, json_answer, trickle

TOKEN = f"ghp_test{secrets.token_hex(12)}"
BRANCH = "retrain/20261204T030000Z-0b5e7c2a4f7d"
PROJECT = Project("https://forge.test", "octo", "models")
CALL_S = 1.0  # the whole-call deadline these tests give the client
PULL = {"number": 7, "html_url": "https://forge.test/octo/models/pull/7"}


def by_method(on_get: bytes, on_other: bytes):
    return lambda head: on_get if head.startswith(b"GET ") else on_other


HOSTILE = {
    "a body cut short": lambda head: http_answer(200, b'[{"number": 1', {"Content-Length": "5000"}),
    "a bad chunk": lambda head: http_answer(200, b"zz\r\n[]\r\n0\r\n\r\n",
                                            {"Transfer-Encoding": "chunked", "Content-Length": None}),
    "a garbage status line": lambda head: b"HELLO FORGE\r\n\r\n",
    "a status line that echoes the request": lambda head: b"HTTP/1.1 " + head.replace(b"\r\n", b" | ") + b"\r\n\r\n",
    "a reason phrase that echoes the Authorization header":
        lambda head: b"HTTP/1.1 401 " + authorization_of(head) + b"\r\nContent-Length: 2\r\n\r\n{}",
    "a message that echoes the Authorization header":
        lambda head: json_answer({"message": authorization_of(head).decode()}, 403),
    "a header line over 64 KiB": lambda head: http_answer(200, b"[]", {"X-Padding": "a" * 200_000}),
    "over 100 headers": lambda head: http_answer(200, b"[]", {f"X-Header-{n}": "v" for n in range(150)}),
    "a list of true": lambda head: json_answer([True]),
    "head as a string": by_method(json_answer([{**PULL, "head": f"octo:{BRANCH}", "base": "main"}]),
                                  json_answer({"number": "abc"}, 201)),
    "number as a string": by_method(json_answer([]), json_answer({"number": "abc", "html_url": PULL["html_url"]}, 201)),
    "errors as a number": by_method(json_answer([]), json_answer({"message": "Validation Failed", "errors": 5}, 422)),
    "an html_url with control characters": by_method(json_answer([]),
                                                     json_answer({"number": 7, "html_url": "https://x/\x1b[31m"}, 201)),
    "JSON nested past the recursion limit": lambda head: http_answer(200, b"[" * 100_000 + b"]" * 100_000),
    "a trickle, a byte every 0.3 s": lambda head: trickle(json_answer([]), 0.3),
    "a huge body": endless,
    "a huge error message": lambda head: json_answer({"message": "no " * 4_000_000}, 403),
}


def assert_clean(text: str) -> None:
    assert TOKEN not in text and TOKEN[4:] not in text
    assert not any(ord(character) < 32 or 0x7f <= ord(character) < 0xa0 for character in text), repr(text)


@pytest.mark.parametrize("behaviour", HOSTILE)
def test_each_misbehaviour_is_one_bounded_forge_error_without_the_token(behaviour):
    with hostile_server(HOSTILE[behaviour]) as server:
        forge = Forge(server.url, PROJECT, TOKEN, timeout=CALL_S)
        started = time.monotonic()
        with pytest.raises(ForgeError) as raised:
            forge.open_or_update(BRANCH, "main", "title", "body")
        took = time.monotonic() - started
    said = str(raised.value)
    assert took < 4 * CALL_S, f"{behaviour}: {took:.1f} s"  # a few calls, each within its deadline
    assert len(said) < 2 * MAX_LOGGED + 200, said[:500]
    for text in (said, repr(raised.value), str(raised.value.args), repr(forge)):
        assert_clean(text)


@pytest.mark.parametrize("behaviour", HOSTILE)
def test_the_api_probe_falls_back_and_sends_no_token(behaviour):
    with hostile_server(HOSTILE[behaviour]) as server:
        started = time.monotonic()
        assert api_base(Project(server.url, "octo", "models"), within_s=CALL_S) == f"{server.url}/api/v3"
        assert time.monotonic() - started < 2 * CALL_S
    assert all(b"authorization" not in head.lower() for head in server.heads)


def test_a_trickle_is_cut_at_the_whole_calls_deadline_not_at_each_read():
    with hostile_server(lambda head: trickle(json_answer([]), 0.2)) as server:
        started = time.monotonic()
        with pytest.raises(ForgeError, match=r"no whole answer from http://127\.0\.0\.1:\d+ within 1 s"):
            Forge(server.url, PROJECT, TOKEN, timeout=1.0).find_open(BRANCH, "main")
        assert time.monotonic() - started < 1.8  # each read took 0.2 s; the whole was stopped at 1 s


def test_all_the_calls_of_a_step_stop_at_its_budget():
    """Every call within its own deadline, and all of them within the step's: a forge slow on each page
    cannot hold the retrain for MAX_PAGES deadlines."""
    def slow_pages(head: bytes):
        path = head.split(b" ")[1].decode()
        time.sleep(0.3)
        yield http_answer(200, b"[]", {"Link": f'<http://{host}{path}&page=2>; rel="next"'})
    with hostile_server(slow_pages) as server:
        host = server.url.removeprefix("http://")
        started = time.monotonic()
        with pytest.raises(ForgeError, match="took their 1 s"):
            Forge(server.url, PROJECT, TOKEN, timeout=5, budget_s=1).find_open(BRANCH, "main")
        assert time.monotonic() - started < 2


# Ids of their own: pytest-xdist's workers each collect the tests, and a random token in an id differs between them.
@pytest.mark.parametrize("token", [f"{TOKEN}\n", f"{TOKEN[:10]}\r\n{TOKEN[10:]}", f"{TOKEN[:10]} {TOKEN[10:]}",
                                   f"{TOKEN}\x00", f"{TOKEN}é", ""],
                         ids=["newline", "inner-crlf", "space", "nul", "non-ascii", "empty"])
def test_a_token_no_header_can_carry_is_refused_before_anything_is_sent(token):
    with hostile_server(lambda head: json_answer([])) as server:
        with pytest.raises(ForgeError, match="forge token") as raised:
            Forge(server.url, PROJECT, token)
    assert server.heads == []
    for half in filter(None, token.split()):
        assert half not in str(raised.value)


@pytest.mark.parametrize("api", ["http://forge.example/api/v3", "http://10.0.0.8:3000/api/v1", "ftp://forge.example"])
def test_the_token_goes_over_https_only_loopback_aside(api):
    with pytest.raises(ForgeError, match="not https"):
        Forge(api, PROJECT, TOKEN)
    for loopback in ("http://127.0.0.1:3000/api/v1", "http://[::1]:3000/api/v1", "http://localhost/api/v3",
                     "https://forge.example/api/v3"):
        Forge(loopback, PROJECT, TOKEN)


# ---------------------------------------------------------------- the retrain's step, its one boundary


@pytest.fixture
def step(monkeypatch, tmp_path, caplog):
    """open_pull_request as the retrain calls it, outside a flow run: a workspace with a dvc.lock, the
    origin a forge project, the token in the environment; returns (note, warnings) for an API address."""
    monkeypatch.setattr(pull_request, "get_run_logger", lambda: logging.getLogger("retrain"))
    monkeypatch.setenv(pull_request.REPO_ENV, "octo/models")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    decision = SimpleNamespace(champion={"accuracy": 0.9}, challenger={"accuracy": 0.95})

    def run(api: str, token: str = TOKEN):
        monkeypatch.setenv(pull_request.API_ENV, api)
        monkeypatch.setenv(pull_request.TOKEN_ENV, token)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="retrain"):
            note = pull_request.open_pull_request(tmp_path, "https://forge.test/octo/models.git", None, "main",
                                                  BRANCH, decision, "# the judgement\n")
        return note, [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    return run


@pytest.mark.parametrize("behaviour", ["a status line that echoes the request", "JSON nested past the recursion limit",
                                       "head as a string", "a huge error message"])
def test_the_step_turns_a_hostile_forge_into_one_warning(step, behaviour):
    with hostile_server(HOSTILE[behaviour]) as server:
        note, warnings = step(server.url)
    assert note.url is None and warnings == [note.line]
    assert note.line.startswith("no pull request (") and note.line.endswith(
        f"; open one at https://forge.test/octo/models/compare/main...{BRANCH}?expand=1")
    assert_clean(note.line)


def test_the_step_refuses_a_token_with_a_line_break_in_one_warning(step):
    with hostile_server(lambda head: json_answer([])) as server:
        note, warnings = step(server.url, token=f"{TOKEN[:12]}\n{TOKEN[12:]}")
    assert server.heads == [] and warnings == [note.line] and "line break" in note.line
    assert TOKEN[:12] not in note.line and TOKEN[12:] not in note.line


def test_any_other_failure_in_the_step_is_one_warning_naming_its_type(step, monkeypatch):
    """The boundary holds for what no check foresaw (here a bug that quotes the token): its type, an
    excerpt cut and cleaned, the token blanked."""
    def broken(*args, **kwargs):
        raise TypeError(f"'NoneType' object is not subscriptable\n(token {TOKEN!r}) " + "x" * 5000)
    monkeypatch.setattr(pull_request.Forge, "open_or_update", broken)
    note, warnings = step("http://127.0.0.1:9")
    assert note.url is None and warnings == [note.line]
    assert note.line.startswith("no pull request (TypeError: 'NoneType' object is not subscriptable (token '***') x")
    assert len(note.line) < 800
    assert_clean(note.line)


def test_the_api_probe_is_inside_the_boundary(step, monkeypatch):
    def probe(project):  # a failure no check foresaw, before the Forge is made
        return json.loads("[" * 100_000)
    monkeypatch.setattr(pull_request, "api_base", probe)
    note, warnings = step("")  # no CLASSIFIER_FORGE_API: the host is asked
    assert note.url is None and warnings == [note.line] and note.line.startswith("no pull request (RecursionError: ")


def test_the_token_is_blanked_in_every_form_an_error_can_quote_it():
    token = "ghp_q'u\"o\\te%d&x"  # a header can carry each of these characters; repr, JSON and URLs escape them
    quoted = [token, repr(token), repr(token.encode()), json.dumps(token), urllib.parse.quote(token, safe=""),
              urllib.parse.quote_plus(token), f"Bearer {token}"]
    for form in quoted:
        said = loggable(f"the forge said {form} and more", token)
        left = said.replace("***", "").replace("Bearer", "").removeprefix("the forge said ").removesuffix(" and more")
        assert "***" in said and left.strip(" b'\"") == "", said  # at most repr's or JSON's own quotes remain
    assert loggable("echoed 'authorization: token abc123def456'") == "echoed 'authorization: ***'"  # anyone's
    assert loggable("x" * 1000 + token, token).endswith("…")  # cut after blanking: no half of it is left
    assert loggable("Bearer tokens expire; token invalid") == "Bearer tokens expire; token invalid"  # words, not secrets


def test_the_environments_proxy_is_used_as_urllib_would(monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with hostile_server(lambda head: json_answer([])) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        assert Forge("http://127.0.0.1:9/api/v3", PROJECT, TOKEN, timeout=CALL_S).find_open(BRANCH, "main") is None
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        with pytest.raises(ForgeError, match="cannot be reached"):  # port 9, asked directly: nothing there
            Forge("http://127.0.0.1:9/api/v3", PROJECT, TOKEN, timeout=CALL_S).find_open(BRANCH, "main")
    [head] = proxy.heads
    assert head.startswith(b"GET http://127.0.0.1:9/api/v3/repos/octo/models/pulls?")


def test_a_tls_handshake_that_trickles_is_cut_at_the_deadline_too():
    """A server hello a byte at a time (a TLS record header promising 16 KiB): the handshake, too, ends
    at the call's deadline."""
    hello = b"\x16\x03\x03\x40\x00" + b"\x02" * 16384
    with hostile_server(lambda head: trickle(hello, 0.2), read_request=False) as server:
        started = time.monotonic()
        with pytest.raises(ForgeError, match=r"no whole answer from https://127\.0\.0\.1:\d+ within 1 s"):
            Forge(server.url.replace("http://", "https://"), PROJECT, TOKEN, timeout=1.0).find_open(BRANCH, "main")
        assert time.monotonic() - started < 1.8
