"""Pipeline overhead: a cold `dvc repro` stage by stage, a no-op `dvc repro`, and torch-free stages.

    python benchmarks/pipeline_overhead.py            # make bench runs this after train_throughput
    python benchmarks/pipeline_overhead.py --quick    # one repeat of each timing

Works in a temporary git copy of the project's working tree (tracked files plus untracked ones
git does not ignore: no data, models, DVC cache or .venv), so the run is cold and the checkout
is untouched. It reports

  - each stage's wall time in the cold run, from DVC's "Running stage" line to its lock-file
    update, and the stage process's start-up cost: `python -m <module> --help`, which imports
    everything the stage imports and then exits (median of several);
  - how much of the cold run is training and evaluating (stage time minus start-up) and how
    much is start-up and DVC itself;
  - a no-op `dvc repro` (median of several);
  - a no-op `make run` (`python -m pipeline run`, the Prefect flow on the project's own
    background server, started once before the timings) paired with a no-op `dvc repro`,
    run alternately so both see the same load: medians and the median of the differences;
  - whether the stages that need no torch (validate, download, prepare, save) import it: each is run
    once more, as DVC runs it, with a check of sys.modules at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RESULTS_PATH = PROJECT_ROOT / "benchmarks" / "results" / "pipeline_overhead.json"

TORCH_FREE_STAGES = ("validate", "download", "prepare", "save")
WORK_STAGES = ("train", "evaluate")  # the stages whose work the target wants to dominate
TARGET_NOOP_SECONDS = 1.0
TARGET_WORK_SHARE = 0.5
TARGET_FLOW_EXTRA_SECONDS = 2.0

STAGE_START = re.compile(r"Running stage '([^']+)'")

# Runs a stage module as `python -m` would, then says on stderr whether torch got imported.
TORCH_PROBE = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr))\n"
    "module = sys.argv[1]\n"
    "sys.argv = [module] + sys.argv[2:]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def copy_working_tree(destination: Path) -> Path:
    """A fresh, committed git repo holding the project's tracked and non-ignored files."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from tests.conftest import commit_all, copy_project

    commit_all(copy_project(destination), "benchmark copy")
    return destination


def environment(project: Path) -> dict:
    env = dict(os.environ)
    # Stage commands call `python`: the project's interpreter, running the copy's own source.
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(project / "src"), str(project)])
    env["DVC_NO_ANALYTICS"] = "1"
    # Unbuffered, so every line is timestamped when it is written, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def set_params(project: Path, assignments: list[str]) -> None:
    """Apply `section.key=value` assignments (YAML values) to the copy's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for assignment in assignments:
        dotted, separator, value = assignment.partition("=")
        if not separator:
            raise SystemExit(f"error: --set {assignment!r}: expected key=value, e.g. train.epochs=2")
        *parents, leaf = dotted.split(".")
        section = params
        for key in parents:
            if not isinstance(section.get(key), dict):
                raise SystemExit(f"error: --set {assignment!r}: params.yaml has no section {key!r}")
            section = section[key]
        section[leaf] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-q", "-am", "benchmark params"], cwd=project, capture_output=True, check=True)


def timed_repro(project: Path, env: dict) -> dict:
    """One `dvc repro`, each output line stamped as it arrives.

    A stage's span runs from its "Running stage" line to the next one (or the end of the run),
    so it includes DVC hashing the stage's outputs and writing dvc.lock; what falls outside
    every span is DVC starting up, checking the graph, and finishing.
    """
    started = time.perf_counter()
    process = subprocess.Popen([str(VENV_BIN / "dvc"), "repro"], cwd=project, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in process.stdout]
    returncode = process.wait()
    total = time.perf_counter() - started
    if returncode != 0:
        output = "\n".join(line for _, line in lines)
        raise SystemExit(f"error: dvc repro failed in {project} (exit {returncode}):\n{output}")
    stages, current = [], None
    for stamp, line in lines:
        # search, not match: a stage's last line may lack its newline and run into DVC's.
        match = STAGE_START.search(line)
        if match:
            if current:
                current["end"] = stamp
            current = {"stage": match.group(1), "start": stamp, "end": None}
            stages.append(current)
    for stage in stages:
        stage["seconds"] = (stage["end"] if stage["end"] is not None else total) - stage["start"]
    return {"seconds": total, "stages": stages, "output": [line for _, line in lines]}


def median_seconds(command: list[str], cwd: Path, env: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if completed.returncode != 0:
            raise SystemExit(f"error: {shlex.join(command)} failed (exit {completed.returncode}):\n{completed.stderr}")
    return statistics.median(times)


def stage_commands(project: Path) -> dict[str, list[str]]:
    """Each stage's command as DVC ran it (dvc.lock holds them with ${vars} resolved)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {name: shlex.split(stage["cmd"]) for name, stage in lock.get("stages", {}).items()}


