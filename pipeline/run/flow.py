"""`train_pipeline`: the DVC pipeline as a Prefect flow.

DVC decides what runs: one `dvc repro` walks the graph, reruns what changed, restores what
its run-cache holds and skips the rest; the flow reads each stage's outcome from DVC's own
output and never re-derives it. Then `dvc status` must come back clean, or the run fails
naming what is stale. Prefect gives the run its task runs, logs, retries and artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from classifier.data_checks import markdown as data_checks_markdown
from classifier.data_checks import read_report

from pipeline.device import set_device
from pipeline.project import DATA_CHECKS_PATH, MODEL_CARD_PATH, MODEL_PATH, flatten
from pipeline.run.stages import (
    CHANGED,
    PipelineError,
    StageFailed,
    StageResult,
    is_git_hint,
    metrics_paths,
    repro,
)

# The stage whose failures are the network's, and so worth a retry of the run.
RETRIED_STAGE, RETRIES = "download", 3


def retry_when_the_network_failed(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, StageFailed) and error.stage == RETRIED_STAGE


@task(name="dvc-repro", cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=[2, 8, 30],
      retry_condition_fn=retry_when_the_network_failed)
def dvc_repro(project_dir: str, target: str | None, timeout_s: float) -> list[StageResult]:
    """`dvc repro`, then `dvc status`: a run whose results do not match the pipeline fails."""
    logger = get_run_logger()

    def log_line(line: str) -> None:
        if line.strip() and not is_git_hint(line):
            logger.info("%s", line)

    run = repro(Path(project_dir), log_line, timeout_s, target)
    if run.stale:
        raise PipelineError(f"after `dvc repro`, `dvc status` still reports {', '.join(run.stale)} as not up to "
                            "date: the results on disk do not match the pipeline")
    return run.stages


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def metrics_rows(metrics: dict) -> list[dict]:
    """metrics.json flattened to one {metric, value} row per leaf, e.g. test.accuracy."""
    return [{"metric": name, "value": value} for name, value in flatten("", metrics).items()]


def run_report(results: list[StageResult], metrics: dict | None, card: dict | None) -> str:
    lines = ["# Pipeline run", "", "| stage | outcome | DVC's reason |", "|---|---|---|"]
    lines += [f"| {r.name} | **{r.outcome}** | {r.reason} |" for r in results]
    if metrics is not None:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {row['metric']} | {row['value']} |" for row in metrics_rows(metrics)]
    if card is not None:
        lines += ["", f"Model: `{MODEL_PATH}` sha256 `{card.get('sha256')}`, trained on `{card.get('trained_on')}`"]
    return "\n".join(lines) + "\n"


def publish_data_checks(project: Path) -> None:
    """The data checks before training (metrics/data_checks.json, written by prepare) as the run's
    `data-checks` artifact, whether the run went on to train or the checks blocked it."""
    report = read_report(project / DATA_CHECKS_PATH)
    if report is not None:
        create_markdown_artifact(key="data-checks", markdown=data_checks_markdown(report, "# Data checks"),
                                 description=f"{DATA_CHECKS_PATH}: {report.get('summary', '')}"[:500])


@flow(name="train-pipeline")
def train_pipeline(project_dir: str = ".", device: str | None = None, target: str | None = None,
                   timeout_s: float = 3600.0) -> dict:
    """Run `dvc repro` in `project_dir`: DVC reruns what changed; the run ends checked by `dvc status`.

    device: None keeps params.yaml's `train.device`; auto | cpu | cuda | mps sets it there first.
    target: stop after this stage (and what it needs), like `dvc repro <target>`.
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    if device is not None and set_device(project, device):
        logger.info("params.yaml: train.device is now %s", device)

    try:
        results = dvc_repro(str(project), target, timeout_s)
    finally:  # a run the data checks blocked shows why, too
        publish_data_checks(project)

    metrics_files = [project / path for path in metrics_paths(project)]
    metrics = read_json(metrics_files[0]) if metrics_files else None
    card = read_json(project / MODEL_CARD_PATH)
    if metrics is not None:
        create_table_artifact(key="metrics", table=metrics_rows(metrics),
                              description=f"{metrics_files[0].relative_to(project)} after this run")
    create_markdown_artifact(key="pipeline-run", markdown=run_report(results, metrics, card),
                             description="what DVC did to each stage, the metrics, the model's sha256")
    summary = {
        "stages": {r.name: r.outcome for r in results},
        "changed": [r.name for r in results if r.outcome in CHANGED],
        "metrics": metrics,
        "model_path": MODEL_PATH,
        "model_sha256": (card or {}).get("sha256"),
    }
    logger.info("stages: %s", ", ".join(f"{name} {outcome}" for name, outcome in summary["stages"].items()))
    return summary
