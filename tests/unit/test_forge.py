"""pipeline.forge against a GitHub-style forge on 127.0.0.1 (tests/forge_server.py): what it sends (paths,
headers, JSON), that a second call for one branch updates the open pull request instead of opening
another (found on the list's second page), and that every error is a ForgeError naming the status and
the forge's message, never the token. No network beyond the loopback."""

from __future__ import annotations

import re
import secrets
import socket

import pytest

from pipeline.forge.client import Forge, api_base
from pipeline.forge.address import GITHUB_API, Project, compare_url, known_api, locate, project_of, web_of_api
from pipeline.forge.transport import ForgeError
from tests.forge_server import FakeForge, ForgeScript, fake_forge

TOKEN = f"ghp_test{secrets.token_hex(12)}"
BRANCH = "retrain/20261204T030000Z"


@pytest.fixture
def script() -> ForgeScript:
    return ForgeScript(token=TOKEN)


@pytest.fixture
def forge(script):
    with fake_forge(script) as running:
        yield running


def client(forge: FakeForge, token: str = TOKEN, timeout: float = 5.0) -> Forge:
    return Forge(forge.api, Project("https://forge.test", "octo", "models"), token, timeout)


# ---------------------------------------------------------------- where


@pytest.mark.parametrize("remote, expected", [
    ("https://github.com/octo/models", Project("https://github.com", "octo", "models")),
    ("https://github.com/octo/models.git", Project("https://github.com", "octo", "models")),
    ("git@github.com:octo/models.git", Project("https://github.com", "octo", "models")),
    ("ssh://git@git.example.com:2222/octo/models.git", Project("https://git.example.com", "octo", "models")),
    ("https://x-access-token:secret@Git.Example.com:8443/octo/models.git",
     Project("https://git.example.com:8443", "octo", "models")),  # the userinfo is dropped
    ("/srv/git/models.git", None),
    ("file:///srv/git/models.git", None),
    ("../models", None),
    ("https://gitlab.example.com/group/sub/models.git", None),  # not owner/name
    ("https://[2001:db8::7]:8443/octo/models.git", Project("https://[2001:db8::7]:8443", "octo", "models")),
    ("git@[::1]:octo/models.git", Project("https://[::1]", "octo", "models")),  # IPv6 keeps its brackets
    ("ssh://git@ssh.github.com:443/octo/models.git", Project("https://github.com", "octo", "models")),
    ("https://www.github.com/octo/models", Project("https://github.com", "octo", "models")),
    ("https://octo.ghe.com/octo/models.git", Project("https://octo.ghe.com", "octo", "models")),
])
def test_locate_reads_the_origin_forms(remote, expected):
    assert locate(remote) == expected


def test_an_origin_that_cannot_say_is_named_by_the_overrides():
    assert project_of("/srv/git/models.git") is None
    assert project_of("/srv/git/models.git", "https://git.example.com/api/v1", "octo/models") == \
        Project("https://git.example.com", "octo", "models")
    assert project_of("git@github.com:octo/models.git", None, "other/name") == \
        Project("https://github.com", "other", "name")
    assert web_of_api(GITHUB_API) == "https://github.com"
    assert web_of_api("https://ghe.example/api/v3") == "https://ghe.example"
    with pytest.raises(ValueError, match="not owner/name"):
        project_of(None, GITHUB_API, "just-a-name")


@pytest.mark.parametrize("remote, refused", [
    ("https://gist.github.com/octo/models.git", "gist.github.com is one of GitHub's hosts that hold no repository"),
    ("https://api.github.com/octo/models", "api.github.com is one of GitHub's hosts"),
    ("https://git.example.com/octo/%2e%2e", "'..' is not an owner or repository name"),
    ("https://git.example.com/./models", "'.' is not an owner or repository name"),
])
def test_a_remote_no_forge_can_have_is_refused_saying_why(remote, refused):
    with pytest.raises(ValueError, match=re.escape(refused)):
        locate(remote)


@pytest.mark.parametrize("full_name", ["../..", "octo/..", "./models", "octo/mod els", "octo/models?x=1"])
def test_owner_and_name_are_single_path_segments(full_name):
    with pytest.raises(ValueError, match="not owner/name|not an owner or repository name"):
        project_of(None, "https://git.example.com/api/v1", full_name)


