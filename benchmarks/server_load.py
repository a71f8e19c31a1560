"""The team server under load: SQLite against PostgreSQL, 4 and 8 workers, in one run (issue 39).

    python benchmarks/server_load.py [--points 16] [--workers 4,8] [--databases sqlite,postgresql] [--kill] [--quick]

For each database, builds what tests/pipeline/test_scale_out.py builds (a bare git origin, an S3 DVC remote
on loopback, a champion pushed from a "laptop", `make deploy REPO=origin`), with `make server` on that
database (PostgreSQL: a private cluster on loopback, tests/postgres_server.py) and the server's retryable
errors logged (PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true). Then, for each worker count, as many `make worker
POOL=cpu LIMIT=1` machines (empty folders that know only the origin's URL) and one `make sweep` over
--points one-epoch points. Per sweep: points completed, the server's HTTP 503s and 500s and its "database
is locked" lines (from its log, during that sweep), per-point latency (the point's run created -> ended,
mean and max), the sweep's wall time and the Prefect server's peak RSS (its processes, sampled each second).

--kill: then, on the last database and worker count, one more sweep (two epochs) during which a machine dies: the
worker's whole process group is SIGKILLed while its point trains (the pause hook stops the first trainer at
its first checkpoint, so the kill lands mid-point); counts the points completed (the sweep retries a crashed
point once) and when the lost point completed after the kill.
--quick: 4 points, 2 workers, both databases, no kill: a smoke run of the whole benchmark.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATES = [f"{0.0002 * step:.4f}" for step in range(1, 65)]   # up to 64 distinct points
CRASH_AFTER_S = 60
PAUSE_HOOK = PROJECT_ROOT / "tests/pipeline/pause_after_checkpoint"


def server_pids(port: int) -> list[int]:
    """The Prefect server on `port` and the processes below it."""
    from tests.pipeline.prefect_server import command_line, descendants

    roots = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
             and "server start" in (line := command_line(int(entry.name))) and f"--port {port}" in line
             and "prefect" in line]
    return sorted({pid for root in roots for pid in [root, *descendants(root)]})


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class PeakRss:
    """The server's peak RSS while a sweep runs, sampled every second in a thread."""

    def __init__(self, port: int):
        self.port, self.peak, self._stop = port, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(server_pids(self.port)))
            self._stop.wait(1)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def point_latencies(api: str, prefix: str) -> list[float]:
    """Seconds from each point's run being created to its end, for the points named PREFIX-N."""
    from tests.pipeline.prefect_server import api_call

    runs = api_call(api, "POST", "/flow_runs/filter", json={"limit": 200, "flows": {"name": {"any_": ["sweep-point"]}}})
    return [(datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(run["created"])).total_seconds()
            for run in runs if str(run["parameters"].get("name", "")).startswith(f"{prefix}-") and run["end_time"]]


def grid(points: int, epochs: int) -> str:
    return "GRID=-S 'train.learning_rate=" + ",".join(LEARNING_RATES[:points]) + f"' -S train.epochs={epochs}"


def sweep(cluster, name: str, points: int, epochs: int = 1):
    from tests.pipeline.prefect_server import MAKE

    command = [*MAKE, "sweep", grid(points, epochs), f"SWEEP_FLAGS=--name {name} --timeout 3600"]
    log = cluster.root / f"{name}.log"
    return subprocess.Popen(command, cwd=cluster.laptop, env=cluster.env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True), log


def measure(cluster, port: int, database: str, workers: int, points: int, name: str) -> dict:
    from tests.pipeline.prefect_server import server_errors
    from tests.pipeline.test_scale_out import artifact_rows, sweep_run_id

    server_log = cluster.root / "server.log"
    offset = len(server_log.read_text(errors="replace"))
    started = time.monotonic()
    with PeakRss(port) as rss:
        process, log = sweep(cluster, name, points)
        process.wait()
    wall = time.monotonic() - started
    output = log.read_text()
    try:
        rows = artifact_rows(cluster.api, "sweep", sweep_run_id(output))
    except (TypeError, AssertionError):
        rows = []
    latencies = point_latencies(cluster.api, name)
    errors = server_errors(server_log.read_text(errors="replace")[offset:])
    return {"database": database, "workers": workers, "points": points, "completed": sum(r["status"] == "COMPLETED" for r in rows),
            "wall_s": wall, "latency_mean_s": statistics.mean(latencies) if latencies else float("nan"),
            "latency_max_s": max(latencies, default=float("nan")), "rss_mb": rss.peak, **errors,
            "exit": process.returncode}


def kill_a_machine(cluster, port: int, database: str, workers: int, points: int) -> dict:
    """A sweep during which one machine's worker process group is SIGKILLed while its point trains."""
    from tests.pipeline.prefect_server import descendants, server_errors, wait_for
    from tests.pipeline.test_scale_out import artifact_rows, sweep_run_id

    marker = cluster.root / "paused"
    marker.unlink()
    server_log = cluster.root / "server.log"
    offset = len(server_log.read_text(errors="replace"))
    started = time.monotonic()
    process, log = sweep(cluster, "killed", points, epochs=2)  # a resume checkpoint after epoch 1 (none after the last)
    wait_for(marker.exists, "a trainer to stop at its first checkpoint", 900)
    trainer = int(marker.read_text())
    machine = next(key for key, worker in cluster.workers.items() if trainer in descendants(worker.pid))
    dying = cluster.workers.pop(machine)
    doomed = [dying.pid, *descendants(dying.pid)]
    os.killpg(dying.pid, signal.SIGKILL)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    dying.wait()
    killed = time.monotonic()
    process.wait()
    output = log.read_text()
    try:
        rows = artifact_rows(cluster.api, "sweep", sweep_run_id(output))
    except (TypeError, AssertionError):
        rows = []
    retried = [row for row in rows if row.get("attempts") == 2]
    return {"database": database, "workers": workers, "points": points,
            "completed": sum(row["status"] == "COMPLETED" for row in rows), "retried": len(retried),
            "wall_s": time.monotonic() - started, "killed_at_s": killed - started, "exit": process.returncode,
            **server_errors(server_log.read_text(errors="replace")[offset:])}


