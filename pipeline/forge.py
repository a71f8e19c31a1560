"""Pull requests on a forge, through the REST API that GitHub, GitHub Enterprise Server, Gitea and
Forgejo share (`/repos/{owner}/{repo}/pulls`, `/repos/{owner}/{repo}/issues/{number}/labels`).

Where: `locate` reads a project (the forge's web address, owner, name) from a git remote URL
(https://host/o/r(.git), ssh://git@host[:port]/o/r.git, git@host:o/r.git); `api_base` finds its API:
https://api.github.com for github.com; otherwise https://host/api/v1 when the host answers Gitea's and
Forgejo's `GET /api/v1/version`, else GitHub Enterprise Server's https://host/api/v3.

What: `Forge.open_or_update` updates the open pull request whose head is the branch, or opens one:
run twice for one branch, it still leaves one pull request. `Forge.label` adds labels by name (by id
where an older Gitea takes only ids).

Standard library only; nothing of Prefect, DVC or git. The token travels in the Authorization
header and nowhere else: no message, exception or return value holds it, and neither a redirect
nor a next-page link to another host is followed (urllib would carry the header along).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

GITHUB_WEB, GITHUB_API = "https://github.com", "https://api.github.com"
# The version of GitHub's REST API the calls are written against; Gitea and Forgejo ignore the header.
API_VERSION = "2022-11-28"
# GitHub's largest page (per_page); Gitea and Forgejo read `limit` and cap it at MAX_RESPONSE_ITEMS (50).
PAGE_SIZE = 100
MAX_PAGES = 50  # 5,000 open pull requests: past that, something else is wrong
ALREADY_OPEN = (409, 422)  # Gitea's and GitHub's answers to a second pull request for one head and base


class ForgeError(Exception):
    """The forge said no (its status and its `message`), or could not be reached. Never holds the token."""

    def __init__(self, what: str, status: int | None = None):
        super().__init__(what)
        self.status = status


@dataclass(frozen=True)
class Project:
    """A repository on a forge: the forge's web address (scheme://host[:port]), the owner and the name."""

    web: str
    owner: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str  # the page people open (html_url)
    opened: bool  # False: one was open for the branch already, and was updated


# ---------------------------------------------------------------- where (pure, but for api_base's probe)

_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?P<host>[\w.-]+):(?P<path>[^/].*)$")  # git@host:owner/name.git


def locate(remote: str) -> Project | None:
    """The project a git remote URL names; None for one that names no forge project (a path, file://)."""
    remote = remote.strip()
    if "://" in remote:
        parts = urllib.parse.urlsplit(remote)
        if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
            return None
        # An ssh or git URL's port is not the web's. Userinfo (a token in an https remote) is dropped.
        port = f":{parts.port}" if parts.port and parts.scheme in ("https", "http") else ""
        web = f"{parts.scheme if parts.scheme in ('https', 'http') else 'https'}://{parts.hostname}{port}"
        path = parts.path
    elif (match := _SCP_LIKE.match(remote)) and not remote.startswith((".", "/", "~")):
        web, path = f"https://{match['host'].lower()}", match["path"]
    else:
        return None
    segments = path.strip("/").removesuffix(".git").split("/")
    if len(segments) != 2 or not all(segments):
        return None
    return Project(web, *segments)


def web_of_api(api: str) -> str:
    """The web address behind an API base: github.com for api.github.com, else the base less /api/v1 or /api/v3."""
    api = api.rstrip("/")
    return GITHUB_WEB if api == GITHUB_API else re.sub(r"/api/v[13]$", "", api)


def project_of(remote: str | None, api: str | None = None, full_name: str | None = None) -> Project | None:
    """The project of `remote`, or the one `full_name` (owner/name) names where the remote cannot say
    (a bare repository on a shared disk), at the remote's forge or else the one behind `api`."""
    located = locate(remote) if remote else None
    if not full_name:
        return located
    owner, _, name = full_name.strip().strip("/").partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"{full_name!r} is not owner/name")
    web = located.web if located else web_of_api(api) if api else None
    return Project(web, owner, name.removesuffix(".git")) if web else None


