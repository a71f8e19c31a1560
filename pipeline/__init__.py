"""The orchestration around the ML library (`classifier`): Prefect flows that run DVC, retraining,
sweeps, the pull-request report and the local server. Never imports torch.

Rooms, lowest first; a room imports only from the rooms above it in this list, and report/,
retrain/ and sweep.py not from one another:

    project.py   the files the orchestration reads, named once; flatten / lookup
    device.py    the one device knob, params.yaml's train.device
    server/      the project's local Prefect server; the automations `make deploy` installs
    run/         one run of the pipeline: the DVC runner (stages, dvc_run) and the train-pipeline flow
    results.py   one revision's committed results (git) or the workspace's: metrics, predictions,
                 test-split fingerprint, dvc.lock, params and its `compare` policy
    committed.py make run's closing verdict: the workspace's results against HEAD's committed ones
    registry.py  the champion's name: GTO's version and stage tags for dvc.yaml's `classifier` artifact
    forge/       pull requests on GitHub, GitHub Enterprise, Gitea or Forgejo (their shared REST API),
                 every call bounded; knows nothing of Prefect or DVC
    report/      the pull-request report (`python -m pipeline.report`)
    retrain/     retraining: its workspace, its gate, its pull request, its flow
    sweep.py     sweeps across workers (`python -m pipeline.sweep`)
    __main__.py  `python -m pipeline run | retrain | server-stop`

tests/unit/test_pipeline_layers.py checks the order. Sub-packages' `__init__` modules import
nothing, so importing one module of a room never pulls in the rest (nor Prefect).
"""
