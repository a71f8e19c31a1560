"""`retrain`: run the pipeline on a branch in a workspace of its own, and promote the result
only if it is at least as good as the champion committed at that branch.

The workspace (pipeline.retrain.workspace) is a checkout of its own; `dvc repro` there decides
what reruns (pipeline.run.flow); the gate (pipeline.retrain.gate) judges the new model against
the champion; a model at least as good is committed on a retrain/<UTC timestamp>-<flow run id>
branch, and its pull request opened (pipeline.retrain.pull_request).
prefect.yaml's `retrain-cpu` and `retrain-gpu` deployments run this flow; so does
`python -m pipeline retrain`.

A retrain that ran and decided did its job, whatever it decided: it ends Completed, in a state
named after the outcome (`Promoted`, `Not promoted`, `No change`), and emits one event,
`classifier.model.promoted` or `classifier.model.kept`, whose payload carries the base, the
branch, the outcome's code (`promoted`, `not-promoted`, `no-change`), the comparison's verdict
(the pull-request report's words), the reason (a sentence) and the metrics (and a promotion's
`pull_request` URL), for an automation or a notification to match.
Failed is for errors only: a stage failed, or the champion could not be judged.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Completed, State

from classifier.judging.compare import GateDecision, headline
from classifier.data.checks import blocking_line, read_report

from pipeline.device import check_device, require_device, trained_as
from pipeline.project import DATA_CHECKS_PATH, LOCK_PATH, METRICS_PATH, PARAMS_PATH
from pipeline.results import git_reader, same_published_model
from pipeline.registry import VERDICT_PREFIX
from pipeline.retrain.gate import (
    RECORD_PATH, Champion, GateError, champion_of, decision_report, judge_challenger, write_record,
)
from pipeline.retrain.pull_request import open_pull_request
from pipeline.retrain.workspace import (
    RetrainError, check_push_access, close_workspace, dvc, git, has_dvc_remote, open_workspace, restore_outputs,
)
from pipeline.run.flow import run_pipeline
from pipeline.run.stages import StageFailed, stage_env

# The outcome's code: the result's `result` and the event's `outcome`, short and stable for an automation to
# match (docs/retraining.md, "Outcomes, states and events"); the sentence is the `reason`.
PROMOTED, NOT_PROMOTED, NO_CHANGE = "promoted", "not-promoted", "no-change"
STATE_NAMES = {PROMOTED: "Promoted", NOT_PROMOTED: "Not promoted", NO_CHANGE: "No change"}
# The data checks before training (in prepare) stopped the run: an outcome about the data, not a crash.
BLOCKED = "blocked"
STATE_NAMES[BLOCKED] = "Blocked"
NOTHING_RERAN = "no change: DVC reran and restored nothing, champion kept"
SAME_MODEL = "no change: the retrained model is byte-identical to the champion, champion kept"
SAME_AS_UNMERGED = ("no change: the retrained model is byte-identical to the one on {branch}, not merged yet; "
                    "review and merge that branch (no second branch opened)")
PROMOTED_EVENT, KEPT_EVENT = "classifier.model.promoted", "classifier.model.kept"
# The published model, as dvc.lock records it: equal hashes mean nothing worth a branch.


def same_model_as_champion(workspace: Path, at: str) -> bool:
    """A rerun can reproduce the champion (committed at `at`) exactly (say, the device class was pinned
    to the one it was trained on): then there is nothing to promote."""
    champion = git_reader(workspace, at)(LOCK_PATH)
    return champion is not None and same_published_model(yaml.safe_load(champion),
                                                         yaml.safe_load((workspace / LOCK_PATH).read_text()))


def blocked_by_data_checks(workspace: Path, error: BaseException) -> str | None:
    """The reason of a run the data checks stopped: prepare failed and this run's findings
    (metrics/data_checks.json) say blocked; None for any other failure, which stays a failure."""
    if not (isinstance(error, StageFailed) and error.stage == "prepare"):
        return None
    line = blocking_line(report) if (report := read_report(workspace / DATA_CHECKS_PATH)) else None
    return f"blocked: {line}; champion kept" if line else None


def unmerged_branch_with_same_model(workspace: Path, base: str, run_id: str | None) -> str | None:
    """An earlier retrain branch, not merged into `base`, that already holds this model (same md5 in its dvc.lock):
    a second branch with the same bytes would only be a second pull request to review. A retry of this same
    flow run finds its own first attempt's branch, which is not "another"."""
    mine = f"-{run_id.replace('-', '')[:12]}" if run_id else None
    refs = git(workspace, "for-each-ref", "--sort=-committerdate", "--format=%(refname)",
               "refs/heads/retrain/", "refs/remotes/origin/retrain/").split()
    current = yaml.safe_load((workspace / LOCK_PATH).read_text())
    for ref in refs:
        name = ref.removeprefix("refs/heads/").removeprefix("refs/remotes/origin/")
        if mine and name.endswith(mine):
            continue
        merged = subprocess.run(["git", "merge-base", "--is-ancestor", ref, base], cwd=workspace, env=stage_env(),
                                capture_output=True).returncode == 0
        lock = git_reader(workspace, ref)(LOCK_PATH)
        if not merged and lock and same_published_model(yaml.safe_load(lock), current):
            return name
    return None


