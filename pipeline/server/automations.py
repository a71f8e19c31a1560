"""Install the automations listed under `automations:` in prefect.yaml, idempotently.

    python -m pipeline.server.automations [--file prefect.yaml]

`make deploy` runs it after `prefect deploy`, against the server at PREFECT_API_URL. Each
automation is matched by name: created when the server has none of that name, otherwise the
newest one is updated in place and any other copies are deleted. Running it twice leaves one of
each. (`prefect automation create --from-file` adds another copy on every call.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml


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
    args = parser.parse_args(argv)
    for name, outcome in apply(load_automations(args.file)):
        print(f"automation {name!r} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
