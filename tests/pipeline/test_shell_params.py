"""No param reaches a shell (issue 38.6): dvc.yaml templates `data.folder` into a double-quoted shell
command, so a value holding `$(...)`, backticks, `\\` or `"` would run. The validate stage, first in
the graph, refuses them with the key, the value and the rule, before the snapshot stage's command
runs: through params.yaml and `dvc repro`, through `dvc exp run -S`, and through a sweep grid's point."""

from __future__ import annotations

import sys

import pytest

from pipeline.sweep import expand_grid
from tests.conftest import commit_all, dvc, run, write_params

pytestmark = pytest.mark.slow

# Each would create `pwned` in the project when a shell read it.
HOSTILE = ["images$(touch pwned)", "images`touch pwned`", 'images"; touch pwned; "']


def refused(done, value: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert f"data.folder = {value!r}: must not hold" in output, output[-2000:]
    assert "Running stage 'snapshot'" not in output


@pytest.mark.parametrize("value", HOSTILE)
def test_a_shell_value_in_params_yaml_stops_dvc_repro_at_validate(project, value):
    write_params(project, **{"data.folder": value})
    commit_all(project, "hostile folder")
    refused(dvc(project, "repro", check=False), value)
    assert not (project / "pwned").exists()


def test_a_shell_value_through_dvc_exp_run_set_param_is_refused(project):
    value = HOSTILE[0]  # quoted for DVC's (Hydra's) override grammar, which reads `(` itself
    refused(dvc(project, "exp", "run", "-S", f"data.folder='{value}'", check=False), value)
    assert not (project / "pwned").exists()


def test_a_sweep_grid_point_with_a_shell_value_is_refused(project):
    # The grid is parsed as `make sweep GRID=...` and pipeline.sweep parse it; each point runs `dvc exp run -S`.
    points = expand_grid(["data.folder='images`touch pwned`',images", "train.epochs=1"])
    hostile = next(point for point in points if "`" in point[0])
    assert len(points) == 2 and hostile[1] == "train.epochs=1"
    flags = [flag for override in hostile for flag in ("-S", override)]
    done = run([sys.executable, "-m", "dvc", "exp", "run", *flags], cwd=project, check=False)
    refused(done, "images`touch pwned`")
    assert not (project / "pwned").exists()
