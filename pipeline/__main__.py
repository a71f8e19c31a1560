"""Command line for the flows: `python -m pipeline run|retrain`.

    python -m pipeline run [--device auto|cpu|cuda] [--target STAGE]
    python -m pipeline retrain [--repo .] [--base main] [--device auto|cpu|cuda]

With no PREFECT_API_URL the flow runs against Prefect's temporary local server, its database
under the project's `.prefect/`; with one set, the server must answer or nothing starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Set before Prefect is imported: its settings are read once. Offline, telemetry calls only fail
# and slow the temporary server down.
EMBEDDED_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
}


def embedded_settings(project: Path) -> None:
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    for key, value in EMBEDDED_DEFAULTS.items():
        os.environ.setdefault(key, value)


def check_server() -> None:
    """An unreachable PREFECT_API_URL is an error here, not a traceback from inside the flow."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise SystemExit(f"error: the Prefect server at PREFECT_API_URL={url} is unreachable ({problem}); "
                         "start it with `make server`, or unset PREFECT_API_URL to use a temporary local server")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the DVC pipeline as the train_pipeline flow")
    run.add_argument("--project", default=".", help="project folder holding dvc.yaml (default: %(default)s)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--target", default=None, help="stop after this stage, like `dvc repro STAGE`")
    retrain = commands.add_parser("retrain", help="retrain a branch in its own workspace; promote if as good")
    retrain.add_argument("--repo", default=".", help="git repo (folder or URL) to retrain (default: %(default)s)")
    retrain.add_argument("--base", default="main", help="branch holding the champion (default: %(default)s)")
    retrain.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)

    # The Prefect home lives in the project the command is about (a retrain of a URL: here).
    local_project = args.project if args.command == "run" else (args.repo if "://" not in args.repo else ".")
    embedded_settings(Path(local_project).resolve())
    check_server()
    from pipeline.device import DeviceError
    from pipeline.stages import PipelineError

    try:
        if args.command == "run":
            from pipeline.flows import train_pipeline

            train_pipeline(project_dir=args.project, device=args.device, target=args.target)
        else:
            from pipeline.retrain import RetrainError, retrain

            try:
                result = retrain(repo=args.repo, base=args.base, device=args.device)
            except RetrainError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            print(result["result"] + (f": {result['branch']}" if result["branch"] else ""))
    except (PipelineError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
