"""`retrain`: run the pipeline on a branch in a workspace of its own, and promote the result
only if it is at least as good as the champion committed at that branch.

The workspace is a fresh `git worktree` (a clone, when `repo` is a URL) in a unique folder, so
the user's checkout is never touched and two retrains never share a DVC workspace. A worktree
of a local repo shares that repo's DVC cache (through its `.dvc/config.local`); a clone of a
URL starts with an empty cache. Either way, outputs are pulled from the DVC remote when one
is configured. Then `dvc repro` decides: what the cache holds is restored, the rest reruns.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError

from pipeline.device import check_device, require_device
from pipeline.run.flow import train_pipeline
from pipeline.project import LOCK_PATH, MODEL_PATH, PARAMS_PATH
from pipeline.retrain_gate import RECORD_PATH, GateError, decision_report, judge_challenger, write_record
from pipeline.run.stages import lock_md5, stage_env

NO_CHANGE = "no change: DVC reran and restored nothing, champion kept"
SAME_MODEL = "no change: the retrained model is byte-identical to the champion, champion kept"
# The published model, as dvc.lock records it: equal hashes mean nothing worth a branch.


class RetrainError(Exception):
    """The retrain could not run (no git repo, unknown ref) or its model lost to the champion."""


def command(args: list[str], cwd: Path, what: str) -> str:
    result = subprocess.run(args, cwd=cwd, env=stage_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RetrainError(f"{what} failed (exit {result.returncode}): {' '.join(args)}\n{result.stderr.strip()}")
    return result.stdout


def git(cwd: Path, *args: str, what: str = "git") -> str:
    return command(["git", *args], cwd, what)


def dvc(cwd: Path, *args: str, what: str = "dvc") -> str:
    return command([sys.executable, "-m", "dvc", *args], cwd, what)


def is_url(repo: str) -> bool:
    return "://" in repo or repo.startswith("git@")


def open_workspace(repo: str, base: str, root: Path) -> tuple[Path, Path | None]:
    """A unique checkout of `base`: a detached worktree of a local repo, or a clone of a URL.

    Returns the workspace and, for a worktree, the repo it belongs to (to share its DVC cache).
    The workspace is never one a dead run left behind: those are removed first, and this run
    holds the lock of its own until `close_workspace`.
    """
    workspace = root / f"retrain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    local = None if is_url(repo) else Path(repo).resolve()
    top = None
    if local is not None:
        if not local.is_dir():
            raise RetrainError(f"repo {repo!r} is not a folder or a git URL")
        probe = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=local, capture_output=True, text=True)
        if probe.returncode != 0:
            raise RetrainError(f"{local} is not a git repository (retrain needs one to branch from)")
        top = Path(probe.stdout.strip())
        if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], cwd=top,
                          capture_output=True).returncode != 0:
            raise RetrainError(f"base ref {base!r} does not exist in {top}")
    root.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_workspaces(root, top):
        _logger().info("removed %s, left by a retrain that died", stale)
    _hold_workspace_lock(workspace)
    try:
        if top is None:
            git(root, "clone", "--quiet", "--branch", base, repo, str(workspace), what=f"cloning {repo}")
        else:
            git(top, "worktree", "add", "--quiet", "--detach", str(workspace), base,
                what="creating the retrain worktree")
    except BaseException:
        close_workspace(workspace, top)
        raise
    return workspace, top


def close_workspace(workspace: Path, repo: Path | None) -> None:
    if repo is not None:
        subprocess.run(["git", "worktree", "remove", "--force", str(workspace)], cwd=repo, capture_output=True)
    shutil.rmtree(workspace, ignore_errors=True)
    # The lock goes last: a workspace whose lock file is gone counts as stale.
    descriptor = _workspace_locks.pop(workspace, None)
    _lock_path(workspace).unlink(missing_ok=True)
    if descriptor is not None:
        os.close(descriptor)


# A workspace's lock is `<workspace>.lock` beside it, flock'ed by the process that runs the retrain
# for as long as the workspace lives. The kernel drops a flock when its process dies, however it dies
# (SIGKILL, out of memory, the machine's power), so a workspace whose lock is free was left by a
# dead run. Workspaces live on the machine that runs the retrain (the system's temp folder unless
# `workspace_root` says otherwise), and so do their locks.
WORKSPACE_NAME = re.compile(r"retrain-\d{8}T\d{6}Z-[0-9a-f]{8}")
_workspace_locks: dict[Path, int] = {}


def _lock_path(workspace: Path) -> Path:
    return workspace.with_name(f"{workspace.name}.lock")


def _hold_workspace_lock(workspace: Path) -> None:
    """Create the lock file already locked (locked under a private name, then renamed into place), so
    no other run ever sees it unlocked while this one lives."""
    private = workspace.with_name(f".{workspace.name}.lock.{os.getpid()}")
    descriptor = os.open(private, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(descriptor, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        os.replace(private, _lock_path(workspace))
    except BaseException:
        os.close(descriptor)
        private.unlink(missing_ok=True)
        raise
    _workspace_locks[workspace] = descriptor


def _take_free_lock(path: Path) -> int | None:
    """The lock at `path` if no live process holds it (its descriptor, to close), else None."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _private_lock_of_dead_process(name: str) -> bool:
    prefix, _, pid = name.rpartition(".lock.")
    if not (prefix.startswith(".") and WORKSPACE_NAME.fullmatch(prefix[1:]) and pid.isdigit()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_workspaces(root: Path, repo: Path | None = None) -> list[Path]:
    """Remove what dead retrains left in `root`: their workspaces (worktrees or clones) and lock files.

    A workspace is stale when its lock file is missing or free. Returns the workspaces removed.
    """
    removed = []
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if WORKSPACE_NAME.fullmatch(name) and entry.is_dir() and not entry.is_symlink():
            lock = _lock_path(entry)
            descriptor = _take_free_lock(lock)
            if descriptor is None and lock.exists():
                continue  # a live run's
            try:
                shutil.rmtree(entry, ignore_errors=True)
                lock.unlink(missing_ok=True)
            finally:
                if descriptor is not None:
                    os.close(descriptor)
            removed.append(entry)
        elif (name.endswith(".lock") and WORKSPACE_NAME.fullmatch(name.removesuffix(".lock"))
              and not entry.with_suffix("").exists()) or _private_lock_of_dead_process(name):
            # A lock without its workspace, or one that never made it past its private name.
            descriptor = _take_free_lock(entry)
            if descriptor is not None:
                entry.unlink(missing_ok=True)
                os.close(descriptor)
    if repo is not None:
        # Forget the worktrees whose folders are gone (this run's repo; another repo prunes its own).
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
    return removed


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def has_dvc_remote(workspace: Path) -> bool:
    return bool(dvc(workspace, "remote", "list", what="listing DVC remotes").strip())


def restore_outputs(workspace: Path, repo: Path | None, logger) -> None:
    """Bring the base's outputs into the workspace so that unchanged stages are not rerun."""
    if repo is not None:
        cache = dvc(repo, "cache", "dir", what="finding the repo's DVC cache").strip()
        dvc(workspace, "config", "--local", "cache.dir", cache, what="sharing the DVC cache")
        logger.info("sharing the DVC cache at %s", cache)
    if has_dvc_remote(workspace):
        # A partial pull is fine: whatever is missing is recomputed by the pipeline.
        result = subprocess.run([sys.executable, "-m", "dvc", "pull", "--allow-missing"], cwd=workspace,
                                env=stage_env(), capture_output=True, text=True)
        logger.info("dvc pull: exit %d %s", result.returncode, result.stderr.strip()[-500:])
    result = subprocess.run([sys.executable, "-m", "dvc", "checkout"], cwd=workspace, env=stage_env(),
                            capture_output=True, text=True)
    if result.returncode != 0:
        logger.info("dvc checkout restored what the cache had; the rest will be computed:\n%s",
                    result.stderr.strip()[-1000:])


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
