"""The DVC side of the flows: the stage order from dvc.yaml, what `dvc status` says changed,
and one stage run as `dvc repro --single-item <stage>` in its own process group.

No Prefect and no torch here: the flows hand in a `log_line` callable, so this module can be
driven (and tested) on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

RAN, SKIPPED = "ran", "skipped"
# How many trailing output lines a failed stage's error message carries.
TAIL_LINES = 20
# After SIGTERM, how long a timed-out stage's process group gets before SIGKILL.
KILL_GRACE_S = 5.0


class PipelineError(Exception):
    """A problem with the pipeline's definition or a stage run; the message is meant for the user."""


@dataclass(frozen=True)
class StageResult:
    name: str
    outcome: str          # RAN or SKIPPED
    reason: str           # why, in words: "unchanged (dvc status)", "re-executed", ...
    seconds: float = 0.0


def stage_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage process: this interpreter's bin first, since dvc.yaml's cmds call `python`."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra or {})
    return env


def _paths(entries) -> list[str]:
    """Paths of a stage's deps/outs/metrics/plots list, whose items are `path` or `{path: options}`."""
    paths = []
    for entry in entries or []:
        paths.extend(entry.keys() if isinstance(entry, dict) else [entry])
    return [str(path).rstrip("/") for path in paths]


def _overlaps(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def read_stage_graph(project: Path) -> dict[str, set[str]]:
    """Each stage of dvc.yaml mapped to the stages it reads from, in dvc.yaml's order."""
    dvc_yaml = Path(project) / "dvc.yaml"
    try:
        document = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{dvc_yaml}: no dvc.yaml here; run from the project's root or pass its folder") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{dvc_yaml}: not valid YAML: {error}") from None
    stages = (document or {}).get("stages") if isinstance(document, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise PipelineError(f"{dvc_yaml}: has no `stages` mapping")
    outs = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or "cmd" not in stage:
            raise PipelineError(f"{dvc_yaml}: stage {name!r} has no `cmd` (foreach/matrix stages are not supported)")
        outs[name] = _paths(stage.get("outs")) + _paths(stage.get("metrics")) + _paths(stage.get("plots"))
    return {
        name: {
            producer
            for dep in _paths(stage.get("deps"))
            for producer, produced in outs.items()
            if producer != name and any(_overlaps(dep, out) for out in produced)
        }
        for name, stage in stages.items()
    }


def stage_order(graph: Mapping[str, set[str]]) -> list[str]:
    """A topological order of the graph; among stages that are ready, dvc.yaml's order wins."""
    order, done = [], set()
    while len(order) < len(graph):
        ready = [name for name in graph if name not in done and graph[name] <= done]
        if not ready:
            cycle = sorted(set(graph) - done)
            raise PipelineError(f"dvc.yaml: the stages {cycle} depend on each other in a cycle")
        order.append(ready[0])
        done.add(ready[0])
    return order


def stages_until(order: list[str], graph: Mapping[str, set[str]], target: str | None) -> list[str]:
    """The stages `dvc repro <target>` would consider: the target and everything upstream of it."""
    if target is None:
        return order
    if target not in graph:
        raise PipelineError(f"unknown stage {target!r}; dvc.yaml has: {', '.join(order)}")
    needed, pending = set(), [target]
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending.extend(graph[name])
    return [name for name in order if name in needed]


def changed_stages(project: Path, timeout_s: float = 300.0) -> set[str]:
    """Stages `dvc status` reports as changed: one DVC start-up for the whole pipeline."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"], cwd=project, env=stage_env(),
            capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`dvc status` in {project} took more than {timeout_s:.0f} s") from None
    if result.returncode != 0:
        raise PipelineError(f"`dvc status` failed in {project} (exit {result.returncode}):\n{result.stderr.strip()}")
    # DVC may print warnings before the JSON; the JSON object is the last line.
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        status = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        raise PipelineError(f"`dvc status --json` printed something that is not JSON:\n{result.stdout}") from None
    # Keys are stage names, or `dvc.yaml:stage` in some layouts.
    return {key.rsplit(":", 1)[-1] for key in status}


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the stage's whole process group (dvc and the python it started), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def outcome_of(stage: str, lines: list[str]) -> tuple[str, str]:
    """Read DVC's own words: did it run the stage's command, or skip it?"""
    for line in lines:
        if f"Running stage '{stage}'" in line:
            return RAN, "re-executed"
        if f"Stage '{stage}' is cached" in line:
            return SKIPPED, "restored from the run-cache"
        if f"Stage '{stage}' didn't change" in line:
            return SKIPPED, "unchanged"
    return SKIPPED, "dvc reported nothing to do"


def run_stage(project: Path, stage: str, log_line: Callable[[str], None], timeout_s: float,
              extra_env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """`dvc repro --single-item <stage>`: stream its output to `log_line`; return (outcome, reason).

    The process gets its own session, so a timeout kills DVC and the stage command it started
    together instead of leaving a training process behind.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
        cwd=project, env=stage_env(extra_env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,
    )
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def pump() -> None:
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            tail.append(line)
            log_line(line)

    reader = threading.Thread(target=pump, name=f"dvc-{stage}-output", daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        reader.join(timeout=KILL_GRACE_S)
        raise PipelineError(
            f"stage {stage!r} ran past its timeout of {timeout_s:g} s and was killed; last lines:\n"
            + "\n".join(tail)
        ) from None
    except BaseException:
        # Cancelled or interrupted: never leave the stage's processes running.
        _kill_group(process)
        raise
    reader.join()
    if returncode != 0:
        raise PipelineError(f"stage {stage!r} failed (exit {returncode}); last lines:\n" + "\n".join(tail))
    return outcome_of(stage, lines)


def metrics_paths(project: Path) -> list[str]:
    """The files dvc.yaml declares as `metrics:` (metrics/metrics.json here)."""
    document = yaml.safe_load((Path(project) / "dvc.yaml").read_text(encoding="utf-8"))
    return [path for stage in document["stages"].values() for path in _paths(stage.get("metrics"))]


def lock_md5(lock: Mapping | None, path: str) -> str | None:
    """The md5 dvc.lock records for an out, or None."""
    for stage in ((lock or {}).get("stages") or {}).values():
        for entry in stage.get("outs") or []:
            if entry.get("path") == path:
                return entry.get("md5")
    return None
