"""A project's pull requests through the REST API that GitHub, GitHub Enterprise Server, Gitea and Forgejo
share (`/repos/{owner}/{repo}/pulls`, `/repos/{owner}/{repo}/issues/{number}/labels`).

`api_base` finds a project's API: GitHub's (or a ghe.com subdomain's) from the host; else
https://host/api/v1 when the host answers Gitea's and Forgejo's `GET /api/v1/version` (asked without the
token: that endpoint needs none, and nothing yet shows the host is a forge), else GitHub Enterprise
Server's https://host/api/v3.

`Forge.open_or_update` updates our open pull request (head: this project's `branch`; base: `base`) or opens
one: run twice for one branch, it still leaves one. `Forge.label` adds labels by name (by id where an older
Gitea takes only ids). Each call is done within `timeout` seconds, all of them within `budget_s`; every answer
is read for the shape it must have; anything else is a ForgeError (pipeline.forge.transport).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.forge.address import Project, known_api, token_may_go_to, token_problem
from pipeline.forge.transport import Answer, ForgeError, exchange, origin, redacted

# The version of GitHub's REST API the calls are written against; Gitea and Forgejo ignore the header.
API_VERSION = "2022-11-28"
USER_AGENT = "classifier-pipeline-retrain"
# GitHub's largest page (per_page); Gitea and Forgejo read `limit` and cap it at MAX_RESPONSE_ITEMS (50).
PAGE_SIZE = 100
MAX_PAGES = 50  # 5,000 open pull requests: past that, something else is wrong
ALREADY_OPEN = (409, 422)  # Gitea's and GitHub's answers to a second pull request for one head and base
_WEB_PAGE = re.compile(r"https?://[!-~]{1,300}")  # an html_url: printable ASCII, no space, bounded


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str  # the page people open (html_url)
    opened: bool  # False: one was open for the branch already, and was updated


def api_base(project: Project, within_s: float = 5.0) -> str:
    """The project's API: known from its host, or found by asking the host for Gitea's and Forgejo's version."""
    if (known := known_api(project)) is not None:
        return known
    gitea = f"{project.web}/api/v1"
    try:
        answer = exchange("GET", f"{gitea}/version", {"Accept": "application/json", "User-Agent": USER_AGENT},
                          None, within_s, max_bytes=64 * 2**10)
    except ForgeError:  # anything but a Gitea answer: GitHub Enterprise Server's path
        return f"{project.web}/api/v3"
    version = answer.json.get("version") if isinstance(answer.json, dict) else None
    return gitea if isinstance(version, str) else f"{project.web}/api/v3"