def branch_name(workspace: Path, run_id: str | None) -> str:
    """retrain/<UTC timestamp>-<the flow run's id>: a retry of the same flow run (prefect.yaml's
    retry-crashed-retrain-once) finds the branch its first attempt made, here or at the origin, and
    reuses it, so the pull request for that branch is updated rather than doubled."""
    stamp = f"retrain/{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    if not run_id:  # called outside a flow run: nothing to find again
        taken = git(workspace, "branch", "--list", f"{stamp}*").split()
        return f"{stamp}-{uuid.uuid4().hex[:6]}" if stamp in taken else stamp
    run = run_id.replace("-", "")[:12]
    made = git(workspace, "for-each-ref", "--format=%(refname:lstrip=2)",
               f"refs/heads/retrain/*-{run}", f"refs/remotes/origin/retrain/*-{run}").split()
    return made[0].removeprefix("origin/") if made else f"{stamp}-{run}"


def promote(workspace: Path, cloned: bool, pushed_to_remote: bool, run_id: str | None = None,
            judged: str = "") -> str:
    """Commit the new lock, params and metrics on the run's retrain branch (branch_name); returns its name.
    `judged` (the champion and the verdict) ends the commit's message: `make register` quotes its
    `Verdict:` line in the version's tag once the branch is merged."""
    branch = branch_name(workspace, run_id)
    git(workspace, "switch", "--quiet", "-C", branch)  # -C: a retry moves its own first attempt's branch
    paths = [LOCK_PATH, PARAMS_PATH, str(Path(RECORD_PATH).parent)]
    git(workspace, "add", "--", *paths)
    git(workspace, "-c", "user.name=classifier retrain", "-c", "user.email=retrain@localhost",
        "commit", "--quiet", "--allow-empty", "-m", f"Retrain: new model at least as good as the champion ({branch})",
        *(["-m", judged] if judged else []))
    if pushed_to_remote:
        dvc(workspace, "push", what="pushing the new outputs to the DVC remote")
    if cloned:  # from a URL or a bare origin: the branch goes back there (a retry replaces its own first push)
        git(workspace, "push", "--quiet", "--force", "origin", branch, what="pushing the retrain branch")
    return branch


def test_metrics(workspace: Path) -> dict:
    """The workspace's test scores (metrics.json's `test`), for an outcome that judged nothing."""
    try:
        return json.loads((workspace / METRICS_PATH).read_text()).get("test") or {}
    except (OSError, AttributeError, ValueError):
        return {}


def outcome(result: dict, base: str, decision: GateDecision | None = None, metrics: dict | None = None) -> State:
    """The run's final state, Completed and named after the outcome (`result`, a code), and its event."""
    # outcome: what the retrain did; verdict: what the comparison found, in the report's words (None: nothing judged).
    payload = {"base": base, "branch": result["branch"], "outcome": result["result"], "verdict": None,
               "reason": result["reason"]}
    if decision is not None:
        judgement = decision.judgement
        payload |= {"verdict": str(judgement.verdict), "headline": headline(judgement),
                    "metrics": {metric.name: {"verdict": str(metric.verdict), "delta": round(metric.delta, 6),
                                              "low": round(metric.low, 6), "high": round(metric.high, 6)}
                                for metric in judgement.metrics},
                    "champion": dict(decision.champion), "challenger": dict(decision.challenger),
                    "checks": {name: bool(passed) for name, passed in decision.checks.items()},
                    "resolution": {item.name: {"margin": round(float(item.margin), 6), "min_effect": item.min_effect,
                                               "resolved": bool(item.resolved)} for item in decision.resolution}}
    else:
        payload["champion"] = payload["challenger"] = metrics or {}
    if "champion_version" in result:  # the registry's version judged against (None: base's model, nothing registered)
        payload["champion_version"] = result["champion_version"]
    if "pull_request" in result:  # a promotion's: its URL, or None (the state message says how to open one)
        payload["pull_request"] = result["pull_request"]
    name = PROMOTED_EVENT if result["branch"] else KEPT_EVENT
    emitted = emit_event(event=name, resource={"prefect.resource.id": "classifier.training.model", "classifier.base": base,
                                               "classifier.branch": result["branch"] or ""}, payload=payload)
    if emitted is None:  # Prefect logs why and carries on: say what an automation will not see
        get_run_logger().warning("the %s event was not emitted: automations and notifications will not see "
                                 "this outcome", name)
    message = "; ".join(filter(None, (result["reason"], result.get("pull_request_note"))))
    # The run's last lines, which `prefect deployment run ... --watch` and `prefect flow-run logs` end with.
    get_run_logger().info("retrain %s: %s%s", STATE_NAMES[result["result"]].lower(),
                          f"{result['branch']}: " if result["branch"] else "", message)
    return Completed(name=STATE_NAMES[result["result"]], message=message, data=result)


