"""A new user's first hour, on a machine the project has never seen: clone, `make run`, then DVC's
own commands. The committed results were made on another machine, so the run must say how its
own compare with them, and every `dvc plots` command must work without a `make install` first."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import commit_all, copy_project, dvc, subprocess_env
from tests.pipeline.prefect_server import MAKE

pytestmark = pytest.mark.slow

# The closing verdict: any of the three that judge, never "not comparable" (same code, data and params).
VERDICT = re.compile(
    r"same bytes as the committed model \(models/model\.pth at HEAD\)"
    r"|(reproduces the committed results within noise: no detectable change|differs from the committed results: "
    r"(better|worse)[a-z, ]*|may differ from the committed results, this test set cannot tell: cannot tell: [a-z ]+) "
    r"\((accuracy|macro F1|loss) [+-]\d\.\d{4}.*\); [\d,]+ paired test images, \d+ right only in the committed model "
    r"and \d+ only in this one \(McNemar p = [\d.e+-]+\)")


def make(clone: Path, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    for inherited in ("PREFECT_API_URL", "PREFECT_HOME"):  # the clone's own server, as for a new user
        env.pop(inherited, None)
    return subprocess.run([*MAKE, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=900)


def test_make_run_on_a_fresh_clone_judges_itself_and_leaves_dvcs_commands_working(tmp_path):
    clone = copy_project(tmp_path / "clone")
    commit_all(clone, "as cloned: main's committed results, made elsewhere")
    (clone / ".dvc/offline-plots.html").unlink()  # generated and git-ignored: a clone has none
    try:
        run = make(clone, "run")
        assert run.returncode == 0, run.stderr[-3000:]
        lines = run.stdout.splitlines()  # after make's echo of its commands
        stages = next((at for at, line in enumerate(lines) if line.startswith("stages run or restored")), None)
        assert stages is not None, run.stdout + run.stderr[-3000:]
        # Evaluate reruns only where train made other bytes than the committed dvc.lock records.
        assert lines[stages].startswith("stages run or restored by DVC: validate, download, prepare, train, "), lines[stages]
        assert VERDICT.fullmatch(lines[stages + 1]), lines[stages + 1]

        assert "{plot_divs}" in (clone / ".dvc/offline-plots.html").read_text()
        shown = dvc(clone, "plots", "show", "-o", str(tmp_path / "shown"))
        assert (tmp_path / "shown/index.html").is_file(), shown.stdout
        diffed = dvc(clone, "plots", "diff", "HEAD", "-o", str(tmp_path / "diffed"))
        assert (tmp_path / "diffed/index.html").is_file(), diffed.stdout
        experiments = dvc(clone, "exp", "show", "--no-pager", "--md")
        assert "test.accuracy" in experiments.stdout or "accuracy" in experiments.stdout
    finally:
        make(clone, "server-stop")