def test_githubs_own_hosts_name_their_api():
    assert known_api(Project("https://github.com", "o", "r")) == GITHUB_API
    assert known_api(Project("https://octo.ghe.com", "o", "r")) == "https://api.octo.ghe.com"
    assert web_of_api("https://api.octo.ghe.com") == "https://octo.ghe.com"
    assert known_api(Project("https://git.example.com", "o", "r")) is None  # asked: api_base


def test_the_compare_url_opens_the_pull_request_page():
    project = locate("git@github.com:octo/models.git")
    assert compare_url(project, "main", BRANCH) == f"https://github.com/octo/models/compare/main...{BRANCH}?expand=1"


def test_the_api_base_is_githubs_or_found_by_asking_the_host():
    assert api_base(Project("https://github.com", "o", "r")) == GITHUB_API  # no request made
    with fake_forge(ForgeScript(token=TOKEN, prefix="/api/v1", version="1.22.3")) as gitea:
        assert api_base(Project(gitea.host, "o", "r")) == f"{gitea.host}/api/v1"
        assert "authorization" not in gitea.script.sent[0].headers  # nothing yet shows the host is a forge
    with fake_forge(ForgeScript(token=TOKEN, prefix="/api/v3")) as enterprise:
        assert api_base(Project(enterprise.host, "o", "r")) == f"{enterprise.host}/api/v3"


# ---------------------------------------------------------------- what


def test_a_pull_request_is_opened_with_githubs_headers_and_labelled(forge, script):
    pull = client(forge).open_or_update(BRANCH, "main", "Retrain: params (train.epochs)", "the judgement")

    assert pull.opened and pull.number == 1 and pull.url == "https://forge.test/octo/models/pull/1"
    assert forge.calls() == ["GET /repos/octo/models/pulls", "POST /repos/octo/models/pulls"]
    lookup, create = script.sent
    assert f"head=octo%3A{BRANCH.replace('/', '%2F')}" in lookup.path and "state=open" in lookup.path
    assert create.body == {"title": "Retrain: params (train.epochs)", "head": BRANCH, "base": "main",
                           "body": "the judgement"}
    for sent in script.sent:
        assert sent.headers["authorization"] == f"Bearer {TOKEN}"
        assert sent.headers["accept"] == "application/vnd.github+json"
        assert sent.headers["x-github-api-version"] == "2022-11-28"
    assert create.headers["content-type"] == "application/json"

    client(forge).label(pull.number, ["retrain"])
    labelled = script.sent[-1]
    assert labelled.path == "/repos/octo/models/issues/1/labels" and labelled.body == {"labels": ["retrain"]}
    assert script.pulls[0]["labels"] == [{"name": "retrain"}]


def test_the_open_one_is_found_on_the_second_page_and_updated_never_a_second(forge, script):
    """As Gitea and Forgejo do, the forge ignores the head filter: every open pull request, two a page."""
    script.ignore_head_filter, script.page_size = True, 2
    for head, owner in (("feature/a", None), ("feature/b", None), (BRANCH, "fork"), (BRANCH, None)):
        script.add(head, owner=owner)  # a fork's branch of the same name is not ours

    for attempt in range(2):  # a retried step
        pull = client(forge).open_or_update(BRANCH, "main", f"title {attempt}", f"body {attempt}")
        assert not pull.opened and pull.number == 4

    assert len(script.pulls) == 4 and script.pulls[3]["title"] == "title 1" and script.pulls[3]["body"] == "body 1"
    assert forge.calls() == ["GET /repos/octo/models/pulls", "GET /repos/octo/models/pulls",
                             "PATCH /repos/octo/models/pulls/4"] * 2
    assert "page=2" in script.sent[1].path and "per_page=100" in script.sent[0].path


def test_only_our_pull_request_is_updated_not_one_of_the_same_branch_name(forge, script):
    """Ours: head our project's branch, base the one asked for. A deleted fork's pull request (head.repo
    null) and ours into another base are someone else's business: a new one is opened."""
    script.ignore_head_filter = True
    script.add(BRANCH, owner="gone")["head"]["repo"] = None  # a fork since deleted, its branch of the same name
    script.add(BRANCH, base="release")
    script.add(BRANCH, owner="fork")
    pull = client(forge).open_or_update(BRANCH, "main", "title", "body")
    assert pull.opened and pull.number == 4
    assert [item["title"] for item in script.pulls[:3]] == ["", "", ""]  # none of them touched


