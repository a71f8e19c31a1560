"""Retraining: the pipeline rerun on a branch in a workspace of its own, promoted only past the gate.

- `workspace`: the retrain's own checkout (a git worktree, or a clone of a URL), its lock, the
  DVC cache shared or pulled into it, and the removal of what dead runs left behind.
- `gate`: the gate's inputs (the champion's committed results and policy, read through
  pipeline.results; the champion re-scored when the data changed) and its record.
- `pull_request`: a promotion's pull request, its title, body and token, opened or updated
  through pipeline.forge.
- `flow`: `retrain`, the Prefect flow (prefect.yaml's retrain deployments, `python -m pipeline retrain`).

Imports pipeline.forge, pipeline.results, pipeline.run, pipeline.device and pipeline.project; never torch.
"""
