"""`python -m pipeline.server.data_updated` (`make data-updated`): announce new data, then say what it started.

It emits `classifier.data.updated` (resource `classifier.data`), the event prefect.yaml's retrain-cpu deployment
has a trigger on, exactly as `prefect event emit classifier.data.updated --resource-id classifier.data` does; then
it waits (up to WAIT_S) for the retrain the server starts, and prints which deployment's run it is and where to
follow it: its page in the UI, and the command that prints its log. A server with no such trigger (no
`make deploy` yet), or a retrain already running (the deployment's limit of one cancels the new run), is said too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

EVENT, RESOURCE = "classifier.data.updated", "classifier.data"
WAIT_S = 30.0


def emit() -> str:
    """Send the event and wait until the server has it; returns its id."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    event = Event(event=EVENT, resource={"prefect.resource.id": RESOURCE})

    async def send() -> None:
        async with get_events_client() as client:
            await client.emit(event)

    asyncio.run(send())
    return str(event.id)


def started_runs(since: datetime, wait_s: float) -> list:
    """The deployment flow runs the server created after `since`, waiting up to `wait_s` for the first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
            runs = [run for run in runs if run.deployment_id and run.created and run.created >= since]
            if runs or time.monotonic() > deadline:
                named = []
                for run in runs:
                    deployment = client.read_deployment(run.deployment_id)
                    named.append((run, f"{client.read_flow(deployment.flow_id).name}/{deployment.name}"))
                return named
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server.data_updated", description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=WAIT_S, help="seconds to wait for the retrain (default: %(default)s)")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    since = datetime.now(timezone.utc) - timedelta(seconds=1)  # the server's clock may lag this one's a little
    event_id = emit()
    print(f"make data-updated: announced {EVENT} (event {event_id}) to {PREFECT_API_URL.value()}", flush=True)
    runs = started_runs(since, args.wait)
    if not runs:
        print(f"make data-updated: no retrain started within {args.wait:g} s: the server starts one only once "
              "`make deploy` has registered retrain-cpu (its trigger); see the UI's Automations and Deployments pages")
        return 1
    ui = (PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")).rstrip("/")
    for run, deployment in runs:
        state = run.state_name or str(run.state_type)
        print(f"make data-updated: it triggered {deployment}: flow run '{run.name}', {state}"
              + (" (a retrain was already running: one at a time)" if state.lower() == "cancelled" else ""))
        print(f"  watch it: {ui}/runs/flow-run/{run.id}")
        print(f"  its log:  prefect flow-run logs {run.id}   (a worker on its pool runs it: make worker POOL=...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
