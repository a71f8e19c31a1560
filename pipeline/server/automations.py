"""Install the automations listed under `automations:` in prefect.yaml, idempotently.

    python -m pipeline.server.automations [--file prefect.yaml] [--crash-after SECONDS]

`make deploy` runs it after `prefect deploy`, against the server at PREFECT_API_URL. Each
automation is matched by name: created when the server has none of that name, otherwise the
newest one is updated in place and any other copies are deleted. Running it twice leaves one of
each. (`prefect automation create --from-file` adds another copy on every call.)

--crash-after (make deploy CRASH_AFTER=S): how long a flow run may go without a heartbeat before
`crash-silent-flow-runs` marks it Crashed, instead of prefect.yaml's 90 s. Heartbeats come every
30 s (Prefect's minimum), so a window under 45 s would crash live runs: refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import yaml

CRASH_AUTOMATION = "crash-silent-flow-runs"
HEARTBEAT_S = 30        # prefect.yaml's PREFECT_FLOWS_HEARTBEAT_FREQUENCY, Prefect's minimum
MIN_CRASH_AFTER_S = 45  # a heartbeat late by half its period must not crash a live run


def load_automations(path: Path) -> list:
    """The `automations:` of a prefect.yaml, validated as Prefect's own automation model."""
    from prefect.events.schemas.automations import AutomationCore

    listed = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("automations") or []
    automations = [AutomationCore.model_validate(entry) for entry in listed]
    names = [automation.name for automation in automations]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SystemExit(f"error: {path}: automation names must be unique; repeated: {', '.join(duplicates)}")
    return automations


def with_crash_window(automations: list, seconds: float) -> list:
    """The automations, with `crash-silent-flow-runs` waiting `seconds` after a run's last heartbeat."""
    if seconds < MIN_CRASH_AFTER_S:
        raise SystemExit(f"error: --crash-after {seconds:g}: must be at least {MIN_CRASH_AFTER_S} s, since flow runs "
                         f"send a heartbeat every {HEARTBEAT_S} s and a live run must not be marked Crashed")
    found = [automation for automation in automations if automation.name == CRASH_AUTOMATION]
    if not found:
        raise SystemExit(f"error: --crash-after: no automation {CRASH_AUTOMATION!r} to set it on")
    for automation in found:
        automation.trigger.within = timedelta(seconds=seconds)
        automation.description = re.sub(r"\b\d+ s\b", f"{seconds:g} s", automation.description or "")
        for action in automation.actions:
            if getattr(action, "message", None):
                action.message = re.sub(r"\b\d+ s\b", f"{seconds:g} s", action.message)
    return automations


def apply(automations: list) -> list[tuple[str, str]]:
    """Create or update each automation by name; returns (name, "created" | "updated") pairs."""
    from prefect.client.orchestration import get_client

    outcomes = []
    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)  # newest first
            if not existing:
                client.create_automation(automation)
                outcomes.append((automation.name, "created"))
                continue
            client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                client.delete_automation(extra.id)
            outcomes.append((automation.name, "updated"))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server.automations", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=Path("prefect.yaml"), help="the prefect.yaml to read")
    parser.add_argument("--crash-after", type=float, default=None, metavar="SECONDS",
                        help=f"seconds without a heartbeat before {CRASH_AUTOMATION} marks a run Crashed "
                             "(default: prefect.yaml's)")
    args = parser.parse_args(argv)
    automations = load_automations(args.file)
    if args.crash_after is not None:
        automations = with_crash_window(automations, args.crash_after)
    for name, outcome in apply(automations):
        print(f"automation {name!r} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
