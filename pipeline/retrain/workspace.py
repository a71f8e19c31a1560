"""A retrain's workspace: a checkout of its own, opened, restored from the DVC cache and closed.

The workspace is a fresh `git worktree` of a local work tree, or a clone of anything else (a URL,
or a path that is a bare repository, such as an origin on a shared disk), in a unique folder, so
the user's checkout is never touched and two retrains never share a DVC workspace. A worktree
shares its repo's DVC cache (through its `.dvc/config.local`); a clone starts with an empty cache
and pushes its branch back to where it came from. Either way, outputs are pulled from the DVC remote when one
is configured. Each workspace is held by a lock its process keeps while it lives, so what a
dead run left behind is found and removed by the next one.
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
import uuid
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from pipeline.run.stages import stage_env


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
    top = work_tree(repo)
    if top is not None:
        if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], cwd=top,
                          env=stage_env(), capture_output=True).returncode != 0:
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


def work_tree(repo: str) -> Path | None:
    """The top of `repo`'s work tree when it is a local one (a worktree of it is the workspace); None
    when it is to be cloned: a URL, or a path to a repository without a work tree (a bare origin)."""
    if is_url(repo):
        return None
    local = Path(repo).resolve()
    if not local.is_dir():
        raise RetrainError(f"repo {repo!r} is not a folder or a git URL")
    probe = subprocess.run(["git", "rev-parse", "--is-bare-repository", "--show-toplevel"], cwd=local,
                           env=stage_env(), capture_output=True, text=True)
    if probe.returncode != 0 and "must be run in a work tree" not in probe.stderr:
        raise RetrainError(f"{local} is not a git repository (retrain needs one to branch from)")
    answers = probe.stdout.split("\n")
    if answers[0] == "true" or probe.returncode != 0:
        return None  # bare, or inside a .git folder: no work tree to add a worktree to
    return Path(answers[1].strip())


def close_workspace(workspace: Path, repo: Path | None) -> None:
    if repo is not None:
        subprocess.run(["git", "worktree", "remove", "--force", str(workspace)], cwd=repo, env=stage_env(),
                       capture_output=True)
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
        subprocess.run(["git", "worktree", "prune"], cwd=repo, env=stage_env(), capture_output=True)
    return removed


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def check_push_access(workspace: Path) -> None:
    """Stop a retrain of a clone before it trains when its origin will not take the branch it would push
    (a public repository cloned read-only, say): `git push --dry-run` asks the origin, writes nothing."""
    result = subprocess.run(["git", "push", "--dry-run", "--quiet", "origin", "HEAD:refs/heads/retrain/push-check"],
                            cwd=workspace, env=stage_env({"GIT_TERMINAL_PROMPT": "0"}), capture_output=True, text=True)
    if result.returncode != 0:
        url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=workspace, env=stage_env(),
                             capture_output=True, text=True).stdout.strip()
        said = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise RetrainError(f"cannot push to {url} ({said}): nothing trained. Retrain your own checkout "
                           "(make retrain; make deploy without REPO), or a repository you can push to")


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