def module_of(command: list[str]) -> str | None:
    """`python -m classifier.training.train ...` -> classifier.training.train; None for any other shape."""
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        return command[2]
    return None


def imports_torch(command: list[str], project: Path, env: dict) -> bool:
    module = module_of(command)
    if module is None:
        raise SystemExit(f"error: cannot probe {shlex.join(command)}: expected `python -m <module> ...`")
    completed = subprocess.run([str(VENV_BIN / "python"), "-c", TORCH_PROBE, module, *command[3:]],
                               cwd=project, env=env, capture_output=True, text=True)
    found = re.search(r"TORCH_IMPORTED=(True|False)", completed.stderr)
    if completed.returncode != 0 or not found:
        raise SystemExit(f"error: {shlex.join(command)} failed under the torch probe "
                         f"(exit {completed.returncode}):\n{completed.stderr}")
    return found.group(1) == "True"


def measure(project: Path, repeats: int, noop_repeats: int) -> dict:
    env = environment(project)
    print("  cold dvc repro ...", file=sys.stderr, flush=True)
    cold = timed_repro(project, env)
    commands = stage_commands(project)

    print("  stage start-up (--help) ...", file=sys.stderr, flush=True)
    python = str(VENV_BIN / "python")
    startup = {"dvc --version": median_seconds([str(VENV_BIN / "dvc"), "--version"], project, env, repeats),
               "python -c pass": median_seconds([python, "-c", "pass"], project, env, repeats),
               "python -c 'import torch'": median_seconds([python, "-c", "import torch"], project, env, repeats)}
    for stage in cold["stages"]:
        module = module_of(commands.get(stage["stage"], []))
        stage["module"] = module
        stage["startup_seconds"] = (median_seconds([python, "-m", module, "--help"], project, env, repeats)
                                    if module else 0.0)
        stage["work_seconds"] = max(0.0, stage["seconds"] - stage["startup_seconds"])

    print("  no-op dvc repro ...", file=sys.stderr, flush=True)
    noop_times = []
    for _ in range(noop_repeats):
        run = timed_repro(project, env)
        if run["stages"]:
            raise SystemExit("error: the second dvc repro ran stages "
                             f"{', '.join(s['stage'] for s in run['stages'])}: the pipeline is not reproducible")
        noop_times.append(run["seconds"])

    print("  no-op make run against no-op dvc repro ...", file=sys.stderr, flush=True)
    flow = noop_flow_pairs(project, env, noop_repeats)

    print("  torch-free stages ...", file=sys.stderr, flush=True)
    torch_imports = {name: imports_torch(commands[name], project, env)
                     for name in TORCH_FREE_STAGES if name in commands}

    stage_total = sum(stage["seconds"] for stage in cold["stages"])
    work = sum(stage["work_seconds"] for stage in cold["stages"] if stage["stage"] in WORK_STAGES)
    work_stages = sum(stage["seconds"] for stage in cold["stages"] if stage["stage"] in WORK_STAGES)
    return {
        "cold_seconds": cold["seconds"], "stages": cold["stages"], "startup": startup,
        "dvc_outside_stages_seconds": cold["seconds"] - stage_total,
        "startup_seconds": sum(stage["startup_seconds"] for stage in cold["stages"]),
        "work_seconds": work, "work_share": work / cold["seconds"],
        "work_stages_share": work_stages / cold["seconds"],
        "noop_seconds": statistics.median(noop_times), "noop_runs": noop_times,
        "torch_imported": torch_imports, "cold_output": cold["output"], "flow": flow,
    }


