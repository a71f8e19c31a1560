"""A promoted retrain opens its pull request: the real flow, a bare origin on disk, and a GitHub-style forge
on 127.0.0.1 (tests/forge_server.py) that the origin is said to be, through CLASSIFIER_FORGE_API and
CLASSIFIER_FORGE_REPO. The pull request's URL reaches the state message, the event and the artifact, and
the token reaches none of them nor the run's logs; a forge that refuses, or misbehaves on the wire (a status
line that echoes the request's Authorization header, JSON nested past Python's recursion limit), leaves the
run Promoted, with one warning. tests/unit/test_forge_hostile.py has every other misbehaviour, without a run."""

from __future__ import annotations

import json
import logging
import secrets
import time

import httpx
import pytest
from prefect.settings import PREFECT_UI_URL

from pipeline.retrain.flow import PROMOTED_EVENT, retrain
from pipeline.retrain.pull_request import API_ENV, REPO_ENV, TOKEN_BLOCK, TOKEN_ENV, forge_token
from tests.conftest import commit_all, git, write_params
from tests.forge_server import ForgeScript, fake_forge, hostile_server
from tests.unit.test_forge_hostile import HOSTILE
from tests.pipeline.test_retrain import events_of

pytestmark = pytest.mark.slow
TOKEN = f"ghp_fakesecretXYZ{secrets.token_hex(8)}"


@pytest.fixture
def origin(reproduced_project, tmp_path):
    """A bare origin whose main asks for three epochs: a champion a retrain beats (as test_retrain.py's)."""
    write_params(reproduced_project, **{"train.epochs": 3})
    commit_all(reproduced_project, "train longer")
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(reproduced_project), str(bare))
    return bare


def api_post(path: str, query: dict) -> list[dict]:
    from prefect.settings import PREFECT_API_URL

    return httpx.post(f"{PREFECT_API_URL.value()}{path}", json=query).raise_for_status().json()


def run_id(state) -> str:
    return str(state.state_details.flow_run_id)


def logs_of(state, containing: str, limit_s: float = 30) -> list[dict]:
    """The run's logs, once one holds `containing` (Prefect sends logs in batches)."""
    deadline = time.monotonic() + limit_s
    while True:
        logs = api_post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id(state)]}}, "limit": 200})
        if any(containing in log["message"] for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def artifacts_of(state) -> list[dict]:
    return api_post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id(state)]}}})


def retrain_against(api: str, origin, tmp_path, monkeypatch):
    monkeypatch.setenv(API_ENV, api)
    monkeypatch.setenv(REPO_ENV, "octo/models")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return retrain(repo=str(origin), base="main", workspace_root=str(tmp_path / "ws"), return_state=True)


def test_a_promotion_opens_its_pull_request(origin, tmp_path, prefect_harness, monkeypatch):
    script = ForgeScript(token=TOKEN)
    with fake_forge(script) as forge:
        state = retrain_against(forge.api, origin, tmp_path, monkeypatch)

    assert state.is_completed() and state.name == "Promoted", state
    result = state.result()
    branch, url = result["branch"], "https://forge.test/octo/models/pull/1"
    assert result["pull_request"] == url and state.message.endswith(f"; pull request {url} (opened)")
    [pull] = script.pulls
    assert (pull["head"]["ref"], pull["base"]["ref"], pull["labels"]) == (branch, "main", [{"name": "retrain"}])
    assert pull["title"].startswith("Retrain: params (train.epochs); accuracy ") and " -> " in pull["title"]
    assert pull["body"].startswith("# Retrain against the champion at `main`")
    assert f"]({PREFECT_UI_URL.value()}/runs/flow-run/{run_id(state)})" in pull["body"]  # as "View at" links it
    assert f"`{branch}`" in pull["body"]
    assert forge.calls() == ["GET /repos/octo/models/pulls", "POST /repos/octo/models/pulls",
                             "POST /repos/octo/models/issues/1/labels"]

    [promoted] = events_of(state, PROMOTED_EVENT)
    assert promoted["payload"]["pull_request"] == url
    [artifact] = [item for item in artifacts_of(state) if item["key"] == "retrain-comparison"]
    assert f"pull request {url} (opened)" in artifact["data"]
    logs = logs_of(state, url)
    assert any(f"pull request {url} (opened)" in log["message"] for log in logs)
    seen = [state.message, json.dumps(result), json.dumps(promoted), json.dumps(artifact), json.dumps(logs)]
    assert not [text for text in seen if TOKEN in text]
    assert git(origin, "branch", "--list", "retrain/*", "--format=%(refname:short)").split() == [branch]


