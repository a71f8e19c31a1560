"""`train_pipeline`: the DVC stages as Prefect tasks, in dvc.yaml's order.

DVC decides what is stale; Prefect gives each stage a task run, its logs, retries and a
timeout. One `dvc status` call up front finds the changed stages, so a fully cached pipeline
costs one DVC start-up rather than one per stage: a stage is handed to
`dvc repro --single-item` only if DVC reported it changed or a stage it reads from ran.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline.device import check_device, pin_device
from pipeline.stages import (
    RAN,
    SKIPPED,
    StageResult,
    changed_stages,
    metrics_paths,
    read_stage_graph,
    run_stage,
    stage_order,
    stages_until,
)

# The model card the save stage writes (dvc.yaml's save outs); read for its sha256.
MODEL_CARD = "models/model.json"
# The stage that fetches data is the one worth retrying: its failures are the network's.
RETRIED_STAGES = {"download": 3}


@task(cache_policy=NO_CACHE)
def dvc_stage(project_dir: str, stage: str, must_run: bool, timeout_s: float) -> StageResult:
    logger = get_run_logger()
    if not must_run:
        logger.info("%s: unchanged according to dvc status, skipped", stage)
        return StageResult(stage, SKIPPED, "unchanged")
    started = time.perf_counter()
    outcome, reason = run_stage(Path(project_dir), stage, lambda line: logger.info("%s", line), timeout_s)
    seconds = time.perf_counter() - started
    logger.info("%s: %s (%s) in %.1f s", stage, outcome, reason, seconds)
    return StageResult(stage, outcome, reason, seconds)


def stage_task(stage: str):
    retries = RETRIED_STAGES.get(stage, 0)
    return dvc_stage.with_options(
        name=f"stage-{stage}", task_run_name=stage, retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=2)(retries) if retries else 0,
    )


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def metrics_rows(metrics: dict, prefix: str = "") -> list[dict]:
    """metrics.json flattened to one {metric, value} row per leaf, e.g. test.accuracy."""
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        rows.extend(metrics_rows(value, name + ".") if isinstance(value, dict) else [{"metric": name, "value": value}])
    return rows


def run_report(results: list[StageResult], metrics: dict | None, card: dict | None, device: str) -> str:
    lines = ["# Pipeline run", "", f"Device class: `{device}`", "", "| stage | outcome | why | seconds |",
             "|---|---|---|---|"]
    lines += [f"| {r.name} | **{r.outcome}** | {r.reason} | {r.seconds:.1f} |" for r in results]
    if metrics is not None:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {row['metric']} | {row['value']} |" for row in metrics_rows(metrics)]
    if card is not None:
        lines += ["", f"Model: `{card.get('file', 'model.pth')}` sha256 `{card.get('sha256')}`, "
                      f"trained on `{card.get('trained_on')}`"]
    return "\n".join(lines) + "\n"


@flow(name="train-pipeline")
def train_pipeline(project_dir: str = ".", device: str = "auto", target: str | None = None,
                   stage_timeout_s: float = 3600.0) -> dict:
    """Run the DVC pipeline in `project_dir`, stage by stage; only what changed reruns.

    device: auto | cpu | cuda, pinned for the train stage through device.yaml.
    target: stop after this stage (and what it needs), like `dvc repro <target>`.
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    check_device(device)
    graph = read_stage_graph(project)
    stages = stages_until(stage_order(graph), graph, target)
    if pin_device(project, device):
        logger.info("device.yaml now pins the train stage to %s", device)

    changed = changed_stages(project)
    logger.info("dvc status: %s", ", ".join(sorted(changed)) or "everything up to date")
    results: list[StageResult] = []
    ran: set[str] = set()
    for stage in stages:
        # A stage reading a rerun stage's outs may now be stale although `dvc status` said
        # it was not; DVC itself decides then, and skips it if the outs came out the same.
        must_run = stage in changed or bool(graph[stage] & ran)
        result = stage_task(stage)(str(project), stage, must_run, stage_timeout_s)
        results.append(result)
        if result.outcome == RAN:
            ran.add(stage)

    metrics_files = [project / path for path in metrics_paths(project)]
    metrics = read_json(metrics_files[0]) if metrics_files else None
    card = read_json(project / MODEL_CARD)
    if metrics is not None:
        create_table_artifact(key="metrics", table=metrics_rows(metrics),
                              description=f"{metrics_files[0].relative_to(project)} after this run")
    create_markdown_artifact(key="pipeline-run", markdown=run_report(results, metrics, card, device),
                             description="stages ran or skipped, metrics, model sha256")
    summary = {
        "stages": {r.name: r.outcome for r in results},
        "metrics": metrics,
        "model_sha256": (card or {}).get("sha256"),
    }
    logger.info("stages: %s", ", ".join(f"{name} {outcome}" for name, outcome in summary["stages"].items()))
    return summary