def noop_flow_pairs(project: Path, env: dict, repeats: int) -> dict:
    """No-op `python -m pipeline run` (what `make run` runs) and no-op `dvc repro`, alternately."""
    env = {**env, "PREFECT_HOME": str(project / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    python = str(VENV_BIN / "python")
    flow_command, repro_command = [python, "-m", "pipeline", "run"], [str(VENV_BIN / "dvc"), "repro"]
    median_seconds(flow_command, project, env, 1)  # starts the project's server: once, untimed
    try:
        pairs = [(median_seconds(flow_command, project, env, 1), median_seconds(repro_command, project, env, 1))
                 for _ in range(repeats)]
    finally:
        subprocess.run([python, "-m", "pipeline", "server-stop"], cwd=project, env=env, capture_output=True)
    return {"flow_seconds": statistics.median(flow for flow, _ in pairs),
            "repro_seconds": statistics.median(repro for _, repro in pairs),
            "extra_seconds": statistics.median(flow - repro for flow, repro in pairs), "pairs": pairs}


def report(result: dict) -> str:
    lines = [
        "| stage | wall s | start-up s (`--help`) | work s |",
        "|---|--:|--:|--:|",
    ]
    for stage in result["stages"]:
        lines.append(f"| {stage['stage']} | {stage['seconds']:.2f} | {stage['startup_seconds']:.2f} "
                     f"| {stage['work_seconds']:.2f} |")
    lines.append(f"| DVC itself (outside stages) | {result['dvc_outside_stages_seconds']:.2f} | | |")
    lines.append(f"| **cold `dvc repro`** | **{result['cold_seconds']:.2f}** | {result['startup_seconds']:.2f} "
                 f"| {sum(stage['work_seconds'] for stage in result['stages']):.2f} |")
    lines.append("")
    lines.append("start-up references: " + ", ".join(f"`{command}` {seconds:.2f} s"
                                                      for command, seconds in result["startup"].items()))
    lines.append(f"no-op `dvc repro`: {result['noop_seconds']:.2f} s (median of {len(result['noop_runs'])}: "
                 + ", ".join(f"{seconds:.2f}" for seconds in result["noop_runs"]) + ")")
    flow = result["flow"]
    lines.append(f"no-op `make run` {flow['flow_seconds']:.2f} s against no-op `dvc repro` {flow['repro_seconds']:.2f} s, "
                 f"paired (median of {len(flow['pairs'])}): the flow adds {flow['extra_seconds']:.2f} s")
    lines.append(f"training + evaluating: {result['work_share']:.0%} of the cold run excluding their start-up "
                 f"({result['work_stages_share']:.0%} counting the whole train and evaluate stages)")
    lines.append("torch imported by: " + ", ".join(f"{name} {'YES' if imported else 'no'}"
                                                    for name, imported in result["torch_imported"].items()))
    return "\n".join(lines)


def judge(result: dict) -> list[tuple[str, bool]]:
    verdicts = [
        (f"no-op dvc repro {result['noop_seconds']:.2f} s <= {TARGET_NOOP_SECONDS} s",
         result["noop_seconds"] <= TARGET_NOOP_SECONDS),
        (f"no-op make run adds {result['flow']['extra_seconds']:.2f} s <= {TARGET_FLOW_EXTRA_SECONDS} s to a no-op dvc repro",
         result["flow"]["extra_seconds"] <= TARGET_FLOW_EXTRA_SECONDS),
        (f"training + evaluating {result['work_share']:.0%} >= {TARGET_WORK_SHARE:.0%} of the cold run",
         result["work_share"] >= TARGET_WORK_SHARE),
    ]
    verdicts += [(f"{name} does not import torch", not imported) for name, imported in result["torch_imported"].items()]
    return verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true", help="one repeat of each start-up timing, two no-op runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per start-up timing (default: %(default)s)")
    parser.add_argument("--noop-repeats", type=int, default=5, help="no-op dvc repro runs (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change params.yaml in the copy, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and print its path")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.noop_repeats = 1, 2
    if args.repeats < 1 or args.noop_repeats < 1:
        parser.error("--repeats and --noop-repeats must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="pipeline-overhead-"))
    try:
        project = copy_working_tree(workdir / "project")
        if args.set:
            set_params(project, args.set)
        result = measure(project, args.repeats, args.noop_repeats)
    finally:
        if args.keep:
            print(f"kept the copy at {workdir / 'project'}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print("cold `dvc repro` of the default pipeline" + (f" with {', '.join(args.set)}" if args.set else "")
          + ", in a fresh git copy (no cache)\n")
    print(report(result))
    print("\ntargets:")
    verdicts = judge(result)
    for text, passed in verdicts:
        print(f"  {'ok  ' if passed else 'MISS'}  {text}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**result, "params_set": args.set}, indent=2) + "\n")
    return 1 if args.strict and not all(passed for _, passed in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