@flow(name="retrain")
def retrain(repo: str = ".", base: str = "main", device: str | None = None, workspace_root: str | None = None,
            timeout_s: float = 3600.0) -> State:
    """Retrain `base` in a workspace of its own; promote only a model at least as good as the champion.

    device: the class to train on; the worker must have it. It is set in the workspace's params.yaml,
    and so committed with a promotion, as pipeline.device.trained_as says (cuda as `auto`, which
    picks cuda here and trains on a CPU elsewhere); None keeps what `base` says.
    Called as a function it returns the outcome's dict
    (`result`: the outcome's code; `branch`, `reason`, `stages`); with return_state=True, the named
    Completed state.
    """
    logger = get_run_logger()
    if device is not None:
        check_device(device)
        require_device(device)  # a gpu pool's worker without CUDA stops here, before any work
    root = Path(workspace_root) if workspace_root else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    workspace, local_repo = open_workspace(repo, base, root)
    logger.info("workspace %s at %s", workspace, base)
    try:
        if local_repo is None:  # a clone pushes its branch back: know before training that it can
            check_push_access(workspace)
        restore_outputs(workspace, local_repo, logger)
        try:
            run = run_pipeline(project_dir=str(workspace), device=device and trained_as(device), timeout_s=timeout_s)
        except StageFailed as error:
            reason = blocked_by_data_checks(workspace, error)
            if reason is None:
                raise
            logger.warning(reason)
            result = {"result": BLOCKED, "branch": None, "reason": reason, "stages": {"prepare": "blocked"}}
            return outcome(result, base, metrics=test_metrics(workspace))
        try:  # the registry's prod version (GTO), or base's committed model before the first registration
            champion = champion_of(workspace, base) if run["changed"] else Champion(base, base)
        except GateError as error:
            raise RetrainError(f"nothing promoted: {error}") from None
        if champion.version:
            logger.info("the champion: %s", champion.name)
        if not run["changed"] or same_model_as_champion(workspace, champion.rev):
            reason = NOTHING_RERAN if not run["changed"] else SAME_MODEL
            logger.info(reason)
            result = {"result": NO_CHANGE, "branch": None, "reason": reason, "stages": run["stages"]}
            return outcome(result, base, metrics=test_metrics(workspace))

        try:
            # re-scores the champion on new data
            decision, test_split = judge_challenger(workspace, base, log=logger.info, champion=champion)
        except GateError as error:
            raise RetrainError(f"nothing promoted: {error}") from None
        for item in decision.resolution:
            if not item.resolved:
                logger.warning("the gate cannot resolve its margin: %s", item.describe())
        if not decision.promote:
            create_markdown_artifact(key="retrain-comparison", markdown=decision_report(decision, champion.name, None),
                                     description="retrained model against the champion: not promoted")
            logger.info("against the champion at %s, %s", champion.name, decision.reason)  # the reason says "not promoted"
            result = {"result": NOT_PROMOTED, "branch": None, "reason": decision.reason, "stages": run["stages"],
                      "champion_version": champion.version}
            return outcome(result, base, decision)

        waiting = unmerged_branch_with_same_model(workspace, base, flow_run.get_id())
        if waiting is not None:
            reason = SAME_AS_UNMERGED.format(branch=waiting)
            result = {"result": NO_CHANGE, "branch": None, "reason": reason, "stages": run["stages"],
                      "unmerged_branch": waiting}
            return outcome(result, base, decision)

        write_record(workspace, decision, test_split)
        judged = f"Champion: {champion.name}\n{VERDICT_PREFIX}{headline(decision.judgement)}\n\n{decision.reason}"
        branch = promote(workspace, local_repo is None, has_dvc_remote(workspace), flow_run.get_id(), judged)
        report = decision_report(decision, champion.name, branch)
        pull_request = open_pull_request(workspace, repo, local_repo, base, branch, decision, report)
        create_markdown_artifact(key="retrain-comparison", markdown=f"{report}\n{pull_request.line}\n",
                                 description=f"retrained model against the champion: promoted on {branch}")
        logger.info("against the champion at %s, %s; on %s", champion.name, decision.reason, branch)
        result = {"result": PROMOTED, "branch": branch, "reason": decision.reason, "stages": run["stages"],
                  "pull_request": pull_request.url, "pull_request_note": pull_request.line,
                  "champion_version": champion.version}
        return outcome(result, base, decision)
    finally:
        close_workspace(workspace, local_repo)
