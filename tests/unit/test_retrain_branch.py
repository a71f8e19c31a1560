"""A retry of the same flow run promotes onto the branch its first attempt pushed, so its pull request
is updated, never doubled; real git repos (a bare origin and two clones), no DVC."""

from __future__ import annotations

from pathlib import Path

from pipeline.retrain.flow import promote
from tests.conftest import git

RUN_ID = "0b5e7c2a-4f7d-4e8b-9a51-3c2d1e0f9a87"


def clone(origin: Path, where: Path) -> Path:
    git(where.parent, "clone", "--quiet", str(origin), str(where))
    return where


def attempt(origin: Path, where: Path, accuracy: str, run_id: str | None = RUN_ID) -> str:
    """One attempt's promotion: a fresh clone (as a retried run's new workspace), new results, promote."""
    workspace = clone(origin, where)
    (workspace / "metrics" / "metrics.json").write_text(f'{{"test": {{"accuracy": {accuracy}}}}}\n')
    return promote(workspace, cloned=True, pushed_to_remote=False, run_id=run_id)


def origin_branches(origin: Path) -> list[str]:
    return git(origin, "for-each-ref", "--format=%(refname:lstrip=2)", "refs/heads/retrain/").split()


def test_a_retried_run_reuses_its_branch_and_a_new_run_gets_its_own(tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "--quiet", "-b", "main")
    for name, text in {"dvc.lock": "schema: '2.0'\n", "params.yaml": "seed: 1\n", "metrics/metrics.json": "{}\n"}.items():
        (seed / name).parent.mkdir(exist_ok=True)
        (seed / name).write_text(text)
    git(seed, "add", "-A")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "champion")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(seed), str(origin))

    first = attempt(origin, tmp_path / "first", "0.95")
    assert first.startswith("retrain/") and first.endswith("-0b5e7c2a4f7d")
    retried = attempt(origin, tmp_path / "retried", "0.96")
    assert retried == first and origin_branches(origin) == [first]
    # The retry's commit replaced the first attempt's at the origin.
    assert '"accuracy": 0.96' in git(origin, "show", f"{first}:metrics/metrics.json")

    other = attempt(origin, tmp_path / "other", "0.97", run_id="7f00aa11-0000-4000-8000-000000000000")
    assert other != first and sorted(origin_branches(origin)) == sorted([first, other])
