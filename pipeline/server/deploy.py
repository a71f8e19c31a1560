"""`python -m pipeline.server.deploy` (`make deploy`): work pools, prefect.yaml's deployments and its automations.

    python -m pipeline.server.deploy [--file prefect.yaml] [--log .prefect/deploy.log] [--crash-after SECONDS]

Against the server at PREFECT_API_URL: creates the work pools the deployments name when missing, runs
`prefect --no-prompt deploy --all` (Prefect's own deploy: build steps, deployments, schedules, triggers) with its
output kept in the log file, one line per deployment here, then installs the automations
(pipeline.server.automations). Idempotent. One Python process and one `prefect deploy`, where the old recipe
started six Prefect processes (each import of Prefect is seconds), and a dozen lines instead of Prefect's 127:
its per-deployment panels and its hint `prefect worker start --pool 'gpu'`, which this project's
`make worker POOL=gpu` runs (creating the pool first, and stopping on the first Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.server.automations import CRASH_AUTOMATION, apply, load_automations, with_crash_window

REGISTERED = re.compile(r"Deployment '(?P<name>[^']+)' successfully (?P<how>created|updated)")
DEPLOYING = re.compile(r"│ Deploying (?P<name>\S+)")


def say(message: str) -> None:
    print(f"make deploy: {message}", flush=True)


def pools_of(deployments: list[dict]) -> dict[str, str]:
    """Each deployment's work pool, by deployment name, as prefect.yaml gives them."""
    return {entry["name"]: ((entry.get("work_pool") or {}).get("name") or "") for entry in deployments}


def ensure_pools(pools: Sequence[str]) -> list[str]:
    """Create the process work pools that are missing; returns those created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
                created.append(pool)
    return created


def deploy_all(prefect_yaml: Path, log_path: Path) -> list[tuple[str, str]]:
    """`prefect --no-prompt deploy --all`, its output in `log_path`, a progress line per deployment; returns
    (flow/deployment, created|updated) pairs (Prefect says "created" of an update too). A failure raises SystemExit with the log's last lines."""
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all",
               "--prefect-file", str(prefect_yaml)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    registered = []
    env = {**os.environ, "COLUMNS": "200"}  # one panel line per message: no wrapped names to parse
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   cwd=prefect_yaml.parent)
        for line in process.stdout:
            log.write(line)
            if match := DEPLOYING.search(line):
                say(f"registering {match['name']} ...")
            if match := REGISTERED.search(line):
                registered.append((match["name"], match["how"]))
        code = process.wait()
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        raise SystemExit(f"make deploy: `prefect deploy --all` failed (exit {code}); its last lines "
                         f"(all of them in {log_path}):\n" + "\n".join(tail))
    return registered


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=Path("prefect.yaml"), help="the prefect.yaml to deploy")
    parser.add_argument("--log", type=Path, default=None,
                        help="where Prefect's full output goes (default: $PREFECT_HOME/deploy.log, else .prefect/deploy.log)")
    parser.add_argument("--crash-after", type=float, default=None, metavar="SECONDS",
                        help=f"seconds without a heartbeat before {CRASH_AUTOMATION} marks a run Crashed "
                             "(make deploy CRASH_AFTER=S; default: prefect.yaml's)")
    args = parser.parse_args(argv)
    log_path = args.log or Path(os.environ.get("PREFECT_HOME") or ".prefect") / "deploy.log"
    document = yaml.safe_load(args.file.read_text(encoding="utf-8")) or {}
    pools = pools_of(document.get("deployments") or [])
    automations = load_automations(args.file)  # a bad automation stops the deploy before anything changes
    if args.crash_after is not None:
        automations = with_crash_window(automations, args.crash_after)
    from prefect.settings import PREFECT_API_URL

    used = sorted({pool for pool in pools.values() if pool})
    created = ensure_pools(used)
    say(f"server {PREFECT_API_URL.value()}; work pools {', '.join(used)}"
        + (f" (created: {', '.join(created)})" if created else ""))
    registered = deploy_all(args.file.resolve(), log_path)
    for name, how in registered:
        say(f"  {name} (pool {pools.get(name.split('/', 1)[-1]) or '?'})")
    say(f"{len(registered)} deployments registered; Prefect's own output: {log_path}")
    outcomes = apply(automations)
    say("automations " + ", ".join(f"{name} {outcome}" for name, outcome in outcomes))
    say("start a worker per pool: " + "; ".join(f"make worker POOL={pool}" for pool in used)
        + " (what Prefect's hint `prefect worker start --pool ...` starts too; make worker also creates the pool "
          "and stops on the first Ctrl-C)")
    say("run a retrain now: prefect deployment run 'retrain/retrain-cpu'; follow it in the UI, or with "
        "prefect flow-run logs <its id>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
