"""Sweeps across workers: one deployment run per point of a `dvc exp run -S` grid.

    python -m pipeline.sweep -S 'train.learning_rate=0.0003,0.001,0.003' -S 'model.hidden_sizes=[256,256],[512,512]'

`sweep` expands the grid as `dvc exp run --queue` does (DVC's own Hydra sweeper, so the grammar is
DVC's), submits one run of the `sweep-point` deployment per point to its work pool without waiting
for any, then waits for them all. Each point runs on whichever worker takes it, in that worker's own
clone of the repository (prefect.yaml's pull steps): `dvc exp run -S ...`, then `dvc exp push
origin`, which sends the experiment's commit to the git origin and its outputs to the DVC remote.
A failed point is reported and the others go on. The sweep ends with a table artifact of every
point's params and test metrics, best first; it fails when any point failed.

On any clone of the repository afterwards, `dvc exp pull origin` then `dvc exp show` shows them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from pipeline.device import check_device, require_device, trained_as
from pipeline.project import METRICS_PATH, PARAMS_PATH, flatten, lookup
from pipeline.run.stages import TAIL_LINES, stage_env, stream

POINT_DEPLOYMENT = "sweep-point/sweep-point-cpu"
POINT_ARTIFACT = "sweep-point"
SWEEP_ARTIFACT = "sweep"
GIT_REMOTE = "origin"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
POLL_S = 2.0
# Best first: the highest test accuracy, then the lowest test loss.
RANK_BY = [("test.accuracy", False), ("test.loss", True)]


class SweepError(Exception):
    """A grid that does not parse, or a point that could not run."""


class SweepFailed(SweepError):
    """Some points failed; `rows` is the sweep's whole table, best first."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows

    def __reduce__(self):  # the exception crosses Prefect's state machinery intact
        return SweepFailed, (str(self), self.rows)


def expand_grid(overrides: Sequence[str]) -> list[list[str]]:
    """Every point of a `-S` grid, each a list of `-S` values, in the order `dvc exp run --queue`
    would queue them (DVC's own parsing: `key=a,b`, `key=[1,2],[3,4]`, `range(...)`, `file:key=...`)."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides

    if not overrides:
        raise SweepError("a sweep needs at least one -S KEY=VALUES")
    try:
        path_overrides = to_path_overrides(overrides)
        sweeping = any(override.is_sweep_override()
                       for values in path_overrides.values() for override in to_hydra_overrides(values))
        points = get_hydra_sweeps(path_overrides) if sweeping else [path_overrides]
    except Exception as error:  # DVC's and Hydra's parse errors: the message names the bad override
        raise SweepError(f"cannot read the grid {list(overrides)}: {error}") from None
    default = PARAMS_PATH
    return [[value if path == default else f"{path}:{value}" for path, values in point.items() for value in values]
            for point in points]


def override_key(override: str) -> str:
    """`train.learning_rate` of `train.learning_rate=0.001` (and of `params.yaml:train...`)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(":", 1)[1] if ":" in key else key


def _command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=stage_env(), capture_output=True, text=True)


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


