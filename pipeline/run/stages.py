"""The DVC side of the flows: one `dvc repro` in its own process group, each stage's outcome
read from DVC's own words, and a `dvc status` that must come back clean.

DVC decides what runs: it walks its graph, reruns what changed, restores what its run-cache
holds and skips the rest. This module only reports what DVC said, and fails closed: a stage
whose outcome it cannot read counts as changed, never as skipped.

No Prefect and no torch here: the flows hand in a `log_line` callable, so this module can be
driven (and tested) on its own.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.run.dvc_run import STATUS_MARKER

DVC_RUN = Path(__file__).with_name("dvc_run.py")

RAN, RESTORED, SKIPPED = "ran", "restored", "skipped"
ALWAYS_CHANGED = "always changed"  # what `dvc status --json` says of an `always_changed` stage
CHANGED = frozenset({RAN, RESTORED})
# How many trailing output lines a failed stage's error message carries.
TAIL_LINES = 20
# After SIGTERM, how long a timed-out run's process group gets before SIGKILL.
KILL_GRACE_S = 5.0

# DVC 3's log lines, one outcome each (dvc/stage/__init__.py, run.py, cache.py).
_OUTCOME_LINES = [
    (re.compile(r"^Running stage '(?P<stage>[^']+)':"), RAN, "re-executed"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run"), RESTORED, "restored from the run-cache"),
    (re.compile(r"^Pulling data for stage: '(?P<stage>[^']+)'"), RESTORED, "pulled from the DVC remote"),
    (re.compile(r"^(?:Stage )?'(?P<stage>[^']+)' didn't change, skipping"), SKIPPED, "up to date"),
]
_FAILED_STAGE = re.compile(r"failed to reproduce '(?P<stage>[^']+)'")
_COMMAND_EXIT = re.compile(r"exited with (?P<code>-?\d+)")
# DVC's advice after a run (`git add dvc.lock ...`, autostage, `dvc push`): the flow says
# once, at the end, what to commit.
_GIT_HINTS = ("To track the changes with git", "\tgit add ", "To enable auto staging", "\tdvc config core.autostage",
              "Use `dvc push` to send")


class PipelineError(Exception):
    """A problem with the pipeline's definition or its run; the message is meant for the user."""


class StageFailed(PipelineError):
    """A stage's command failed: `exit_code` is the command's own status when DVC reported it,
    `summary` one line for a terminal (the full message carries the stage's last lines)."""

    def __init__(self, stage: str | None, exit_code: int, message: str, summary: str):
        super().__init__(message)
        self.stage, self.exit_code, self.summary = stage, exit_code, summary

    def __reduce__(self):  # the exception crosses Prefect's state and result machinery intact
        return StageFailed, (self.stage, self.exit_code, str(self), self.summary)


@dataclass(frozen=True)
class StageResult:
    name: str
    outcome: str          # RAN, RESTORED or SKIPPED
    reason: str           # DVC's word for it: "re-executed", "restored from the run-cache", ...


def stage_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a DVC or git subprocess: this interpreter's bin first, since
    dvc.yaml's cmds call `python`; DVC's analytics off (offline they only fail); no forge token."""
    env = dict(os.environ)
    # The forge token is for the retrain's own pull-request call: no stage, dvc or git needs it.
    env.pop("CLASSIFIER_FORGE_TOKEN", None)
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


def read_dvc_yaml(project: Path) -> dict:
    dvc_yaml = Path(project) / "dvc.yaml"
    try:
        document = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{dvc_yaml}: no dvc.yaml here; run from the project's root or pass its folder") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{dvc_yaml}: not valid YAML: {error}") from None
    stages = document.get("stages") if isinstance(document, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise PipelineError(f"{dvc_yaml}: has no `stages` mapping")
    return document


def stage_names(project: Path) -> list[str]:
    """The stages dvc.yaml defines, in its order (the order DVC runs them in here)."""
    return list(read_dvc_yaml(project)["stages"])


def metrics_paths(project: Path) -> list[str]:
    """The files dvc.yaml declares as `metrics:` (metrics/metrics.json here)."""
    return [path for stage in read_dvc_yaml(project)["stages"].values() for path in _paths(stage.get("metrics"))]


def outcomes(lines: Iterable[str], expected: Iterable[str] = ()) -> list[StageResult]:
    """Each stage's outcome in DVC's output, in the order DVC first named them.

    A stage counts as skipped only when DVC said it didn't change; a stage in `expected` that
    DVC never named counts as ran, so an unfamiliar wording can never hide a change.
    """
    found: dict[str, StageResult] = {}
    rank = {SKIPPED: 0, RESTORED: 1, RAN: 2}
    for line in lines:
        for pattern, outcome, reason in _OUTCOME_LINES:
            match = pattern.match(line.strip())
            if match:
                stage = match["stage"]
                # One run can say two things of a stage (cached, then re-run): the stronger wins.
                if stage not in found or rank[outcome] > rank[found[stage].outcome]:
                    found[stage] = StageResult(stage, outcome, reason)
    for stage in expected:
        found.setdefault(stage, StageResult(stage, RAN, "not named in DVC's output, so counted as changed"))
    return list(found.values())


def is_git_hint(line: str) -> bool:
    return line.startswith(_GIT_HINTS)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the run's whole process group (dvc and the python it started), then SIGKILL."""
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


