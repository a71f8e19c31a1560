"""The Prefect server side: the project's own local server, and the automations `make deploy` installs.

- `local`: the background server `python -m pipeline run|retrain` starts on first use and reuses
  (`make server-stop` stops it), with its health check and auth header.
- `automations`: `python -m pipeline.server.automations` installs prefect.yaml's `automations:`,
  idempotently (`make deploy`).

Imports nothing from the rest of pipeline/.
"""