@flow(name="sweep-point")
def sweep_point(overrides: list[str], name: str, device: str | None = None, git_remote: str = GIT_REMOTE,
                timeout_s: float = 3600.0) -> dict:
    """One point of a sweep, in this worker's clone (the working directory the pull steps set):
    `dvc exp run -n NAME -S ...`, then `dvc exp push` to `git_remote` and the default DVC remote.

    device: the class to train on (`-S train.device=...`, unless the point sets it); `cuda` is
    checked before anything runs, and written as `auto` (pipeline.device.trained_as).
    """
    logger = get_run_logger()
    project = Path.cwd()
    started = time.monotonic()
    if device is not None:
        check_device(device)
        require_device(device)  # a gpu pool's worker without CUDA stops here, before any work
    if not (project / "dvc.yaml").is_file():
        raise SweepError(f"{project} holds no dvc.yaml: the deployment's pull steps did not clone the project")
    if _command(_dvc("remote", "default"), project).returncode != 0:
        raise SweepError("the repository has no default DVC remote, so this experiment's outputs could not leave "
                         "the worker: run `make remote URL=...`, commit .dvc/config and push it")

    flags = [flag for override in overrides for flag in ("-S", override)]
    if device is not None and "train.device" not in {override_key(o) for o in overrides}:
        flags += ["-S", f"train.device={trained_as(device)}"]

    def log_line(line: str) -> None:
        if line.strip():
            logger.info("%s", line)

    logger.info("dvc exp run -n %s %s", name, " ".join(flags))
    ran = time.monotonic()
    code, lines = stream(_dvc("exp", "run", "-n", name, *flags), project, log_line, timeout_s, "dvc exp run")
    if code != 0:
        raise SweepError(f"dvc exp run failed (exit {code}) for {' '.join(overrides)}:\n" + "\n".join(lines[-TAIL_LINES:]))
    pushed = time.monotonic()
    code, lines = stream(_dvc("exp", "push", git_remote, name), project, log_line, timeout_s, "dvc exp push")
    if code != 0:
        raise SweepError(f"dvc exp push failed (exit {code}):\n" + "\n".join(lines[-TAIL_LINES:]))

    refs = _command(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/"], project).stdout
    rev = next((line.split()[0] for line in refs.splitlines() if line.endswith(f"/{name}")), None)
    params = yaml.safe_load((project / PARAMS_PATH).read_text(encoding="utf-8")) or {}
    metrics = json.loads((project / METRICS_PATH).read_text(encoding="utf-8"))
    row = {"experiment": name, "status": "COMPLETED", "rev": rev[:7] if rev else None}
    for override in overrides:
        key = override_key(override)
        value = lookup(params, key)
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    row.update(flatten("test", metrics.get("test") or {}))
    row.update({"worker": os.environ.get("PREFECT__WORKER_NAME") or socket.gethostname(),
                "seconds": round(time.monotonic() - started, 1), "exp_run_s": round(pushed - ran, 1),
                "exp_push_s": round(time.monotonic() - pushed, 1)})
    create_table_artifact(key=POINT_ARTIFACT, table=[row], description=f"sweep point {name}: params and test metrics")
    logger.info("experiment %s (%s) pushed to %s: %s", name, row["rev"], git_remote,
                ", ".join(f"{k} {v}" for k, v in row.items() if k.startswith("test.")))
    return row


def _shorten(message: str, limit: int = 600) -> str:
    """A state message for a table cell: its start (what failed) and its end (the last words)."""
    return message if len(message) <= limit else f"{message[:limit // 3]} [...] {message[-2 * limit // 3:]}"


def _point_row(client, flow_run, name: str, overrides: list[str]) -> dict:
    """A finished point's row: its own artifact when it completed, else its state and message."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    state = flow_run.state
    if state is not None and state.type.value == "COMPLETED":
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[POINT_ARTIFACT]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        if artifacts:
            data = artifacts[0].data
            rows = json.loads(data) if isinstance(data, str) else data
            if rows:
                return dict(rows[0])
        # Fail closed: a point that says it completed without its results is not counted as one.
        return {"experiment": name, "status": "NO RESULTS", "message": "completed without a sweep-point artifact",
                **{override_key(o): o.split("=", 1)[1] for o in overrides}}
    return {"experiment": name, "status": state.type.value if state else "UNKNOWN",
            "message": _shorten((state.message or "").strip()) if state else None,
            **{override_key(o): o.split("=", 1)[1] for o in overrides}}


def _retry(client, flow_run, name: str, logger) -> None:
    """A point whose run crashed (its machine died: the server's crash-silent-flow-runs automation marks a run
    Crashed once its heartbeats stop) runs once more: the same flow run, parameters and experiment name, set
    back to AwaitingRetry as the UI's Retry button does, for the pool's next free worker to take in a fresh
    clone. A second crash is final. The sweep does it, not an automation, so that it never reads a Crashed
    point as finished while a retry is on its way."""
    from prefect.states import Scheduled

    reason = (flow_run.state.message or "").strip() or "no message"
    logger.warning("%s: its run crashed (%s); retrying it once, on the pool's next free worker", name, reason)
    client.set_flow_run_state(flow_run.id, Scheduled(name="AwaitingRetry", message=f"Crashed ({reason}); the sweep "
                                                     "retries it once, on the next free worker"), force=True)


def ranked(rows: list[dict]) -> list[dict]:
    """Completed points best first (highest test accuracy, then lowest loss), then the failed ones."""
    import pandas as pd

    if not rows:
        return []
    frame = pd.DataFrame(rows)
    frame["_done"] = frame["status"] == "COMPLETED"
    keys, ascending = ["_done"], [False]
    for column, lower_is_better in RANK_BY:
        if column in frame:
            keys.append(column)
            ascending.append(lower_is_better)
    frame = frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable").drop(columns="_done")
    records = frame.to_dict(orient="records")
    return [{key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in record.items()}
            for record in records]


@flow(name="sweep")
def sweep(grid: list[str], deployment: str = POINT_DEPLOYMENT, name: str | None = None,
          timeout_s: float = 3600.0) -> list[dict]:
    """Run every point of the `-S` grid as a run of `deployment`, spread over its pool's workers.

    name: the experiments are called NAME-1, NAME-2, ... (default sweep-<UTC time>).
    timeout_s: how long to wait for all the points; those still going then are cancelled.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    points = expand_grid(grid)
    prefix = name or f"sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    with get_client(sync_client=True) as client:
        client.read_deployment_by_name(deployment)  # an unknown deployment stops the sweep before any point
    submitted = []
    for index, point in enumerate(points, start=1):
        exp_name = f"{prefix}-{index}"
        run = run_deployment(name=deployment, parameters={"overrides": point, "name": exp_name}, timeout=0,
                             as_subflow=True)
        logger.info("point %d/%d %s: %s -> flow run %s", index, len(points), exp_name, " ".join(point), run.id)
        submitted.append((exp_name, point, run.id))

    deadline = time.monotonic() + timeout_s
    finished: dict = {}
    retried: set = set()
    with get_client(sync_client=True) as client:
        while len(finished) < len(submitted):
            for exp_name, point, run_id in submitted:
                if run_id in finished:
                    continue
                flow_run = client.read_flow_run(run_id)
                if flow_run.state is not None and flow_run.state.type.value == "CRASHED" and run_id not in retried:
                    _retry(client, flow_run, exp_name, logger)
                    retried.add(run_id)
                    continue
                if flow_run.state is not None and flow_run.state.type.value in FINAL:
                    finished[run_id] = _point_row(client, flow_run, exp_name, point)
                    finished[run_id]["attempts"] = 2 if run_id in retried else 1
                    logger.info("%s: %s", exp_name, finished[run_id]["status"])
            if len(finished) < len(submitted):
                if time.monotonic() > deadline:
                    break
                time.sleep(POLL_S)
        for exp_name, point, run_id in submitted:
            if run_id not in finished:
                from prefect.states import Cancelling

                client.set_flow_run_state(run_id, Cancelling(message=f"the sweep's timeout of {timeout_s:g} s passed"),
                                          force=True)
                finished[run_id] = {"experiment": exp_name, "status": "TIMED OUT",
                                    "message": f"not finished after {timeout_s:g} s; cancelled",
                                    **{override_key(o): o.split("=", 1)[1] for o in point}}

    rows = ranked([finished[run_id] for _, _, run_id in submitted])
    create_table_artifact(key=SWEEP_ARTIFACT, table=rows,
                          description=f"sweep {prefix}: {len(rows)} points, best first (test accuracy, then loss)")
    failed = [row for row in rows if row["status"] != "COMPLETED"]
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(rows)} points failed: "
                          + "; ".join(f"{row['experiment']} {row['status']}: {row.get('message')}" for row in failed), rows)
    logger.info("sweep %s: %d experiments pushed; best %s", prefix, len(rows), rows[0]["experiment"])
    return rows


def table_text(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_string(index=False) if rows else "(no points)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("-S", "--set-param", dest="grid", action="append", default=[], metavar="KEY=VALUES",
                        help="a param and its values, in `dvc exp run -S` grammar; repeat for a grid")
    parser.add_argument("--deployment", default=POINT_DEPLOYMENT, help="the deployment each point runs as "
                        "(default: %(default)s; sweep-point/sweep-point-gpu for the gpu pool)")
    parser.add_argument("--name", default=None, help="experiment name prefix (default: sweep-<UTC time>)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for all points")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The sweep's own flow waits as long as its points train: without heartbeats (Prefect's default is every
    # 180 s) the server's crash-silent-flow-runs automation would mark it Crashed while it waits.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    try:
        expand_grid(args.grid)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not os.environ.get("PREFECT_API_URL"):
        print("error: a sweep runs on a Prefect server's workers: set PREFECT_API_URL (make sweep does)", file=sys.stderr)
        return 2
    try:
        rows = sweep(grid=args.grid, deployment=args.deployment, name=args.name, timeout_s=args.timeout)
    except SweepFailed as error:
        print(table_text(error.rows))
        print(f"error: {error}", file=sys.stderr)
        return 1
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(table_text(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
