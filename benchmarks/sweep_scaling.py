"""A 4-point sweep on two workers against the same sweep on one worker, on loopback (`make bench-sweep`).

    python benchmarks/sweep_scaling.py [--epochs N] [--keep]

Builds what tests/pipeline/test_scale_out.py builds (a bare git origin, a directory DVC remote, a
Prefect server, a champion pushed from a "laptop", workers in empty folders that know only the
origin's URL), then times `make sweep` over the grid below three ways, each with fresh experiment
names and fresh clones (no DVC cache or run-cache carries over between points):

  two workers   two `make worker LIMIT=1` in two folders: the points run two at a time
  one worker    one `make worker LIMIT=1`: the points run one after another
  no Prefect    `dvc exp run -S ...` four times in one clone that already holds the outputs: the work

and prints the wall times, the ratio one/two, and where each point's time goes, from the server's
states and the points' own timings: waiting for a free worker, starting the run (the worker's
process, the pull steps' clone and `dvc pull`, loading the flow), `dvc exp run`, `dvc exp push`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GRID = ["train.learning_rate=0.0003,0.003", "model.hidden_sizes=[256,256],[512,512]"]


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def phases(api: str, names: list[str]) -> dict[str, float]:
    """Per point (means): queued (created -> Pending), starting (Pending -> Running), then in the flow."""
    from tests.pipeline.prefect_server import api_call, state_history

    runs = api_call(api, "POST", "/flow_runs/filter", json={"limit": 200, "flows": {"name": {"any_": ["sweep-point"]}}})
    queued, starting, in_flow = [], [], []
    for run in runs:
        if run["parameters"].get("name") not in names:
            continue
        history = state_history(api, run["id"])
        pending = next(state["timestamp"] for state in history if state["type"] == "PENDING")
        running = next(state["timestamp"] for state in history if state["type"] == "RUNNING")
        queued.append(seconds(run["created"], pending))
        starting.append(seconds(pending, running))
        in_flow.append(seconds(running, run["end_time"]))
    return {"queued": statistics.mean(queued), "starting": statistics.mean(starting), "in_flow": statistics.mean(in_flow)}


def timed_sweep(cluster, name: str) -> tuple[float, list[dict], dict]:
    from tests.pipeline.test_scale_out import artifact_rows, make, sweep_run_id

    grid = " ".join(f"-S '{value}'" for value in GRID)
    started = time.monotonic()
    done = make(cluster.laptop, cluster.env, "sweep", f"GRID={grid}", f"SWEEP_FLAGS=--name {name} --timeout 1800",
                timeout=2400)
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"sweep {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = artifact_rows(cluster.api, "sweep", sweep_run_id(done.stdout + done.stderr))
    return wall, rows, phases(cluster.api, [row["experiment"] for row in rows])


def plain_dvc(cluster) -> float:
    """The work alone: four `dvc exp run` in one clone that already holds the champion's outputs."""
    from tests.conftest import dvc
    from pipeline.sweep import expand_grid

    clone = cluster.root / "plain"
    subprocess.run(["git", "clone", "-q", cluster.url, str(clone)], check=True)
    dvc(clone, "pull", "-q", "--allow-missing")
    started = time.monotonic()
    for index, point in enumerate(expand_grid(GRID), start=1):
        flags = [flag for value in [*point, "train.device=cpu"] for flag in ("-S", value)]
        dvc(clone, "exp", "run", "-q", "-n", f"plain-{index}", *flags)
    return time.monotonic() - started


def describe(label: str, wall: float, rows: list[dict], phase: dict) -> str:
    run = statistics.mean(row["exp_run_s"] for row in rows)
    push = statistics.mean(row["exp_push_s"] for row in rows)
    rest = phase["in_flow"] - run - push
    workers = len({row["worker"] for row in rows})
    return (f"{label:<12} {wall:7.1f} s  on {workers} worker(s); per point: queued {phase['queued']:5.1f} s, "
            f"starting {phase['starting']:5.1f} s (process, clone, dvc pull, flow import), "
            f"dvc exp run {run:5.1f} s, dvc exp push {push:4.1f} s, rest of the flow {rest:4.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs of every point (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="accepted for `make bench-sweep BENCH_FLAGS=--quick`; "
                        "the benchmark is already as small as it can be")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.pipeline.test_scale_out import loopback_cluster

    root = Path(tempfile.mkdtemp(prefix="sweep-scaling-"))
    workers = (("machine-a", "cpu"), ("machine-b", "cpu"))
    print(f"grid: {' '.join('-S ' + value for value in GRID)} (4 points), train.epochs {args.epochs}", flush=True)
    with loopback_cluster(root, workers, epochs=args.epochs) as cluster:
        two = timed_sweep(cluster, "two")
        from tests.pipeline.prefect_server import stop

        stop(cluster.workers[("machine-b", "cpu")])  # one worker from here on
        one = timed_sweep(cluster, "one")
        plain = plain_dvc(cluster)
    print(describe("two workers", *two))
    print(describe("one worker", *one))
    print(f"{'no Prefect':<12} {plain:7.1f} s  four `dvc exp run` in one clone, one after another")
    print(f"wall-time ratio, one worker / two workers: {one[0] / two[0]:.2f} "
          f"(two workers take {two[0] / one[0]:.0%} of one worker's time); "
          f"one worker / no Prefect: {one[0] / plain:.2f}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