def compare_url(project: Project, base: str, branch: str) -> str:
    """The page that opens a pull request of `branch` into `base` (GitHub's path; Gitea and Forgejo serve it too)."""
    def quote(ref: str) -> str:
        return urllib.parse.quote(ref, safe="/")
    return f"{project.web}/{project.owner}/{project.name}/compare/{quote(base)}...{quote(branch)}?expand=1"


def api_base(project: Project, token: str, timeout: float = 5.0) -> str:
    """The project's API: github.com's, or the host's, found by asking for Gitea's and Forgejo's version."""
    if project.web == GITHUB_WEB:
        return GITHUB_API
    gitea = f"{project.web}/api/v1"
    try:
        answer, _ = _send(urllib.request.Request(f"{gitea}/version", headers=_headers(token)), timeout)
    except (OSError, ValueError):  # anything but a Gitea answer: GitHub Enterprise Server's path
        return f"{project.web}/api/v3"
    return gitea if isinstance(answer, dict) and "version" in answer else f"{project.web}/api/v3"


# ---------------------------------------------------------------- what (HTTP)


class Forge:
    """One project's pull requests on a forge's REST API, called with a token."""

    def __init__(self, api: str, project: Project, token: str, timeout: float = 10.0):
        self.api, self.project, self.timeout = api.rstrip("/"), project, timeout
        self._token = token

    def __repr__(self) -> str:  # the token stays out of tracebacks and logs
        return f"Forge({self.api!r}, {self.project.full_name!r})"

    def open_or_update(self, branch: str, base: str, title: str, body: str) -> PullRequest:
        """The open pull request of `branch` into `base`, its title and body set: found and updated, or opened."""
        found = self.find_open(branch)
        if found is None:
            try:
                fields = {"title": title, "head": branch, "base": base, "body": body}
                return _pull_request(self.call("POST", self._path("pulls"), fields), opened=True)
            except ForgeError as error:
                # One was opened since the lookup (a retry racing its first attempt): update that one.
                if error.status not in ALREADY_OPEN or (found := self.find_open(branch)) is None:
                    raise
        updated = self.call("PATCH", self._path(f"pulls/{found['number']}"), {"title": title, "body": body})
        return _pull_request(updated if isinstance(updated, dict) and "html_url" in updated else found, opened=False)

    def find_open(self, branch: str) -> dict | None:
        """The open pull request whose head is `branch` of this project, over every page of the list.
        Gitea and Forgejo ignore the `head` filter, so each result's head is checked here."""
        ours = self.project.full_name.lower()
        for pull in self._pages("pulls", state="open", head=f"{self.project.owner}:{branch}"):
            head = pull.get("head") or {}
            repository = (head.get("repo") or {}).get("full_name")  # None: a fork since deleted
            if head.get("ref") == branch and (repository is None or repository.lower() == ours):
                return pull
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
        ids = {label.get("name"): label.get("id") for label in self._pages("labels")}
        missing = [name for name in names if ids.get(name) is None]
        if missing:
            raise ForgeError(f"no label {', '.join(missing)} in {self.project.full_name}: create it once there", 422)
        return [ids[name] for name in names]

    def _pages(self, tail: str, **filters: str) -> Iterator[dict]:
        """The items of a list, page after page, by the Link header's rel="next" (GitHub's, Gitea's and Forgejo's)."""
        query = urllib.parse.urlencode({**filters, "per_page": PAGE_SIZE, "limit": PAGE_SIZE})
        url: str | None = f"{self._path(tail)}?{query}"
        for _ in range(MAX_PAGES):
            page, links = self.call_with_links("GET", url)
            yield from (item for item in page or [] if isinstance(item, dict))
            url = links.get("next")
            if url is None:
                return

    def _path(self, tail: str) -> str:
        owner, name = (urllib.parse.quote(part, safe="") for part in (self.project.owner, self.project.name))
        return f"/repos/{owner}/{name}/{tail}"

    def call(self, method: str, path: str, body: dict | None = None):
        return self.call_with_links(method, path, body)[0]

    def call_with_links(self, method: str, path_or_url: str, body: dict | None = None) -> tuple[object, dict[str, str]]:
        """One API call: the answer's JSON and its Link header's URLs by rel; ForgeError for anything else."""
        url = path_or_url if "://" in path_or_url else self.api + path_or_url
        shown = f"{method} {urllib.parse.urlsplit(url).path}"
        if _origin(url) != _origin(self.api):
            raise ForgeError(f"{shown}: the forge pointed at another host ({_origin(url)}); not followed")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=_headers(self._token, data is not None))
        try:
            return _send(request, self.timeout)
        except urllib.error.HTTPError as error:
            said = self._redacted(f"{shown}: {error.code} {error.reason}{_said(error)}")
            raise ForgeError(said, error.code) from None
        except (TimeoutError, urllib.error.URLError) as error:
            if isinstance(error, TimeoutError) or isinstance(error.reason, TimeoutError):  # reading, or connecting
                raise ForgeError(f"{shown}: no answer from {_origin(url)} within {self.timeout:g} s") from None
            raise ForgeError(self._redacted(f"{shown}: {_origin(url)} cannot be reached ({error.reason})")) from None
        except (OSError, ValueError) as error:  # a dropped connection, or an answer that is not JSON
            raise ForgeError(self._redacted(f"{shown}: {type(error).__name__}: {error}")) from None

    def _redacted(self, text: str) -> str:
        """What the forge echoed back, with the token blanked should it hold it (a misconfigured proxy can)."""
        return text.replace(self._token, "***") if self._token else text


