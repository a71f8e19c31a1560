"""A promoted retrain's pull request: its title, body and token; opened or updated through pipeline.forge.

Configuration (docs/retraining.md, "The pull request"), all on the worker that runs the retrain:

- the token: the environment variable CLASSIFIER_FORGE_TOKEN, else the Prefect Secret block
  `classifier-forge-token`; never a tracked file, and never written to a log, state, event or artifact;
- CLASSIFIER_FORGE_API: the forge's API base, where the origin's host does not say it
  (https://api.github.com, https://host/api/v3 for GitHub Enterprise Server, https://host/api/v1 for
  Gitea and Forgejo; without it the host is asked, pipeline.forge.client.api_base);
- CLASSIFIER_FORGE_REPO: owner/name, where the origin cannot say it (a bare repository on a shared disk).

A promotion is done once its branch is pushed: a pull request that cannot be opened (no token, an
origin that is no forge, a branch that stayed local, a forge that said no) is one line saying how to
open it, a warning when the forge said no, and never a failed run. Whatever goes wrong in the step (the
wire, an answer of a shape no forge sends, a bug here) is one warning naming its type and an excerpt
without the token: `open_pull_request` is the step's one boundary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import get_run_logger
from prefect.blocks.system import Secret
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for

from classifier.judging.compare import GateDecision
from pipeline.forge.client import Forge, api_base
from pipeline.forge.address import Project, compare_url, project_of
from pipeline.forge.transport import ForgeError, loggable
from pipeline.project import LOCK_PATH, PARAMS_PATH, flatten
from pipeline.results import git, git_reader

TOKEN_ENV, API_ENV, REPO_ENV = "CLASSIFIER_FORGE_TOKEN", "CLASSIFIER_FORGE_API", "CLASSIFIER_FORGE_REPO"
TOKEN_BLOCK = "classifier-forge-token"
LABEL = "retrain"


@dataclass(frozen=True)
class PullRequestNote:
    url: str | None  # the pull request's page; None when none was opened
    line: str  # for the state message, the log and the artifact: its URL, or how to open one


# ---------------------------------------------------------------- what it says (pure)


def _stages(lock: Mapping | None) -> Mapping:
    return (lock or {}).get("stages") or {}


def _sources(lock: Mapping | None) -> dict[str, dict]:
    """The pipeline's own inputs in dvc.lock: the deps no stage writes, each with its hash fields."""
    outs = {entry.get("path") for stage in _stages(lock).values() for entry in stage.get("outs") or []}
    return {entry["path"]: {key: value for key, value in entry.items() if key != "path"}
            for stage in _stages(lock).values() for entry in stage.get("deps") or []
            if entry.get("path") not in outs}


def _params(lock: Mapping | None) -> dict[str, object]:
    """Every stage's params as dvc.lock resolved them, by dotted key (a file other than params.yaml prefixed)."""
    flat: dict[str, object] = {}
    for stage in _stages(lock).values():
        for file, values in (stage.get("params") or {}).items():
            flat.update(flatten("" if file == PARAMS_PATH else f"{file}:", values or {}))
    return flat


def _differ(before: Mapping, after: Mapping) -> list[str]:
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _kind(source: str) -> str:
    if source == PARAMS_PATH:
        return "params"
    return "code" if source.endswith(".py") or source.startswith("src/") else "data"


def changed_inputs(champion_lock: Mapping | None, new_lock: Mapping | None) -> dict[str, list[str]]:
    """What changed between the champion's dvc.lock and the retrain's, by kind: data (a source such as
    data.folder), params (the keys) and code (the files). Stages' outputs are left out: they change
    because an input did."""
    changes: dict[str, list[str]] = {"data": [], "params": [], "code": []}
    for source in _differ(_sources(champion_lock), _sources(new_lock)):
        kind = _kind(source)
        changes[kind].append(Path(source).name if kind == "code" else source)
    # The keys say more than params.yaml's new hash; the hash alone: a key no stage reads (compare.*).
    changes["params"] = _differ(_params(champion_lock), _params(new_lock)) or changes["params"]
    return changes


def _some(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" +{len(names) - most} more" if len(names) > most else "")


def title(changes: Mapping[str, list[str]], decision: GateDecision) -> str:
    """What changed and the headline metric: `Retrain: params (train.epochs); accuracy 0.9012 -> 0.9134`."""
    what = ", ".join(f"{kind} ({_some(names)})" for kind, names in changes.items() if names) or "a rerun"
    return (f"Retrain: {what}; accuracy {decision.champion['accuracy']:.4f} -> "
            f"{decision.challenger['accuracy']:.4f}")


