"""What the Prefect flow adds over plain `dvc repro` on a fully cached pipeline.

    python benchmarks/flow_overhead.py [--runs 5] [--project DIR]

Three ways to run the same up-to-date tree, each timed as a fresh process (what a user
waits for), median of --runs: plain `dvc repro`; `python -m pipeline run` with Prefect's
temporary server; and the same against a running `prefect server` on 127.0.0.1. Without
--project, the tracked project is copied to a temporary folder and reproduced once first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def cached_project(workdir: Path) -> Path:
    project = workdir / "project"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for relative in filter(None, tracked):
        if (ROOT / relative).is_file():
            (project / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, project / relative)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    print("reproducing the copied project once (cold)...", flush=True)
    timed([sys.executable, "-m", "dvc", "repro", "-q"], project, environment())
    return project


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=environment(PREFECT_HOME=str(home)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return server, api
        except httpx.HTTPError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("the Prefect server did not come up within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--project", type=Path, help="an already reproduced project (default: a fresh copy)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flow-overhead-") as scratch:
        scratch = Path(scratch)
        project = args.project.resolve() if args.project else cached_project(scratch)
        flow = [sys.executable, "-m", "pipeline", "run", "--project", str(project)]
        home = scratch / "prefect-home"
        modes = {"dvc repro": ([sys.executable, "-m", "dvc", "repro"], environment())}
        modes["flow, temporary server"] = (flow, environment(PREFECT_HOME=str(home)))
        server, api = start_server(scratch / "server-home")
        try:
            modes["flow, running server"] = (flow, environment(PREFECT_HOME=str(home), PREFECT_API_URL=api))
            for args_, env in modes.values():  # warm-up: first runs create databases and caches
                timed(args_, project, env)
            samples = {name: [] for name in modes}
            for _ in range(args.runs):  # interleaved, so machine noise hits every mode alike
                for name, (args_, env) in modes.items():
                    samples[name].append(timed(args_, project, env))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)

    baseline = statistics.median(samples["dvc repro"])
    print(f"\nfully cached pipeline, median of {args.runs} runs (seconds)\n")
    print(f"| {'how':<24} | median | min   | over dvc repro |")
    print(f"|{'-' * 26}|--------|-------|----------------|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"| {name:<24} | {median:6.2f} | {min(values):5.2f} | {median - baseline:+14.2f} |")


if __name__ == "__main__":
    main()
