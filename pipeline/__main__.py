"""Command line for the flows: `python -m pipeline run|retrain|server-stop`.

    python -m pipeline run [--project .] [--device auto|cpu|cuda|mps] [--target STAGE]
    python -m pipeline retrain [--repo .] [--base main] [--device auto|cpu|cuda|mps]
    python -m pipeline server-stop

With PREFECT_API_URL set, the flows run against that server, which must answer. Without it,
they use the project's own local server (`.prefect/`), started in the background on first
use and reused afterwards; `server-stop` stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from pipeline.project import LOCK_PATH, METRICS_PATH, PARAMS_PATH

# Set before Prefect is imported: its settings are read once. Offline, telemetry calls only fail
# and slow the server down.
QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
}
# What a run records, for the closing hint on what to commit.
RESULT_FILES = (PARAMS_PATH, LOCK_PATH, str(Path(METRICS_PATH).parent))


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def connect(project: Path) -> bool:
    """Point Prefect at a server that answers: PREFECT_API_URL's, else `make server`'s address when it answers,
    else the project's local one; returns True for the project's own background server."""
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from pipeline.server.local import BUSY_ANSWER_S, CredentialsRefused, LocalServerError, ensure_server, healthy, is_own_server

    url = os.environ.get("PREFECT_API_URL")
    if url:
        try:
            # Patiently: a down server refuses at once, while a live one can take seconds to answer its first
            # requests (2.1 s measured for a freshly migrated PostgreSQL server under load).
            answers = healthy(url.rstrip("/"), timeout_s=BUSY_ANSWER_S)
        except CredentialsRefused:
            raise SystemExit(f"error: the server refused the credentials: set PREFECT_API_AUTH_STRING to the auth string "
                             f"the Prefect server at PREFECT_API_URL={url} was started with (or put it in .prefect/auth "
                             "and use make)") from None
        if not answers:
            raise SystemExit(f"error: the Prefect server at PREFECT_API_URL={url} is unreachable; start it with "
                             "`make server`, or unset PREFECT_API_URL to use the project's local server")
        return False
    home = Path(os.environ["PREFECT_HOME"])
    try:
        url = ensure_server(home, say)
    except LocalServerError as error:
        raise SystemExit(f"error: {error}") from None
    except CredentialsRefused as refused:
        raise SystemExit(f"error: the Prefect server at {refused} refused the credentials: set PREFECT_API_AUTH_STRING "
                         "to its auth string (or put it in .prefect/auth and use make)") from None
    os.environ["PREFECT_API_URL"] = url
    return is_own_server(home, url)


@contextmanager
def without_heartbeats():
    """Flow-run heartbeats exist for a server's crash detection, which the local server does not
    run; and the engine's heartbeat thread holds every run's end for up to a second."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def params_problem(project: Path) -> str | None:
    """What is wrong with params.yaml, checked as its validate stage checks it; None when valid."""
    from classifier.cli import UserError
    from classifier.params import load_params

    try:
        load_params(project / PARAMS_PATH if project != Path.cwd() else Path(PARAMS_PATH))
    except UserError as error:
        return str(error)
    return None


# What Prefect's engine logs, with the traceback, when a task (a stage) or the flow fails.
ENGINE_FAILURE_PHRASES = ("Finished in state", "Encountered exception", "Task run failed with")


class EngineFailureFilter(logging.Filter):
    """Prefect's engine reports a failed task and flow with the exception and its traceback; the
    command prints that failure itself, once, at the end, so the terminal shows it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(("prefect.task_runs", "prefect.flow_runs"))
                    and any(phrase in record.getMessage() for phrase in ENGINE_FAILURE_PHRASES))


def quiet_engine_failures() -> None:
    """Only the terminal: the server's logs keep every record, tracebacks included."""
    import prefect.main  # noqa: F401  (sets up Prefect's logging: its console handler is the root's)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(EngineFailureFilter())


