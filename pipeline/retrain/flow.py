"""`retrain`: run the pipeline on a branch in a workspace of its own, and promote the result
only if it is at least as good as the champion committed at that branch.

The workspace (pipeline.retrain.workspace) is a checkout of its own; `dvc repro` there decides
what reruns (pipeline.run.flow); the gate (pipeline.retrain.gate) judges the new model against
the champion; a model at least as good is committed on a retrain/<UTC timestamp> branch.
prefect.yaml's `retrain-cpu` and `retrain-gpu` deployments run this flow; so does
`python -m pipeline retrain`.
"""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pipeline.device import check_device, require_device
from pipeline.project import LOCK_PATH, MODEL_PATH, PARAMS_PATH
from pipeline.retrain.gate import RECORD_PATH, GateError, decision_report, judge_challenger, write_record
from pipeline.retrain.workspace import (
    RetrainError, close_workspace, dvc, git, has_dvc_remote, is_url, open_workspace, restore_outputs,
)
from pipeline.run.flow import train_pipeline
from pipeline.run.stages import lock_md5

NO_CHANGE = "no change: DVC reran and restored nothing, champion kept"
SAME_MODEL = "no change: the retrained model is byte-identical to the champion, champion kept"
# The published model, as dvc.lock records it: equal hashes mean nothing worth a branch.


def same_model_as_champion(workspace: Path, base: str) -> bool:
    """A rerun can reproduce the champion exactly (say, the device class was pinned to the one
    it was trained on): then there is nothing to promote."""
    shown = subprocess.run(["git", "show", f"{base}:dvc.lock"], cwd=workspace, capture_output=True, text=True)
    if shown.returncode != 0:
        return False
    champion = lock_md5(yaml.safe_load(shown.stdout), MODEL_PATH)
    return champion is not None and champion == lock_md5(yaml.safe_load((workspace / LOCK_PATH).read_text()), MODEL_PATH)


def promote(workspace: Path, repo_is_url: bool, pushed_to_remote: bool) -> str:
    """Commit the new lock, params and metrics on retrain/<UTC timestamp>; returns the branch name."""
    branch = f"retrain/{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    existing = git(workspace, "branch", "--list", f"{branch}*").split()
    if branch in existing:
        branch = f"{branch}-{uuid.uuid4().hex[:6]}"
    git(workspace, "switch", "--quiet", "-c", branch)
    paths = [LOCK_PATH, PARAMS_PATH, str(Path(RECORD_PATH).parent)]
    git(workspace, "add", "--", *paths)
    git(workspace, "-c", "user.name=classifier retrain", "-c", "user.email=retrain@localhost",
        "commit", "--quiet", "--allow-empty", "-m", f"Retrain: new model at least as good as the champion ({branch})")
    if pushed_to_remote:
        dvc(workspace, "push", what="pushing the new outputs to the DVC remote")
    if repo_is_url:
        git(workspace, "push", "--quiet", "origin", branch, what="pushing the retrain branch")
    return branch


@flow(name="retrain")
def retrain(repo: str = ".", base: str = "main", device: str | None = None, workspace_root: str | None = None,
            timeout_s: float = 3600.0) -> dict:
    """Retrain `base` in a workspace of its own; promote only a model at least as good as the champion.

    device: the class to train on, set in the workspace's params.yaml (and so committed with a
    promotion); None keeps what `base` says.
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
        restore_outputs(workspace, local_repo, logger)
        run = train_pipeline(project_dir=str(workspace), device=device, timeout_s=timeout_s)
        if not run["changed"]:
            logger.info(NO_CHANGE)
            return {"result": NO_CHANGE, "branch": None, "stages": run["stages"]}
        if same_model_as_champion(workspace, base):
            logger.info(SAME_MODEL)
            return {"result": SAME_MODEL, "branch": None, "stages": run["stages"]}

        try:
            decision, test_split = judge_challenger(workspace, base, log=logger.info)  # re-scores the champion on new data
        except GateError as error:
            raise RetrainError(f"nothing promoted: {error}") from None
        if not decision.promote:
            create_markdown_artifact(key="retrain-comparison", markdown=decision_report(decision, base, None),
                                     description="retrained model against the champion: not promoted")
            raise RetrainError(f"the retrained model is not promoted over the champion at {base}: {decision.reason}")

        write_record(workspace, decision, test_split)
        branch = promote(workspace, is_url(repo), has_dvc_remote(workspace))
        create_markdown_artifact(key="retrain-comparison", markdown=decision_report(decision, base, branch),
                                 description=f"retrained model against the champion: promoted on {branch}")
        logger.info("promoted on %s: %s", branch, decision.reason)
        return {"result": "promoted", "branch": branch, "stages": run["stages"]}
    finally:
        close_workspace(workspace, local_repo)
