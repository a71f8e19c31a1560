"""What git and DVC say a pull request changed: the params diff, which stages reran and why, the
model's hash at each side, the `dvc plots diff` page; and the git questions the report asks
(the repository's root, a revision's commit, what is uncommitted).

Everything of the report that runs `git` or `dvc` lives here; a revision's results are read by
pipeline.results, judging is classifier.judging.compare, and the markdown is pipeline.report.render.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from classifier.cli import UserError
from classifier.files import file_digest
from pipeline.project import MODEL_PATH, PARAMS_PATH, flatten
from pipeline.report.escape import code
from pipeline.results import git
from pipeline.run.stages import PipelineError, cached_file, lock_md5, stage_env, stage_names


class ReportError(UserError):
    """A report that cannot be made; the message says what to do."""


# ---------------------------------------------------------------- what changed (pure)


@dataclass(frozen=True)
class ParamChange:
    file: str
    key: str
    base: object
    head: object


def params_changes(dvc_params_diff: Mapping) -> list[ParamChange]:
    """Rows of `dvc params diff --json`: {file: {key: {"old", "new", ...}}}."""
    return [
        ParamChange(file, key, change.get("old"), change.get("new"))
        for file, changes in sorted(dvc_params_diff.items())
        for key, change in sorted(changes.items())
    ]


def section_changes(base: Mapping | None, head: Mapping | None, section: str) -> list[ParamChange]:
    """The keys of one params.yaml section that differ (dvc params diff only sees stage params)."""
    base_flat = flatten(section, (base or {}).get(section) or {})
    head_flat = flatten(section, (head or {}).get(section) or {})
    return [ParamChange(PARAMS_PATH, key, base_flat.get(key), head_flat.get(key))
            for key in sorted(base_flat.keys() | head_flat.keys()) if base_flat.get(key) != head_flat.get(key)]


@dataclass(frozen=True)
class StageChange:
    stage: str
    reran: bool
    reasons: tuple[str, ...]


def _entries(stage: Mapping, kind: str) -> dict[str, dict]:
    # A dep's identity is everything but its path: md5 (or etag, checksum), size, nfiles.
    return {entry["path"]: {k: v for k, v in entry.items() if k != "path"} for entry in stage.get(kind) or []}


def _changed(base: Mapping, head: Mapping) -> list[str]:
    return sorted(key for key in base.keys() | head.keys() if base.get(key) != head.get(key))


def stage_changes(base_lock: Mapping | None, head_lock: Mapping, order: Sequence[str] = ()) -> list[StageChange]:
    """Which stages of dvc.lock ran on different inputs at head than at base, and why; in `order`
    (dvc.yaml's, since dvc.lock lists stages in the order they first ran), others after."""
    base_stages = (base_lock or {}).get("stages") or {}
    unordered = head_lock.get("stages") or {}
    position = {name: index for index, name in enumerate(order)}
    head_stages = {name: unordered[name] for name in sorted(unordered, key=lambda name: position.get(name, len(position)))}
    changes = []
    for name, head_stage in head_stages.items():
        base_stage = base_stages.get(name)
        if base_stage is None:
            changes.append(StageChange(name, True, ("not in the base dvc.lock",)))
            continue
        reasons = []
        if base_stage.get("cmd") != head_stage.get("cmd"):
            reasons.append("command changed")
        if params := _changed(flatten("", base_stage.get("params") or {}), flatten("", head_stage.get("params") or {})):
            # Keys come as "params.yaml.train.epochs"; the file is nearly always params.yaml.
            reasons.append("params " + ", ".join(code(key.removeprefix(PARAMS_PATH + '.')) for key in params))
        if deps := _changed(_entries(base_stage, "deps"), _entries(head_stage, "deps")):
            reasons.append("deps " + ", ".join(code(path) for path in deps))
        changes.append(StageChange(name, bool(reasons), tuple(reasons)))
    changes.extend(StageChange(name, False, ("removed at head",)) for name in base_stages if name not in head_stages)
    return changes


@dataclass(frozen=True)
class ModelHash:
    algorithm: str | None  # "sha256" or "md5"; None when the revision has no model
    value: str | None
    source: str


def model_hash(lock: Mapping | None, cache_dir: Path | None, workspace_file: Path | None) -> ModelHash:
    """The model's sha256 when its bytes are at hand (DVC cache or workspace), else dvc.lock's md5."""
    md5 = lock_md5(lock, MODEL_PATH)
    if md5 is None:
        return ModelHash(None, None, "no `models/model.pth` in dvc.lock")
    if (cached := cached_file(cache_dir, md5)) is not None:
        return ModelHash("sha256", file_digest(cached), "from the DVC cache")
    if workspace_file is not None and workspace_file.is_file() and file_digest(workspace_file, "md5") == md5:
        return ModelHash("sha256", file_digest(workspace_file), "from the workspace")
    return ModelHash("md5", md5, "from dvc.lock; the file itself is not in this checkout")


# ---------------------------------------------------------------- git and dvc (I/O)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # The dvc of this interpreter: the one installed beside the project, whatever PATH says.
    return subprocess.run([sys.executable, "-P", "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env=stage_env())


def _last_line(result: subprocess.CompletedProcess) -> str:
    """The line that says what went wrong: DVC's last `ERROR` line (DVC ends a failure with a support
    link, "Having any troubles? ...", which says nothing about it), else the last line."""
    lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [f"exit status {result.returncode}"])[-1]


def repo_root(directory: Path) -> Path:
    result = git(directory, "rev-parse", "--show-toplevel")
    if result.returncode != 0:
        raise ReportError(f"{directory.resolve()} is not inside a git repository; run the report from the project's clone")
    return Path(result.stdout.strip())


def resolve(repo: Path, revision: str) -> str | None:
    result = git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    return result.stdout.strip() if result.returncode == 0 else None


def missing_base_note(repo: Path, base_name: str) -> str:
    branch = base_name.removeprefix("origin/")
    if git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        return (f"The base revision `{base_name}` is not in this clone: it is a shallow clone. Fetch the history with "
                f"`git fetch --unshallow` (or only the base with `git fetch origin {branch}`) and rerun; in GitHub "
                "Actions, check out with `fetch-depth: 0`. Only the head's numbers are shown.")
    return (f"The base revision `{base_name}` is not in this repository. Check the name, or fetch it with "
            f"`git fetch origin {branch}`, and rerun. Only the head's numbers are shown.")


def uncommitted(repo: Path, paths: Sequence[str]) -> list[str]:
    result = git(repo, "status", "--porcelain", "--", *paths)
    return sorted(line[3:] for line in result.stdout.splitlines() if line.strip())


def dvc_params_diff(repo: Path, base_sha: str) -> tuple[list[ParamChange] | None, str | None]:
    result = _dvc(repo, "params", "diff", base_sha, "--json")
    try:
        payload = json.loads(result.stdout or "{}") if result.returncode == 0 else None
    except json.JSONDecodeError:
        payload = None
    if payload is None:
        return None, f"`dvc params diff` failed: {_last_line(result)}"
    return params_changes(payload), None


def dvc_plots(repo: Path, base_sha: str | None, out_dir: Path) -> tuple[str | None, str | None]:
    """`dvc plots diff` of base and workspace (`dvc plots show` without a base) into out_dir/plots."""
    target = out_dir.resolve() / "plots"
    args = ["plots", "diff", base_sha] if base_sha else ["plots", "show"]
    result = _dvc(repo, *args, "-o", str(target))
    if result.returncode != 0 or not (target / "index.html").is_file():
        return None, f"`dvc {' '.join(args[:2])}` wrote no page: {_last_line(result)}"
    return "plots/index.html", None


def stage_order(repo: Path) -> list[str]:
    try:
        return stage_names(repo)
    except PipelineError:
        return []  # the table falls back to dvc.lock's order