def produced(summary: dict, project: Path) -> list[str]:
    """The closing lines of a run: the scores, the model and its hash, what DVC did."""
    test = (summary.get("metrics") or {}).get("test") or {}
    lines = []
    if test:
        lines.append(f"test accuracy {test.get('accuracy')}, macro F1 {test.get('macro_f1')}")
    if summary.get("model_sha256"):
        lines.append(f"model {summary['model_path']} sha256 {summary['model_sha256']}")
    changed = summary.get("changed") or []
    lines.append("stages run or restored by DVC: " + (", ".join(changed) if changed else "none, all up to date"))
    if {"train", "evaluate"} & set(changed):
        from pipeline.committed import against_committed  # pandas and scipy: only when there is something to judge

        lines.append(against_committed(project))
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *RESULT_FILES], cwd=project,
                           capture_output=True, text=True)
    if dirty.returncode == 0 and dirty.stdout.strip():
        lines.append("to record this run: git add params.yaml dvc.lock metrics && git commit")
    return lines


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Run the DVC pipeline as Prefect flows. Without PREFECT_API_URL the project's own "
                    "Prefect server is started in the background on first use (stop: server-stop).")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    devices = ("auto", "cpu", "cuda", "mps")
    run = commands.add_parser(
        "run", help="run the pipeline (`dvc repro`) as the train-pipeline flow",
        description="Run `dvc repro` as the train-pipeline flow: DVC reruns what changed, restores what its "
                    "cache holds and skips the rest; the run then checks `dvc status` is clean and prints "
                    "the test scores, the model's sha256 and the stages that ran. Exit status: 0 done; "
                    "the failed stage's own status (2: bad input) when a stage failed; 1 otherwise.")
    run.add_argument("--project", default=".", help="project folder holding dvc.yaml (default: %(default)s)")
    run.add_argument("--device", choices=devices, default=None,
                     help="set params.yaml's train.device first (default: leave params.yaml as it is)")
    run.add_argument("--target", default=None, help="stop after this stage, like `dvc repro STAGE`")
    retrain = commands.add_parser(
        "retrain", help="retrain a branch in its own workspace; promote only if as good as the champion",
        description="Retrain BASE in a git worktree of its own and judge the new model against the champion "
                    "committed at BASE; a model at least as good is committed on a branch "
                    "retrain/<UTC timestamp>-<flow run id>.")
    retrain.add_argument("--repo", default=".", help="git repo (folder or URL) to retrain (default: %(default)s)")
    retrain.add_argument("--base", default="main", help="branch holding the champion (default: %(default)s)")
    retrain.add_argument("--device", choices=devices, default=None,
                         help="the device class to train on (default: what BASE's params.yaml says)")
    commands.add_parser("server-stop", help="stop the project's local Prefect server, if it runs",
                        description="Stop the Prefect server `run` and `retrain` started in the background.")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The Prefect home lives in the project the command is about (a retrain of a URL: here).
    local = args.project if args.command == "run" else getattr(args, "repo", ".")
    project = Path(local if "://" not in local else ".").resolve()
    if args.command == "server-stop":
        from pipeline.server.local import stop_server

        stopped = stop_server(Path(os.environ.get("PREFECT_HOME", project / ".prefect")))
        say(f"stopped the local Prefect server at {stopped}" if stopped else "no local Prefect server was running")
        return 0

    if args.command == "run" and (problem := params_problem(project)):
        say(f"error: {problem}")  # before anything starts: the key, the value and the rule
        return 2
    # A server's automations tell a live run from a dead one by its heartbeats (prefect.yaml: Crashed
    # after 90 s of silence); Prefect's default, one every 180 s, would get a live run crashed.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    local = connect(project)
    from pipeline.device import DeviceError
    from pipeline.run.stages import PipelineError, StageFailed

    quiet_engine_failures()
    try:
        with without_heartbeats() if local else nullcontext():
            return run_command(args, project)
    except StageFailed as error:
        say(f"error: {error.summary} (its output is above)")
        return error.exit_code if 0 < error.exit_code < 256 else 1
    except (PipelineError, DeviceError) as error:
        say(f"error: {error}")
        return 1


def run_command(args: argparse.Namespace, project: Path) -> int:
    if args.command == "run":
        from pipeline.run.flow import train_pipeline

        summary = train_pipeline(project_dir=str(project), device=args.device, target=args.target)
        print("\n".join(produced(summary, project)))
        return 0
    from pipeline.retrain.flow import RetrainError, retrain

    try:
        result = retrain(repo=args.repo, base=args.base, device=args.device)
    except RetrainError as error:
        say(f"error: {error}")
        return 1
    print(result["result"] + (f": {result['branch']}" if result["branch"] else ""))
    if result["reason"] != result["result"]:
        print(result["reason"])
    if result.get("champion_version"):  # judged against the registry's version in prod (docs/retraining.md)
        print(f"the champion judged against: classifier {result['champion_version']} (classifier#prod)")
    if result.get("pull_request_note"):  # a promotion: its pull request, or how to open one
        print(result["pull_request_note"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
