"""`train_pipeline`: the DVC pipeline as a Prefect flow.

DVC decides what runs: one `dvc repro` walks the graph, reruns what changed, restores what
its run-cache holds and skips the rest; the flow reads each stage's outcome from DVC's own
output and never re-derives it. As the output streams, each stage DVC names becomes a task run of
its own (named after the stage, in DVC's order, its state named Ran, Restored or Skipped), holding
the lines DVC printed for it: the run page shows the stages, their timings and their logs. Then `dvc status` must come back clean, or the run fails
naming what is stale. Prefect gives the run its task runs, logs, retries and artifacts.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from classifier.data.checks import markdown as data_checks_markdown
from classifier.data.checks import read_report

from pipeline.device import set_device
from pipeline.project import DATA_CHECKS_PATH, MODEL_CARD_PATH, MODEL_PATH, flatten
from pipeline.run.stages import (
    CHANGED,
    RAN,
    RESTORED,
    SKIPPED,
    PipelineError,
    StageFailed,
    StageFeed,
    StageResult,
    always_changed_stages,
    as_decided,
    is_git_hint,
    metrics_paths,
    outcomes,
    repro,
)

# The stage whose failures are the network's, and so worth another `dvc repro` (DVC then reruns it and what follows).
RETRIED_STAGE, RETRY_DELAYS_S = "download", (2, 8, 30)
# Each task's final state is named after DVC's decision, so the run page's task list reads as DVC's.
STATE_NAMES = {RAN: "Ran", RESTORED: "Restored", SKIPPED: "Skipped"}


@task(task_run_name="{stage}", cache_policy=NO_CACHE)
def dvc_stage(stage: str, feed: StageFeed, always_changed: frozenset[str] = frozenset()) -> State:
    """One DVC stage of a running `dvc repro`: its lines, as DVC prints them, and DVC's decision."""
    logger = get_run_logger()
    lines = []
    for line in feed.lines_of(stage):
        lines.append(line)
        if line.strip() and not is_git_hint(line):
            logger.info("%s", line)
    decided = as_decided(next(r for r in outcomes(lines) if r.name == stage), set(always_changed))
    if isinstance(feed.error, StageFailed) and feed.error.stage == stage:  # this stage's command failed
        # A Failed state, not a raise: the flow raises DVC's error once, and the engine logs no traceback of it.
        return Failed(message=feed.error.summary)
    # No data: Prefect links a later task's argument to an earlier task's result by the object's id, and a freed
    # result's id, reused by the next stage's name, drew an arrow between stages that share nothing.
    return Completed(name=STATE_NAMES[decided.outcome], message=decided.reason)


def dvc_repro(project: Path, target: str | None, timeout_s: float) -> list[StageResult]:
    """`dvc repro`, then `dvc status`, read as it streams: one task per stage DVC names, in DVC's order; a run
    whose results do not match the pipeline fails. A failed download (the network's) is retried."""
    logger = get_run_logger()

    def log_line(line: str) -> None:  # DVC's lines before its first stage (a remote's warning)
        if line.strip() and not is_git_hint(line):
            logger.info("%s", line)

    always_changed = frozenset(always_changed_stages(project))
    for attempt, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
        feed, kill = StageFeed(), []

        def reproduce(feed=feed, kill=kill) -> None:
            try:
                feed.finish(run=repro(project, feed.put, timeout_s, target, on_start=kill.append))
            except BaseException as error:  # noqa: BLE001  (handed to the flow's thread, which raises it)
                feed.finish(error=error)

        runner = threading.Thread(target=reproduce, name="dvc-repro", daemon=True)
        runner.start()
        try:
            for stage in feed.stages(before=log_line):
                dvc_stage(stage, feed, always_changed, return_state=True)  # a failed stage: feed.error, below
        except BaseException:
            for stop in kill:  # cancelled, or the engine failed: no stage process outlives the run
                stop()
            raise
        finally:
            runner.join()
        if feed.error is None:
            break
        if not (isinstance(feed.error, StageFailed) and feed.error.stage == RETRIED_STAGE and delay is not None):
            raise feed.error
        logger.warning("%s; `dvc repro` again in %d s (attempt %d of %d)", feed.error.summary, delay, attempt + 1,
                       len(RETRY_DELAYS_S) + 1)
        time.sleep(delay)
    if feed.run.stale:
        raise PipelineError(f"after `dvc repro`, `dvc status` still reports {', '.join(feed.run.stale)} as not up to "
                            "date: the results on disk do not match the pipeline")
    return feed.run.stages


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
    return run_pipeline(project_dir, device, target, timeout_s)


def run_pipeline(project_dir: str = ".", device: str | None = None, target: str | None = None,
                 timeout_s: float = 3600.0) -> dict:
    """train_pipeline's work, in whichever flow run calls it: the retrain runs it in its own run, so that its
    stage tasks and their lines (training's epochs) are in the retrain's log, which `--watch` follows."""
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    if device is not None and set_device(project, device):
        logger.info("params.yaml: train.device is now %s", device)

    try:
        results = dvc_repro(project, target, timeout_s)
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
