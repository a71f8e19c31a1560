"""Where a project lives: its forge's web address, owner and name read from a git remote URL, its API's
address where the host alone says it, and whether a token may be sent there. Pure: no I/O.

Remote forms: https://host/o/r(.git), ssh://git@host[:port]/o/r.git, git@host:o/r.git, IPv6 hosts in
brackets. github.com's other names for its repositories (www., and ssh. for ssh over port 443) are
github.com; its hosts that hold no repository (api., gist., raw., ...) are refused, saying so.
GitHub Enterprise Cloud with data residency (`SUBDOMAIN.ghe.com`) has its API at `api.SUBDOMAIN.ghe.com`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

GITHUB_WEB, GITHUB_API = "https://github.com", "https://api.github.com"
GITHUB_REPOSITORY_HOSTS = {"github.com", "www.github.com", "ssh.github.com"}
# Owners and names on GitHub, Gitea and Forgejo: ASCII letters, digits, '-', '_' and '.'.
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[\w.-]+):(?P<path>[^/].*)$")  # git@host:o/r.git


@dataclass(frozen=True)
class Project:
    """A repository on a forge: the forge's web address (scheme://host[:port]), the owner and the name.
    Owner and name are each one path segment of the API's URLs, so neither may be `.`, `..` or hold a `/`."""

    web: str
    owner: str
    name: str

    def __post_init__(self):
        for part in (self.owner, self.name):
            if not _SEGMENT.fullmatch(part) or part in (".", ".."):
                raise ValueError(f"{part!r} is not an owner or repository name (letters, digits, '-', '_', '.')")

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


def _web(scheme: str, host: str, port: int | None = None) -> str:
    """The web address of a repository host, an IPv6 address kept in its brackets (urlsplit's `hostname`
    drops them); GitHub's other names for github.com are github.com, its hosts that hold no repository
    are refused."""
    host = host.lower().strip("[]")
    if host in GITHUB_REPOSITORY_HOSTS:
        return GITHUB_WEB
    if host.endswith(".github.com"):
        raise ValueError(f"{host} is one of GitHub's hosts that hold no repository: the remote should name "
                         "github.com (https://github.com/OWNER/NAME.git)")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (f":{port}" if port else "")


def locate(remote: str) -> Project | None:
    """The project a git remote URL names; None for one that names no forge project (a path, file://,
    a group path deeper than owner/name); ValueError for a host or a path part no forge can have."""
    remote = remote.strip()
    if "://" in remote:
        parts = urllib.parse.urlsplit(remote)
        if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
            return None
        # An ssh or git URL's port is not the web's. Userinfo (a token in an https remote) is dropped.
        web_port = parts.port if parts.scheme in ("https", "http") else None
        web = _web(parts.scheme if parts.scheme in ("https", "http") else "https", parts.hostname, web_port)
        path = parts.path
    elif (match := _SCP_LIKE.match(remote)) and not remote.startswith((".", "/", "~")):
        web, path = _web("https", match["host"]), match["path"]
    else:
        return None
    segments = path.strip("/").removesuffix(".git").split("/")
    if len(segments) != 2 or not all(segments):
        return None
    return Project(web, *(urllib.parse.unquote(segment) for segment in segments))


def known_api(project: Project) -> str | None:
    """The API the host alone says: GitHub's, or a ghe.com subdomain's; None where the host must be asked."""
    if project.web == GITHUB_WEB:
        return GITHUB_API
    host = urllib.parse.urlsplit(project.web).hostname or ""
    return f"https://api.{host}" if host.endswith(".ghe.com") else None


def web_of_api(api: str) -> str:
    """The web address behind an API base: github.com for api.github.com, SUB.ghe.com for api.SUB.ghe.com,
    else the base less /api/v1 or /api/v3."""
    api = api.rstrip("/")
    if api == GITHUB_API:
        return GITHUB_WEB
    parts = urllib.parse.urlsplit(api)
    if (parts.hostname or "").endswith(".ghe.com") and parts.hostname.startswith("api."):
        return f"https://{parts.hostname.removeprefix('api.')}"
    return re.sub(r"/api/v[13]$", "", api)


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


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_may_go_to(api: str) -> str | None:
    """Why a token must not be sent to `api`; None when it may: https, or http to this machine (tests)."""
    parts = urllib.parse.urlsplit(api)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return None
    return f"the API {parts.scheme}://{parts.netloc.rpartition('@')[2]} is not https: the token is sent only over https"


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a header's value; None when it can. Checked before anything is sent: http.client
    and h11 refuse a line break in an error that would quote the token, escaped past a plain replace."""
    if not token:
        return "the forge token is empty"
    if any(not ("!" <= character <= "~") for character in token):
        return ("the forge token holds a character no header can carry (a line break, a space, a control or "
                "non-ASCII character): check how it was stored")
    return None