def _headers(token: str, json_body: bool = False) -> dict[str, str]:
    # GitHub's documented headers; Gitea and Forgejo take the same Bearer token (and `token <t>`).
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
               "Authorization": f"Bearer {token}", "User-Agent": "classifier-pipeline-retrain"}
    if json_body:
        headers["Content-Type"] = "application/json"
    return headers


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """urllib copies every header, Authorization too, onto a redirect: follow only those to the same host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if _origin(urllib.parse.urljoin(req.full_url, newurl)) != _origin(req.full_url):
            return None  # urllib then raises the 3xx as an HTTPError
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _send(request: urllib.request.Request, timeout: float) -> tuple[object, dict[str, str]]:
    with urllib.request.build_opener(_SameHostRedirects).open(request, timeout=timeout) as answer:
        text = answer.read()
        links = _links(answer.headers.get("Link", ""))
    return (json.loads(text) if text.strip() else None), links


def _links(header: str) -> dict[str, str]:
    """`<url>; rel="next", <url>; rel="last"` as {"next": url, "last": url}."""
    return {rel: url for url, rel in re.findall(r'<([^>]+)>\s*;\s*rel="?([\w-]+)"?', header)}


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


def _said(error: urllib.error.HTTPError) -> str:
    """The forge's own words: its `message`, and GitHub's `errors` (strings, or objects with a message or code)."""
    try:
        answer = json.loads(error.read() or b"{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(answer, dict):
        return ""
    details = [item if isinstance(item, str) else item.get("message") or item.get("code")
               for item in answer.get("errors") or [] if isinstance(item, (str, dict))]
    words = "; ".join(str(part) for part in [answer.get("message"), *details] if part)
    return f": {words}" if words else ""


def _pull_request(answer: object, opened: bool) -> PullRequest:
    if not isinstance(answer, dict) or "number" not in answer or "html_url" not in answer:
        raise ForgeError("the forge's answer names no pull request (no number or html_url)")
    return PullRequest(int(answer["number"]), str(answer["html_url"]), opened)
