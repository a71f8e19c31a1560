"""Every stage's deps in dvc.yaml name each classifier module its command imports, directly or through
another: a change to any of them reruns the stage (a module left out would leave a stale result that
`dvc status` calls up to date). Read from the source, so nothing is imported or run."""

from __future__ import annotations

import re

import yaml

from tests.conftest import PROJECT_ROOT
from tests.unit.test_pipeline_layers import imported_modules

SOURCE = PROJECT_ROOT / "src"


def module_file(module: str) -> str | None:
    """The file under src/ that defines `module`, relative to the project; None outside classifier."""
    for candidate in (SOURCE / module.replace(".", "/")).with_suffix(".py"), SOURCE / module.replace(".", "/") / "__init__.py":
        if candidate.is_file():
            return str(candidate.relative_to(PROJECT_ROOT))
    return None


def imported_files(module: str) -> set[str]:
    """The classifier files `module` needs: its own, and every classifier module it imports, transitively
    (package __init__ files are left out: they hold only docstrings)."""
    found, frontier = set(), [module]
    while frontier:
        path = module_file(frontier.pop())
        if path is None or path in found:
            continue
        found.add(path)
        frontier += [name for name in imported_modules(PROJECT_ROOT / path, SOURCE) if name.startswith("classifier.")]
    return {path for path in found if not path.endswith("__init__.py")}


def test_each_stage_depends_on_every_module_its_command_imports():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        command = re.match(r"python -m (classifier\.[\w.]+)", stage["cmd"])
        assert command, f"stage {name}: {stage['cmd']!r} is not `python -m classifier...`"
        deps = {next(iter(dep)) if isinstance(dep, dict) else dep for dep in stage["deps"]}
        if lacking := imported_files(command.group(1)) - deps:
            missing[name] = sorted(lacking)
    assert not missing, missing


def test_the_walk_follows_imports_through_other_modules():
    # evaluate imports split, which imports prepared: both count, and torch (outside classifier) does not.
    files = imported_files("classifier.training.evaluate")
    assert {"src/classifier/training/split.py", "src/classifier/data/prepared.py"} <= files
    assert not any("torch" in path for path in files)