def test_a_forge_that_refuses_leaves_the_run_promoted_with_a_warning(origin, tmp_path, prefect_harness, monkeypatch):
    script = ForgeScript(token=TOKEN)
    script.failures["POST /repos/octo/models/pulls"] = (403, {
        "message": "Resource not accessible by personal access token",
        "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"})
    with fake_forge(script) as forge:
        state = retrain_against(forge.api, origin, tmp_path, monkeypatch)
        compare = f"{forge.host}/octo/models/compare/main...{state.result()['branch']}?expand=1"

    assert state.is_completed() and state.name == "Promoted", state
    assert state.result()["pull_request"] is None and script.pulls == []
    line = ("no pull request (POST /repos/octo/models/pulls: 403 Forbidden: Resource not accessible by personal "
            f"access token); open one at {compare}")
    assert state.message.endswith(f"; {line}")
    [promoted] = events_of(state, PROMOTED_EVENT)
    assert promoted["payload"]["pull_request"] is None
    logs = logs_of(state, "403 Forbidden")
    assert [log["message"] for log in logs if log["level"] == 30 and "403" in log["message"]] == [line]  # one warning
    assert not [text for text in (state.message, json.dumps(promoted), json.dumps(logs)) if TOKEN in text]
    branch = state.result()["branch"]
    assert git(origin, "branch", "--list", "retrain/*", "--format=%(refname:short)").split() == [branch]


@pytest.mark.parametrize("behaviour", ["a status line that echoes the request", "JSON nested past the recursion limit"])
def test_a_forge_that_misbehaves_on_the_wire_leaves_the_run_promoted_with_one_warning(
        behaviour, origin, tmp_path, prefect_harness, monkeypatch):
    """Before the step had its boundary, both ended the run Failed after its branch was pushed (an
    http.client BadStatusLine holding the token; a RecursionError), with no event and no artifact."""
    with hostile_server(HOSTILE[behaviour]) as server:
        state = retrain_against(server.url, origin, tmp_path, monkeypatch)
    assert any(TOKEN.encode() in head for head in server.heads)  # it was sent, to the API only

    assert state.is_completed() and state.name == "Promoted", state
    result = state.result()
    assert result["result"] == "promoted" and result["pull_request"] is None
    compare = f"{server.url}/octo/models/compare/main...{result['branch']}?expand=1"
    assert state.message.endswith(f"; open one at {compare}") and "; no pull request (GET /repos/octo/models/pulls: " \
        in state.message, state.message
    [promoted] = events_of(state, PROMOTED_EVENT)
    assert promoted["payload"]["outcome"] == "promoted" and promoted["payload"]["pull_request"] is None
    [artifact] = [item for item in artifacts_of(state) if item["key"] == "retrain-comparison"]
    assert result["pull_request_note"] in artifact["data"]
    logs = logs_of(state, "no pull request (")
    warnings = [log["message"] for log in logs if log["level"] >= 30 and "pull request" in log["message"]]
    assert warnings == [result["pull_request_note"]]  # one warning
    seen = [state.message, json.dumps(result), json.dumps(promoted), json.dumps(artifact), json.dumps(logs)]
    assert not [text for text in seen if TOKEN in text or TOKEN[4:] in text]
    assert git(origin, "branch", "--list", "retrain/*", "--format=%(refname:short)").split() == [result["branch"]]


def test_the_token_comes_from_the_secret_block_when_the_worker_has_none(prefect_harness, monkeypatch):
    from prefect.blocks.system import Secret

    logger = logging.getLogger("retrain")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert forge_token(logger) is None  # neither: no pull request, and no error
    Secret(value=TOKEN).save(TOKEN_BLOCK, overwrite=True)
    try:
        assert forge_token(logger) == TOKEN
        monkeypatch.setenv(TOKEN_ENV, "ghp_the_workers_own")
        assert forge_token(logger) == "ghp_the_workers_own"  # a worker's environment wins
    finally:
        Secret.delete(TOKEN_BLOCK)