def test_one_opened_since_the_lookup_is_updated(forge, script):
    """GitHub answers a second pull request of one head and base with 422: the step finds and updates it."""
    script.add(BRANCH)
    script.list_misses = 1
    pull = client(forge).open_or_update(BRANCH, "main", "title", "body")
    assert (pull.opened, pull.number, len(script.pulls)) == (False, 1, 1)
    assert forge.calls() == ["GET /repos/octo/models/pulls", "POST /repos/octo/models/pulls",
                             "GET /repos/octo/models/pulls", "PATCH /repos/octo/models/pulls/1"]


def test_a_forge_that_takes_label_ids_only_gets_ids(forge, script):
    script.label_ids = {"bug": 3, "retrain": 7}
    script.add(BRANCH)
    client(forge).label(1, ["retrain"])
    assert [sent.body for sent in script.sent if sent.method == "POST"] == [{"labels": ["retrain"]}, {"labels": [7]}]
    with pytest.raises(ForgeError, match="no label missing in octo/models"):
        client(forge).label(1, ["missing"])


# ---------------------------------------------------------------- errors


def assert_no_token(error: ForgeError, forge: Forge) -> None:
    for text in (str(error), repr(error), repr(forge), str(error.args)):
        assert TOKEN not in text


def test_a_wrong_token_is_a_401_with_the_forges_message(forge):
    wrong = client(forge, token="ghp_wrong")
    with pytest.raises(ForgeError) as raised:
        wrong.open_or_update(BRANCH, "main", "title", "body")
    assert raised.value.status == 401 and "401" in str(raised.value) and "Bad credentials" in str(raised.value)
    assert "ghp_wrong" not in str(raised.value)


@pytest.mark.parametrize("status, message, detail", [
    (403, "Resource not accessible by personal access token", None),
    (404, "Not Found", None),
    (422, "Validation Failed", "No commits between main and " + BRANCH),
])
def test_each_refusal_names_its_status_and_the_forges_message(forge, script, status, message, detail):
    answer = {"message": message, "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}
    if detail:
        answer["errors"] = [{"resource": "PullRequest", "code": "custom", "message": detail}]
    script.failures["POST /repos/octo/models/pulls"] = (status, answer)
    github = client(forge)
    with pytest.raises(ForgeError) as raised:
        github.open_or_update(BRANCH, "main", "title", "body")
    said = str(raised.value)
    assert raised.value.status == status and said.startswith(f"POST /repos/octo/models/pulls: {status} ")
    assert message in said and (detail is None or detail in said)
    assert_no_token(raised.value, github)


def test_a_forge_that_echoes_the_token_has_it_blanked(forge, script):
    script.failures["GET /repos/octo/models/pulls"] = (403, {"message": f"token {TOKEN} is not allowed here"})
    with pytest.raises(ForgeError) as raised:
        client(forge).find_open(BRANCH, "main")
    assert "token *** is not allowed" in str(raised.value)
    assert_no_token(raised.value, client(forge))


def test_a_forge_that_does_not_answer_in_time_is_a_timeout(forge, script):
    script.stall_s = 5
    with pytest.raises(ForgeError, match=r"no whole answer from http://127\.0\.0\.1:\d+ within 0\.3 s") as raised:
        client(forge, timeout=0.3).open_or_update(BRANCH, "main", "title", "body")
    assert raised.value.status is None


def test_an_unreachable_host_says_so():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    github = Forge(f"http://127.0.0.1:{port}", Project("https://forge.test", "octo", "models"), TOKEN, timeout=2)
    with pytest.raises(ForgeError, match="cannot be reached") as raised:
        github.find_open(BRANCH, "main")
    assert_no_token(raised.value, github)


def test_the_token_is_not_carried_to_another_host(forge, script):
    """urllib would copy the Authorization header onto a redirect or a next page: neither is followed."""
    other = f"http://localhost:{forge.server.server_port}"  # the same server under another host name
    script.redirect_to = other
    with pytest.raises(ForgeError, match="307"):
        client(forge).find_open(BRANCH, "main")
    assert len(script.sent) == 1

    script.redirect_to, script.next_host, script.page_size = None, other, 1
    script.add("feature/a"), script.add("feature/b")
    script.ignore_head_filter = True
    with pytest.raises(ForgeError, match="another host"):
        client(forge).find_open(BRANCH, "main")
    assert len(script.sent) == 2
