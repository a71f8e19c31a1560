"""The pull-request report's readers: one revision's committed results from git or the workspace,
and what git and DVC say about the change (params diff, stages, model hash, plots page).

Everything that runs `git` or `dvc` lives here; judging is classifier.compare, and the markdown
is pipeline.report_render.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from classifier.cli import UserError
from classifier.compare import PredictionsError, Results, read_predictions
from classifier.files import file_digest
from classifier.params import CompareParams
from pipeline.report_markdown import code
from pipeline.run.stages import PipelineError, lock_md5, stage_env, stage_names

from pipeline.project import (  # the files read at both revisions
    EVALUATION_PATH,
    HISTORY_PATH,
    LOCK_PATH,
    METRICS_PATH,
    MODEL_PATH,
    PARAMS_PATH,
    PER_CLASS_PATH,
    PREDICTIONS_PATH,
    flatten,
)


class ReportError(UserError):
    """A report that cannot be made; the message says what to do."""


# ---------------------------------------------------------------- what each revision holds


@dataclass(frozen=True)
class Snapshot:
    """The pipeline's results at one revision; a field is None when that revision lacks the file."""

    metrics: dict | None
    evaluation: dict | None
    predictions: pd.DataFrame | None
    history: list[dict[str, float]] | None
    per_class: list[dict[str, str]] | None
    lock: dict | None
    params: dict | None

    @property
    def results(self) -> Results | None:
        """The per-example results with their test set's fingerprint; None unless both files are there."""
        if self.predictions is None or self.evaluation is None:
            return None
        return Results(str(self.evaluation.get("test_fingerprint")), self.predictions)


def _parse(where: str, path: str, text: str | None, parser: Callable[[str], object]):
    if text is None:
        return None
    try:
        return parser(text)
    except (ValueError, KeyError, TypeError) as error:
        raise ReportError(f"{path} {where}: cannot be read ({error})") from None


def _history_rows(text: str) -> list[dict[str, float]]:
    return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(io.StringIO(text))]


def _mapping(text: str) -> dict:
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError("not a mapping")
    return loaded


def _evaluation(text: str) -> dict:
    evaluation = json.loads(text)
    if not isinstance(evaluation, dict) or not str(evaluation.get("test_fingerprint", "")).startswith("sha256:"):
        raise ValueError("no test_fingerprint")
    return evaluation


def read_snapshot(read: Callable[[str], str | None], where: str) -> Snapshot:
    """`read(path)` gives a file's text at the revision, or None when it has no such file; `where`
    ("in the workspace", "at main (1a2b3c4d5e)") names the revision in errors."""
    def predictions(text: str) -> pd.DataFrame:
        try:
            return read_predictions(text, f"{PREDICTIONS_PATH} {where}")
        except PredictionsError as error:
            raise ReportError(str(error)) from None

    return Snapshot(
        metrics=_parse(where, METRICS_PATH, read(METRICS_PATH), json.loads),
        evaluation=_parse(where, EVALUATION_PATH, read(EVALUATION_PATH), _evaluation),
        predictions=predictions(text) if (text := read(PREDICTIONS_PATH)) is not None else None,
        history=_parse(where, HISTORY_PATH, read(HISTORY_PATH), _history_rows),
        per_class=_parse(where, PER_CLASS_PATH, read(PER_CLASS_PATH),
                         lambda text: list(csv.DictReader(io.StringIO(text)))),
        lock=_parse(where, LOCK_PATH, read(LOCK_PATH), _mapping),
        params=_parse(where, PARAMS_PATH, read(PARAMS_PATH), _mapping),
    )


def compare_policy(params: Mapping | None, where: str) -> tuple[CompareParams | None, str | None]:
    """The `compare` section of one revision's params.yaml, or why there is none to judge by."""
    section = (params or {}).get("compare")
    if section is None:
        return None, f"`{PARAMS_PATH}` {where} has no `compare` section to judge by"
    try:
        return CompareParams.model_validate(section), None
    except ValueError as error:
        first = str(error).splitlines()
        return None, f"`{PARAMS_PATH}` {where} has an invalid `compare` section ({'; '.join(first[1:3])})"


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
    if cache_dir is not None:
        cached = cache_dir / "files" / "md5" / md5[:2] / md5[2:]
        if cached.is_file():
            return ModelHash("sha256", file_digest(cached), "from the DVC cache")
    if workspace_file is not None and workspace_file.is_file() and file_digest(workspace_file, "md5") == md5:
        return ModelHash("sha256", file_digest(workspace_file), "from the workspace")
    return ModelHash("md5", md5, "from dvc.lock; the file itself is not in this checkout")


# ---------------------------------------------------------------- git and dvc (I/O)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=stage_env())


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # The dvc of this interpreter: the one installed beside the project, whatever PATH says.
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          env=stage_env())


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def repo_root(directory: Path) -> Path:
    result = _git(directory, "rev-parse", "--show-toplevel")
    if result.returncode != 0:
        raise ReportError(f"{directory.resolve()} is not inside a git repository; run the report from the project's clone")
    return Path(result.stdout.strip())


def resolve(repo: Path, revision: str) -> str | None:
    result = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    return result.stdout.strip() if result.returncode == 0 else None


def missing_base_note(repo: Path, base_name: str) -> str:
    branch = base_name.removeprefix("origin/")
    if _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        return (f"The base revision `{base_name}` is not in this clone: it is a shallow clone. Fetch the history with "
                f"`git fetch --unshallow` (or only the base with `git fetch origin {branch}`) and rerun; in GitHub "
                "Actions, check out with `fetch-depth: 0`. Only the head's numbers are shown.")
    return (f"The base revision `{base_name}` is not in this repository. Check the name, or fetch it with "
            f"`git fetch origin {branch}`, and rerun. Only the head's numbers are shown.")


def git_reader(repo: Path, sha: str) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        result = _git(repo, "show", f"{sha}:{path}")
        return result.stdout if result.returncode == 0 else None
    return read


def workspace_reader(repo: Path) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        try:
            return (repo / path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    return read


def uncommitted(repo: Path, paths: Sequence[str]) -> list[str]:
    result = _git(repo, "status", "--porcelain", "--", *paths)
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


def dvc_cache_dir(repo: Path) -> Path | None:
    result = _dvc(repo, "cache", "dir")
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


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