def stream(args: list[str], project: Path, log_line: Callable[[str], None], timeout_s: float,
           what: str, extra_env: Mapping[str, str] | None = None, *,
           on_start: Callable[[Callable[[], None]], None] | None = None) -> tuple[int, list[str]]:
    """Run `args` in `project` in a session of its own, handing each output line to `log_line`.

    This function enforces `timeout_s`: on expiry, or when the caller is cancelled, it kills the
    whole process group, so no training process outlives the run. `on_start` is handed the killer,
    for a caller that waits in another thread (the flow, reading the lines as they come).
    """
    process = subprocess.Popen(
        args, cwd=project, env=stage_env(extra_env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,
    )
    if on_start is not None:
        on_start(lambda: _kill_group(process))
    lines: list[str] = []

    def pump() -> None:
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            log_line(line)

    reader = threading.Thread(target=pump, name="dvc-output", daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        reader.join(timeout=KILL_GRACE_S)
        raise PipelineError(f"{what} ran past its timeout of {timeout_s:g} s and was killed; last lines:\n"
                            + "\n".join(lines[-TAIL_LINES:])) from None
    except BaseException:
        _kill_group(process)
        raise
    reader.join()
    return returncode, lines


def failure(returncode: int, lines: list[str]) -> StageFailed:
    """The error for a failed `dvc repro`: which stage, its command's exit status, its last lines."""
    failed = next((m["stage"] for line in reversed(lines) if (m := _FAILED_STAGE.search(line))), None)
    code = next((int(m["code"]) for line in reversed(lines) if (m := _COMMAND_EXIT.search(line))), returncode)
    # The stage's own words: what it printed after DVC announced it, without DVC's summary.
    start = max((i for i, line in enumerate(lines) if failed and line.startswith(f"Running stage '{failed}'")),
                default=0)
    own = [line for line in lines[start + 1:] if line.strip() and not line.startswith(("ERROR:", "> "))]
    what = f"stage {failed!r}" if failed else "dvc repro"
    tail = own[-TAIL_LINES:] or lines[-TAIL_LINES:]
    summary = f"{what} failed (exit {code})" + (f": {tail[-1].strip()}" if tail else "")
    return StageFailed(failed, code, f"{what} failed (exit {code}):\n" + "\n".join(tail), summary)


def parse_status(lines: list[str]) -> list[str]:
    """The stages `dvc status --json` lists as not up to date (empty when all is well)."""
    # DVC may print warnings before the JSON; the JSON object is the last line.
    printed = [line for line in lines if line.strip()]
    try:
        status = json.loads(printed[-1]) if printed else None
    except json.JSONDecodeError:
        status = None
    if not isinstance(status, dict):
        raise PipelineError("`dvc status --json` printed something that is not a JSON object:\n" + "\n".join(lines))
    # An `always_changed` stage (dvc.yaml's snapshot) is "always changed" by definition, never stale.
    return sorted(stage for stage, entries in status.items() if entries != [ALWAYS_CHANGED])


def always_changed_stages(project: Path) -> set[str]:
    return {name for name, stage in read_dvc_yaml(project)["stages"].items() if stage.get("always_changed")}


@dataclass(frozen=True)
class Run:
    stages: list[StageResult]   # what DVC did to each stage
    stale: list[str]            # what `dvc status` still reports afterwards


def repro(project: Path, log_line: Callable[[str], None], timeout_s: float, target: str | None = None,
          extra_env: Mapping[str, str] | None = None, *,
          on_start: Callable[[Callable[[], None]], None] | None = None) -> Run:
    """`dvc repro [target]` then `dvc status`: DVC decides every stage; returns what it did and what is stale."""
    # By path, not `-m`: the project's folder comes first on `-m`'s path, and the revision
    # checked out there (an old base, in a retrain) may not have this module.
    args = [sys.executable, str(DVC_RUN), *([target] if target else [])]

    status_begun = False

    def log_repro_line(line: str) -> None:
        nonlocal status_begun  # the status JSON is read below, not logged
        status_begun = status_begun or line == STATUS_MARKER
        if not status_begun:
            log_line(line)

    returncode, lines = stream(args, project, log_repro_line, timeout_s, "dvc repro", extra_env, on_start=on_start)
    if STATUS_MARKER not in lines:
        raise failure(returncode, lines) if returncode != 0 else PipelineError(
            "`dvc repro` ended without reaching `dvc status`; its output:\n" + "\n".join(lines[-TAIL_LINES:]))
    split = lines.index(STATUS_MARKER)
    if returncode != 0:
        raise PipelineError(f"`dvc status` failed (exit {returncode}):\n" + "\n".join(lines[split + 1:]))
    # A whole-pipeline run must name every stage; for a target, DVC alone knows its upstream.
    stages = outcomes(lines[:split], expected=() if target else stage_names(project))
    # An `always_changed` stage runs on every command (dvc.yaml's snapshot lists a folder): its rerun is no
    # change by itself; what it found that is new reruns the stages after it, and shows there.
    listing = always_changed_stages(project)
    return Run([as_decided(stage, listing) for stage in stages], parse_status(lines[split + 1:]))


def as_decided(stage: StageResult, always_changed: set[str]) -> StageResult:
    """An `always_changed` stage's rerun is no change by itself (see `repro`)."""
    if stage.name in always_changed and stage.outcome == RAN:
        return StageResult(stage.name, SKIPPED, "runs on every command (always_changed); changes show in the stages after it")
    return stage


def announced_stage(line: str) -> str | None:
    """The stage a line of DVC's output announces a decision for ("Running stage 'x':", ...), or None."""
    for pattern, _, _ in _OUTCOME_LINES:
        match = pattern.match(line.strip())
        if match:
            return match["stage"]
    return None


class StageFeed:
    """One `dvc repro`'s output as it streams, cut into each stage's lines at DVC's own announcements.

    The reader thread `put`s lines and `finish`es; the flow's thread takes `stages()` in DVC's order
    and, for each, `lines_of(stage)`: the announcement and every line up to the next stage's. DVC's
    order and decisions are the only source: nothing here knows the graph.
    """

    _END = object()

    def __init__(self) -> None:
        self._lines: queue.Queue = queue.Queue()
        self._held: str | None = None   # the next stage's announcement, read while finishing the current one
        self.run: Run | None = None
        self.error: BaseException | None = None

    def put(self, line: str) -> None:
        self._lines.put(line)

    def finish(self, run: Run | None = None, error: BaseException | None = None) -> None:
        self.run, self.error = run, error
        self._lines.put(self._END)

    def _next(self):
        if self._held is not None:
            line, self._held = self._held, None
            return line
        return self._lines.get()

    def stages(self, before: Callable[[str], None]) -> Iterator[str]:
        """Each stage DVC announces, in its order; lines before the first (or between, unclaimed) go to `before`."""
        while (line := self._next()) is not self._END:
            stage = announced_stage(line)
            if stage is None:
                before(line)
                continue
            self._held = line
            yield stage
        self._held = self._END

    def lines_of(self, stage: str) -> Iterator[str]:
        """The lines DVC printed for `stage`: up to its end, or to the announcement of another stage."""
        while (line := self._next()) is not self._END:
            other = announced_stage(line)
            if other is not None and other != stage:
                self._held = line
                return
            yield line
        self._held = self._END


def lock_md5(lock: Mapping | None, path: str) -> str | None:
    """The md5 dvc.lock records for an out, or None."""
    for stage in ((lock or {}).get("stages") or {}).values():
        for entry in stage.get("outs") or []:
            if entry.get("path") == path:
                return entry.get("md5")
    return None


def dvc_cache_dir(repo: Path) -> Path | None:
    """The DVC cache `repo` uses (a retrain worktree shares its repo's), or None when DVC cannot say."""
    result = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=repo, capture_output=True, text=True,
                            env=stage_env())
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def cached_file(cache_dir: Path | None, md5: str | None) -> Path | None:
    """The file DVC's cache holds for an out of this md5 (cache layout 3.x), or None when it holds none."""
    if cache_dir is None or not md5:
        return None
    path = cache_dir / "files" / "md5" / md5[:2] / md5[2:]
    return path if path.is_file() else None
