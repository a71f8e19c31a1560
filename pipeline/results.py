"""One revision's results, as the pipeline committed them (read from git) or as the workspace holds them.

The pull-request report and the retrain gate both judge a revision by what evaluate and train
wrote beside the code (metrics, per-example predictions, the test split's fingerprint, per-class
scores, history), by the dvc.lock that made them and by the `compare` policy in its params.yaml.
This module reads those files, from `git show <sha>:<path>` or from the workspace, into one
`Snapshot`; judging is classifier.judging.compare, and what a pull request changed is pipeline.report.

No Prefect and no torch: pandas, PyYAML and git.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from classifier.cli import UserError
from classifier.judging.compare import PredictionsError, Results, read_predictions
from classifier.params import CompareParams
from pipeline.run.stages import lock_md5, stage_env

from pipeline.project import (  # the files read at every revision
    EVALUATION_PATH,
    HISTORY_PATH,
    LOCK_PATH,
    METRICS_PATH,
    MODEL_PATH,
    PARAMS_PATH,
    PER_CLASS_PATH,
    PREDICTIONS_PATH,
)

# How a revision's file is read: its text, or None when the revision has no such file.
Reader = Callable[[str], str | None]


class ResultsError(UserError):
    """A revision's results file that is there but cannot be read; the message names the file and revision."""


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
        raise ResultsError(f"{path} {where}: cannot be read ({error})") from None


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


def read_snapshot(read: Reader, where: str) -> Snapshot:
    """`read(path)` gives a file's text at the revision, or None when it has no such file; `where`
    ("in the workspace", "at main (1a2b3c4d5e)") names the revision in errors."""
    def predictions(text: str) -> pd.DataFrame:
        try:
            return read_predictions(text, f"{PREDICTIONS_PATH} {where}")
        except PredictionsError as error:
            raise ResultsError(str(error)) from None

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


def same_published_model(committed_lock: Mapping | None, current_lock: Mapping | None) -> bool:
    """Whether two dvc.lock files record the same bytes for the published model."""
    md5 = lock_md5(current_lock, MODEL_PATH)
    return md5 is not None and md5 == lock_md5(committed_lock, MODEL_PATH)


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


# ---------------------------------------------------------------- where the files come from


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`git ARGS` in `repo`, output captured, in the environment every DVC and git subprocess gets."""
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=stage_env())


def git_reader(repo: Path, sha: str) -> Reader:
    """The files committed at `sha` (`git show sha:path`)."""
    def read(path: str) -> str | None:
        result = git(repo, "show", f"{sha}:{path}")
        return result.stdout if result.returncode == 0 else None
    return read


def workspace_reader(repo: Path) -> Reader:
    """The files as they are in the working tree."""
    def read(path: str) -> str | None:
        try:
            return (repo / path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    return read
