"""One run of the DVC pipeline: the DVC runner and the train-pipeline flow.

- `stages`: one `dvc repro` (then `dvc status`) in its own process group, each stage's outcome
  read from DVC's own words; no Prefect, no torch. Also the environment every DVC or git
  subprocess of pipeline/ gets (`stage_env`) and dvc.lock's record of an out (`lock_md5`).
- `dvc_run`: the child process `stages.repro` starts, by path: DVC's repro and status in one
  interpreter.
- `flow`: `train_pipeline`, the Prefect flow around it (prefect.yaml's `train-cpu`, `make run`): a task run per
  stage DVC names, cut from its streaming output (`stages.StageFeed`); `run_pipeline`, the same inside another flow.

Imports only pipeline.project and pipeline.device from the rest of pipeline/.
"""