class Forge:
    """One project's pull requests on a forge's REST API, called with a token that goes to the API's host
    only, over https (http to this machine aside, for tests)."""

    def __init__(self, api: str, project: Project, token: str, timeout: float = 10.0, budget_s: float = 60.0):
        for problem in (token_problem(token), token_may_go_to(api)):
            if problem is not None:
                raise ForgeError(problem)
        self.api, self.project, self.timeout, self.budget_s = api.rstrip("/"), project, timeout, budget_s
        self._token = token
        self._until = time.monotonic() + budget_s

    def __repr__(self) -> str:  # the token stays out of tracebacks and logs
        return f"Forge({self.api!r}, {self.project.full_name!r})"

    def open_or_update(self, branch: str, base: str, title: str, body: str) -> PullRequest:
        """Our open pull request of `branch` into `base`, its title and body set: found and updated, or opened."""
        found = self.find_open(branch, base)
        if found is None:
            fields = {"title": title, "head": branch, "base": base, "body": body}
            try:
                return self._pull_request(self.call("POST", self._path("pulls"), fields).json, opened=True)
            except ForgeError as error:
                # One was opened since the lookup (a retry racing its first attempt): update that one.
                if error.status not in ALREADY_OPEN or (found := self.find_open(branch, base)) is None:
                    raise
        updated = self.call("PATCH", self._path(f"pulls/{found.number}"), {"title": title, "body": body}).json
        try:
            return self._pull_request(updated, opened=False)
        except ForgeError:  # updated all the same; an answer without the fields names the one found
            return found

    def find_open(self, branch: str, base: str) -> PullRequest | None:
        """Our open pull request: head `branch` of this very project (not a fork's, nor a deleted fork's
        branch of the same name), base `base`; over every page of the list. Gitea and Forgejo ignore the
        `head` filter, so each result is checked here."""
        ours = self.project.full_name.lower()
        for pull in self._pages("pulls", state="open", head=f"{self.project.owner}:{branch}"):
            head, into = _mapping(pull.get("head")), _mapping(pull.get("base"))
            repository = _mapping(head.get("repo")).get("full_name")
            if (head.get("ref") == branch and into.get("ref") == base
                    and isinstance(repository, str) and repository.lower() == ours):
                return self._pull_request(pull, opened=False)
        return None

    def label(self, number: int, names: list[str]) -> None:
        """Add labels to a pull request (an issue, to the API) by name; by id where the forge takes only ids."""
        path = self._path(f"issues/{number}/labels")
        try:
            self.call("POST", path, {"labels": names})
        except ForgeError as error:
            if error.status != 422:
                raise
            self.call("POST", path, {"labels": self._label_ids(names)})  # Gitea before 1.20: ids only

    def _label_ids(self, names: list[str]) -> list[int]:
        ids = {label.get("name"): label.get("id") for label in self._pages("labels")
               if type(label.get("id")) is int}
        missing = [name for name in names if ids.get(name) is None]
        if missing:
            raise ForgeError(f"no label {', '.join(missing)} in {self.project.full_name}: create it once there", 422)
        return [ids[name] for name in names]

    def _pages(self, tail: str, **filters: str) -> Iterator[dict]:
        """The items of a list, page after page, by the Link header's rel="next" (GitHub's, Gitea's and Forgejo's)."""
        query = urllib.parse.urlencode({**filters, "per_page": PAGE_SIZE, "limit": PAGE_SIZE})
        url: str | None = f"{self._path(tail)}?{query}"
        for _ in range(MAX_PAGES):
            page = self.call("GET", url)
            if not isinstance(page.json, list):
                raise ForgeError(f"GET {self._path(tail)}: the answer is not a list but {type(page.json).__name__}")
            yield from (item for item in page.json if isinstance(item, dict))
            url = page.links.get("next")
            if url is None:
                return

    def _path(self, tail: str) -> str:
        owner, name = (urllib.parse.quote(part, safe="") for part in (self.project.owner, self.project.name))
        return f"/repos/{owner}/{name}/{tail}"

    def call(self, method: str, path_or_url: str, body: dict | None = None) -> Answer:
        """One API call within the call's and the step's time; a URL of another host is not called."""
        url = path_or_url if "://" in path_or_url else self.api + path_or_url
        request = f"{method} {redacted(urllib.parse.urlsplit(url).path, self._token)}"
        if origin(url) != origin(self.api):
            raise ForgeError(f"{request}: the forge pointed at another host ({redacted(origin(url), self._token)}); "
                             "not followed")
        left = self._until - time.monotonic()
        if left <= 0:
            raise ForgeError(f"{request}: not called, the forge's calls took their {self.budget_s:g} s")
        data = None if body is None else json.dumps(body).encode()
        try:
            return exchange(method, url, self._headers(data is not None), data, min(self.timeout, left), self._token)
        except ForgeError as error:
            if time.monotonic() < self._until:
                raise
            raise ForgeError(f"{request}: stopped, the forge's calls took their {self.budget_s:g} s", error.status) from None

    def _headers(self, json_body: bool) -> dict[str, str]:
        # GitHub's documented headers; Gitea and Forgejo take the same Bearer token (and `token <t>`).
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                   "Authorization": f"Bearer {self._token}", "User-Agent": USER_AGENT}
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _pull_request(self, answer: object, opened: bool) -> PullRequest:
        """A pull request as the forge shows it: a positive number and a web page's URL, or ForgeError."""
        number = answer.get("number") if isinstance(answer, dict) else None
        url = answer.get("html_url") if isinstance(answer, dict) else None
        if (type(number) is not int or number < 1 or not isinstance(url, str) or not _WEB_PAGE.fullmatch(url)
                or redacted(url, self._token) != url):
            raise ForgeError("the forge's answer names no pull request (a number and an http(s) html_url)")
        return PullRequest(number, url, opened)


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}