def body(report: str, branch: str, run_url: str | None) -> str:
    """The gate's judgement (the `retrain-comparison` artifact's markdown), the flow run and the branch."""
    run = f"[this `retrain` flow run]({run_url})" if run_url else "the `retrain` flow"
    return f"{report}\n---\n\nOpened by {run} from branch `{branch}`.\n"


# ---------------------------------------------------------------- where it goes, and with what


def origin_of(repo: str, local_repo: Path | None) -> str | None:
    """Where the branch went: `repo` itself when it was cloned, else the local repo's `origin`, if any."""
    if local_repo is None:
        return repo
    found = git(local_repo, "remote", "get-url", "origin")
    return found.stdout.strip() if found.returncode == 0 else None


def forge_token(logger) -> str | None:
    """The worker's CLASSIFIER_FORGE_TOKEN, else the Prefect Secret block; None without either."""
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return token
    try:
        return str(Secret.load(TOKEN_BLOCK).get()).strip() or None
    except ValueError:  # no block of that name
        return None
    except Exception as error:  # a pull request is an extra: a failed lookup must not fail the promotion
        logger.warning("the Prefect Secret block %r could not be read (%s)", TOKEN_BLOCK, type(error).__name__)
        return None


def flow_run_url() -> str | None:
    """The run's page in Prefect's UI, as its "View at" line links it; None without a UI address."""
    return url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None


def forge_project(origin: str | None, logger) -> Project | None:
    try:
        return project_of(origin, os.environ.get(API_ENV), os.environ.get(REPO_ENV))
    except ValueError as error:  # a host of GitHub's that holds no repository, an owner/name no forge has
        logger.warning("the origin or %s names no forge project: %s", REPO_ENV, loggable(str(error)))
        return None


# ---------------------------------------------------------------- the step


def why_not(project: Project | None, local_repo: Path | None, token: str | None) -> str | None:
    """Why no pull request can be opened; None when one can."""
    if local_repo is not None:  # promote pushes only a clone's branch: a work tree keeps it
        return f"the branch is in {local_repo} only (push it first)"
    if project is None:
        return f"the origin names no forge project (set {REPO_ENV} and {API_ENV})"
    if token is None:
        return f"no forge token ({TOKEN_ENV}, or the Prefect Secret block {TOKEN_BLOCK})"
    return None


def open_pull_request(workspace: Path, repo: str, local_repo: Path | None, base: str, branch: str,
                      decision: GateDecision, report: str) -> PullRequestNote:
    """Open (or, for a branch that has one, update) the promoted branch's pull request into `base`,
    labelled `retrain`; or say in one line how to open it. Raises nothing: the branch is pushed, and the
    promotion stands whatever happens here."""
    logger = get_run_logger()
    token, at = "", f" from {branch} into {base}"
    try:
        project = forge_project(origin_of(repo, local_repo), logger)
        token = (forge_token(logger) if project is not None and local_repo is None else None) or ""
        if project is not None:
            at = f" at {compare_url(project, base, branch)}"
        if (reason := why_not(project, local_repo, token or None)) is not None:
            line = f"no pull request: {reason}; open one{at}"
            logger.info(line)
            return PullRequestNote(None, line)
        forge = Forge(os.environ.get(API_ENV) or api_base(project), project, token)
        changes = changed_inputs(yaml.safe_load(git_reader(workspace, base)(LOCK_PATH) or "{}"),
                                 yaml.safe_load((workspace / LOCK_PATH).read_text()))
        return submit(forge, base, branch, title(changes, decision), body(report, branch, flow_run_url()), at, logger)
    except Exception as error:  # the step's one boundary: the wire, an answer's shape, a bug; never the run
        message = str(error) if isinstance(error, ForgeError) else f"{type(error).__name__}: {error}"
        return not_opened(loggable(message, token, limit=600), at, logger)


def not_opened(why: str, at: str, logger) -> PullRequestNote:
    line = f"no pull request ({why}); open one{at}"
    logger.warning(line)
    return PullRequestNote(None, line)


def submit(forge: Forge, base: str, branch: str, heading: str, text: str, at: str, logger) -> PullRequestNote:
    """The forge's calls: a refusal or silence is a warning naming the status and the forge's words."""
    try:
        pull = forge.open_or_update(branch, base, heading, text)
    except ForgeError as error:
        return not_opened(str(error), at, logger)
    try:
        forge.label(pull.number, [LABEL])
    except ForgeError as error:  # the pull request stands; only its label is missing
        logger.warning("pull request %s is not labelled %r: %s", pull.url, LABEL, error)
    line = f"pull request {pull.url} ({'opened' if pull.opened else 'updated'})"
    logger.info(line)
    return PullRequestNote(pull.url, line)