def run_database(database: str, worker_counts: list[int], points: int, kill: bool, root: Path, results: list) -> None:
    from tests.pipeline.prefect_server import stop, wait_for
    from tests.pipeline.test_scale_out import loopback_cluster, make, start_worker, worker_name

    marker = root / "paused"
    marker.write_text("unarmed")
    worker_env = {"PYTHONPATH": str(PAUSE_HOOK), "PAUSE_AFTER_CHECKPOINT_MARKER": str(marker)}
    server = {"make_project": True, "server_extra_env": {"PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true"}}
    with ExitStack() as stack:
        if database == "postgresql":
            from tests.postgres_server import install_postgres, postgres_bin, postgres_server

            postgres = stack.enter_context(postgres_server(postgres_bin() or install_postgres(), durable=True))
            server = {"database_url": postgres.url_without_password(),
                      "server_extra_env": {**server["server_extra_env"], "PGPASSWORD": postgres.password}}
        first = worker_counts[0]
        machines = tuple((f"machine-{index}", "cpu") for index in range(1, first + 1))
        cluster = stack.enter_context(loopback_cluster(root, machines, server=server,
                                                       worker_env=worker_env))
        done = make(cluster.laptop, cluster.env, "deploy", "REPO=origin", f"CRASH_AFTER={CRASH_AFTER_S}")
        if done.returncode != 0:
            sys.exit(f"make deploy failed:\n{done.stdout}\n{done.stderr}")
        port = int(cluster.api.rsplit(":", 1)[1].split("/")[0])
        running = first
        for count in worker_counts:
            while running < count:
                running += 1
                machine = (f"machine-{running}", "cpu")
                process, log = start_worker(root / machine[0], cluster.url, {**cluster.env, **worker_env}, "cpu")
                stack.callback(stop, process)
                cluster.workers[machine], cluster.logs[machine] = process, log
                wait_for(lambda log=log: worker_name(log), f"the worker of {log}", 300)
            result = measure(cluster, port, database, count, points, f"{database}-{count}w")
            print(line(result), flush=True)
            results.append(result)
        if kill:
            result = kill_a_machine(cluster, port, database, running, points)
            print(f"{database}, {running} workers, a machine killed mid-point: {result['completed']}/{points} points "
                  f"completed ({result['retried']} retried on another worker), sweep exit {result['exit']}, "
                  f"{result['wall_s']:.0f} s (kill at {result['killed_at_s']:.0f} s); 503s {result['503']}", flush=True)
            results.append(result)


def line(result: dict) -> str:
    return (f"{result['database']:<10} {result['workers']} workers  {result['completed']}/{result['points']} points  "
            f"503s {result['503']:>3}  500s {result['500']:>2}  'database is locked' {result['database is locked']:>4}  "
            f"latency mean {result['latency_mean_s']:5.1f} s max {result['latency_max_s']:5.1f} s  "
            f"sweep {result['wall_s']:5.0f} s  server RSS peak {result['rss_mb']:4.0f} MB  exit {result['exit']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=16, help="points per sweep (default: %(default)s)")
    parser.add_argument("--workers", default="4,8", help="worker counts, ascending (default: %(default)s)")
    parser.add_argument("--databases", default="sqlite,postgresql", help="default: %(default)s")
    parser.add_argument("--kill", action="store_true", help="then a sweep during which a machine dies mid-point")
    parser.add_argument("--quick", action="store_true", help="4 points on 2 workers, both databases: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()
    if args.quick:
        args.points, args.workers, args.kill = 4, "2", False
    worker_counts = sorted(int(count) for count in args.workers.split(","))
    if not 1 <= args.points <= len(LEARNING_RATES):
        sys.exit(f"--points {args.points}: must be 1 to {len(LEARNING_RATES)}")
    sys.path.insert(0, str(PROJECT_ROOT))
    print(f"{args.points} one-epoch points per sweep, workers {worker_counts}, load {os.getloadavg()[0]:.1f}", flush=True)
    results: list[dict] = []
    databases = args.databases.split(",")
    for database in databases:
        root = Path(tempfile.mkdtemp(prefix=f"server-load-{database}-"))
        try:
            run_database(database, worker_counts, args.points, args.kill and database == databases[-1], root, results)
        finally:
            if not args.keep:
                subprocess.run(["rm", "-rf", str(root)], check=False)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("| server database | workers | points completed | HTTP 503 | HTTP 500 | \"database is locked\" | "
          "latency per point, mean / max | sweep wall time | server RSS peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        if "latency_mean_s" in result:
            print(f"| {result['database']} | {result['workers']} | {result['completed']}/{result['points']} | "
                  f"{result['503']} | {result['500']} | {result['database is locked']} | "
                  f"{result['latency_mean_s']:.0f} s / {result['latency_max_s']:.0f} s | {result['wall_s']:.0f} s | "
                  f"{result['rss_mb']:.0f} MB |")
    for result in results:
        if "retried" in result:
            print(f"\na machine killed mid-point ({result['database']}, {result['workers']} workers, {result['points']} "
                  f"two-epoch points): {result['points'] - result['completed']} points lost, {result['retried']} retried "
                  f"on another worker, sweep exit {result['exit']}, {result['wall_s']:.0f} s; 503s {result['503']}, "
                  f"500s {result['500']}")
    return 0 if all(result["completed"] == result["points"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
