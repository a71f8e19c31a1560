"""pipeline/'s rooms import one way (pipeline/__init__.py lists them, lowest first), and no room's
modules import one another in a cycle. Read from the source, so nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PIPELINE = PROJECT_ROOT / "pipeline"
# Lowest first: a room may import only from rooms before it here.
ROOMS = ["project", "device", "server", "run", "results", "committed", "registry", "forge", "report", "retrain", "sweep",
         "__main__"]
# Side by side, not stacked: none of these imports another.
SIBLINGS = {"report", "retrain", "sweep"}
LIBRARY = PROJECT_ROOT / "src" / "classifier"
# classifier/'s rooms, lowest first: a room may import only from rooms before it here.
LIBRARY_ROOMS = ["data", "training", "judging"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    return module.split(".")[1]


def imported_modules(path: Path, root: Path = PIPELINE.parent) -> set[str]:
    """The modules `path` imports, at module level or inside a function; `root` holds the packages."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from pipeline.report import plots` imports the module pipeline.report.plots.
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (root / node.module.replace(".", "/") / f"{alias.name}.py").is_file())
    return found


def pipeline_imports(path: Path) -> set[str]:
    return {name for name in imported_modules(path) if name.startswith("pipeline.")}


def modules() -> dict[str, set[str]]:
    return {module_name(path): pipeline_imports(path) for path in sorted(PIPELINE.rglob("*.py"))}


def test_every_module_is_in_a_listed_room():
    assert {room(module) for module in modules() if module != "pipeline"} <= set(ROOMS)


def test_rooms_import_only_the_rooms_below_them():
    wrong = []
    for module, imported in modules().items():
        if module == "pipeline":
            continue
        for name in imported:
            here, there = room(module), room(name)
            if here == there:
                continue
            if ROOMS.index(there) > ROOMS.index(here) or {here, there} <= SIBLINGS:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    """No module reaches itself through the imports in `graph` (module -> the modules it imports)."""
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for name in sorted(graph.get(module, ())):
            visit(name, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_no_import_cycles_inside_a_room():
    every = modules()
    graph = {module: {name for name in imported if name in every and room(name) == room(module)}
             for module, imported in every.items() if module != "pipeline"}
    # Sub-packages' __init__ modules are the room's name; a module importing its own package is no cycle.
    graph = {module: {name for name in names if not module.startswith(name + ".")} for module, names in graph.items()}
    assert_acyclic(graph)


def test_the_forge_room_knows_nothing_of_prefect_or_dvc():
    """DESIGN.md: the forge client speaks HTTP; the retrain flow finds its token and calls it."""
    imported = {name.split(".")[0] for path in (PIPELINE / "forge").glob("*.py") for name in imported_modules(path)}
    assert imported and not imported & {"prefect", "dvc"}, sorted(imported)


def library_imports() -> dict[str, set[str]]:
    """{classifier module: the classifier modules it imports}; `from classifier.data import images` counts as
    classifier.data.images, and a room's __init__ is the room's name."""
    found = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
        imported = imported_modules(path, LIBRARY.parent)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = {
            name for name in imported if name.startswith("classifier.")}
    return found


def library_room(module: str) -> str:
    """classifier.data.prepare -> data; a shared module beside the rooms (classifier.params) -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (LIBRARY / parts[1]).is_dir() else ""


def test_no_import_cycles_in_the_ml_library():
    """classifier/ imports one way too (judgement once imported verdicts, which imported judgement back for a type)."""
    found = library_imports()
    assert len(found) > 20
    # A module importing its own room's package (`from classifier.data import images`) is no cycle.
    assert_acyclic({module: {name for name in names if not module.startswith(name + ".")}
                    for module, names in found.items()})


def test_the_ml_librarys_rooms_import_one_way():
    """classifier/'s rooms (LIBRARY_ROOMS, lowest first) import only the rooms below them; the shared modules
    beside them (cli, files, params, ...) import no room."""
    assert {library_room(module) for module in library_imports()} - {""} == set(LIBRARY_ROOMS)
    wrong = []
    for module, imported in library_imports().items():
        here = library_room(module)
        for name in imported:
            there = library_room(name)
            if there and there != here and (not here or LIBRARY_ROOMS.index(there) > LIBRARY_ROOMS.index(here)):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)
