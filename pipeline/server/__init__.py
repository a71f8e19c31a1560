"""The Prefect server side: the project's own local server, and the automations `make deploy` installs.

- `local`: the server `python -m pipeline run|retrain` uses: `make server`'s when it answers, else the
  project's background one on that address, started on first use and reused (`make server-stop` stops it),
  with its health check and auth header.
- `automations`: `python -m pipeline.server.automations` installs prefect.yaml's `automations:`,
  idempotently (`make deploy`).
- `deploy`: `python -m pipeline.server.deploy` (`make deploy`): work pools, `prefect deploy --all` summarised,
  then the automations.
- `data_updated`: `python -m pipeline.server.data_updated` (`make data-updated`): the new-data event, and which
  retrain it started, where to watch it.

Imports nothing from the rest of pipeline/.
"""
