"""Every command and name README.md and docs/*.md tell a user to type or to match on exists: each
`make TARGET` (the VAR=value it is given, and its duration as `make help` gives it), each
`python -m MODULE [COMMAND] --flag` and `python benchmarks/SCRIPT.py --flag`, each environment
variable, deployment (and its flow), flow, work pool, automation, Prefect block, event, resource and
label, each stage's command and their order (dvc.yaml's), and the README's layout of pipeline/.
Static: it reads the Makefile, prefect.yaml, dvc.yaml and the CLIs' argparse calls (with `ast`), and
imports neither torch nor Prefect, so it takes seconds. test_docs_links.py checks the links, files,
tests and modules the pages name."""

from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.unit.test_docs_links import CODE_SPAN, FENCE, PAGES, ROOT

# Where a name the pages mention may be read or set: the code, the build and the deployment wiring.
CODE_ROOTS = ("src", "pipeline", "benchmarks", ".github", ".ci")
CODE_FILES = ("Makefile", "prefect.yaml", "dvc.yaml", "pyproject.toml")

# Environment variables read by other programs, which the project only passes along: who reads each.
THIRD_PARTY_ENV = {
    "AWS_ACCESS_KEY_ID": "DVC's S3 plugin (boto3)",
    "AWS_SECRET_ACCESS_KEY": "DVC's S3 plugin (boto3)",
    "AWS_SESSION_TOKEN": "DVC's S3 plugin (boto3)",
    "AWS_PROFILE": "DVC's S3 plugin (boto3)",
    "GH_TOKEN": "the GitHub CLI, and git through `gh auth git-credential`",
    "GITHUB_TOKEN": "GitHub Actions",
    "OMP_NUM_THREADS": "torch's OpenMP thread pool",
    "ATEN_CPU_CAPABILITY": "torch's choice of SIMD kernels (make test-anycpu caps it: tests/anycpu.py)",
    "MKL_CBWR": "MKL's reproducible code path (make test-anycpu sets it: tests/anycpu.py)",
    "PYTEST_ADDOPTS": "pytest, which adds these options to every run (make test's --durations=20)",
    "PGPASSWORD": "asyncpg (the Prefect server's PostgreSQL driver) and libpq's tools, for a URL without a password",
    "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "the Prefect server, which then logs the database errors its clients retry",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "the Prefect server's db_vacuum service (docs/scaling-out.md)",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": "the Prefect server's db_vacuum service (docs/scaling-out.md)",
}

SHELL_BREAKS = {";", "&&", "||", "|", "&", "(", ")", ">", "<", ">>", "2>&1"}
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.S)
ENV_NAME = re.compile(r"(?<![\w./-])\$?\{?([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b(?![.(/-])")
DOTTED = re.compile(r"(?<![\w./-])((?:classifier|prefect)(?:\.[a-z*][\w*-]*)+)")
# Names in the pages' examples that no code holds: an experiment's name DVC made up.
EXAMPLE_NAMES = {"astir-peri"}


# --- what the pages say ------------------------------------------------------------------------


def code_units(page: Path) -> list[str]:
    """The page's code: each inline code span, and each line of each fenced block."""
    text = page.read_text(encoding="utf-8")
    units = [span[1:-1].replace("\n", " ") for span in CODE_SPAN.findall(FENCE.sub("", text))]
    for block in FENCE.finditer(text):
        units += block.group(0).splitlines()[1:-1]
    return units


def commands(unit: str) -> list[list[str]]:
    """A unit of code split into shell words, one list per simple command (split at ;, &&, |, ...),
    comments dropped. Text that is not shell (unbalanced quotes) splits at spaces."""
    try:
        lexer = shlex.shlex(unit, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        words = unit.split("#")[0].split()
    parts, current = [], []
    for word in words:
        if word in SHELL_BREAKS or set(word) <= set(";&|()<>"):
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [part for part in [*parts, current] if part]


def make_calls(units: list[str]) -> list[tuple[str, dict[str, str], str]]:
    """(target, {VAR: value}, the text) of each `make TARGET VAR=value ...`; the target is '' when
    the command names none."""
    calls = []
    for unit in units:
        for words in commands(unit):
            for start in (i for i, word in enumerate(words) if word == "make"):
                target, assignments = "", {}
                for word in words[start + 1:]:
                    if (match := ASSIGNMENT.match(word)) and match[1].isupper():
                        assignments[match[1]] = match[2]
                    elif not target and re.fullmatch(r"[a-z][\w-]*:?", word):
                        target = word.rstrip(":")  # also `make server: ...`, a line make prints
                    elif not word.startswith("-"):
                        break
                calls.append((target, assignments, unit))
    return calls


def cli_calls(units: list[str]) -> list[tuple[str, list[str], str]]:
    """(the CLI's file, its words after the module or script, the text) of each
    `python -m classifier...|pipeline...` and `python benchmarks/SCRIPT.py`."""
    calls = []
    for unit in units:
        for words in commands(unit):
            for i, word in enumerate(words[:-1]):
                following = words[i + 1]
                if word == "-m" and re.fullmatch(r"(?:classifier|pipeline)(?:\.\w+)*", following):
                    calls.append((following, words[i + 2:], unit))
                elif re.search(r"(?:^|/)python[\d.]*$", word) and re.fullmatch(r"benchmarks/\w+\.py", following):
                    calls.append((following, words[i + 2:], unit))
    return calls


# --- what the code has -------------------------------------------------------------------------


def cli_file(name: str) -> Path | None:
    """The file whose argparse calls make a module's or a script's command line."""
    if name.endswith(".py"):
        path = ROOT / name
        return path if path.exists() else None
    base = ROOT / ("src" if name.startswith("classifier") else "") / name.replace(".", "/")
    for path in (base / "__main__.py", base.with_suffix(".py")):
        if path.exists():
            return path
    return None


def argparse_calls(tree: ast.AST):
    """(receiver's name, method, the call) of each `NAME.add_argument(...)` / `NAME.add_parser(...)`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if node.func.attr in ("add_argument", "add_parser"):
                yield node.func.value.id, node.func.attr, node


def option_strings(call: ast.Call) -> set[str]:
    return {arg.value for arg in call.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            and arg.value.startswith("-")}


@cache
def parser_helpers() -> dict[str, set[str]]:
    """The project's functions that build a parser and add options to it (classifier.cli's
    stage_parser: --params): each one's options."""
    helpers = {}
    for path in (ROOT / "src/classifier/cli.py",):
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(function, ast.FunctionDef):
                options = set().union(*(option_strings(call) for _, method, call in argparse_calls(function)
                                        if method == "add_argument"))
                if options:
                    helpers[function.name] = options
    return helpers


@cache
def cli_options(path: Path) -> dict[str | None, set[str]]:
    """The options of a command line, read from its source: {None: the top level's, COMMAND: each
    subcommand's}. A subcommand is `X = ....add_parser("COMMAND", ...)`; the options of `X.add_argument`
    are its own."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    subcommand_of = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "add_parser" and node.value.args
                and isinstance(node.value.args[0], ast.Constant)):
            subcommand_of[node.targets[0].id] = node.value.args[0].value
    options: dict[str | None, set[str]] = {None: {"-h", "--help"}}
    for receiver, method, call in argparse_calls(tree):
        if method == "add_parser" and call.args and isinstance(call.args[0], ast.Constant):
            options.setdefault(call.args[0].value, {"-h", "--help"})
        elif method == "add_argument":
            options.setdefault(subcommand_of.get(receiver), {"-h", "--help"}).update(option_strings(call))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    for helper, helper_options in parser_helpers().items():
        if helper in names:
            options[None] |= helper_options
    return options


def unknown_options(path: Path, words: list[str]) -> list[str]:
    """What in `words` (a command line after its module) the CLI at `path` does not have: a
    subcommand, or an option of it."""
    options = cli_options(path)
    subcommands = set(options) - {None}
    command = None
    if subcommands and words and not words[0].startswith("-"):
        if words[0] not in subcommands:
            return [f"no command {words[0]!r} (it has {', '.join(sorted(subcommands))})"]
        command, words = words[0], words[1:]
    known = options[None] | options.get(command, set())
    flags = [word.split("=")[0] for word in words if re.match(r"^--?[A-Za-z]", word)]
    return [f"no option {flag}" + (f" for {command!r}" if command else "") for flag in flags if flag not in known]


@cache
def makefile() -> tuple[dict[str, list[str]], set[str]]:
    """The Makefile's rules ({target: its recipe lines}) and its variables (assigned or used)."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    rules: dict[str, list[str]] = {}
    recipe: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t"):
            recipe.append(line)
            continue
        recipe = []  # a recipe follows its rule's line only
        if match := re.match(r"^([^\s:=#][^:=#]*?)\s*:(?![:=])(.*)$", line):
            target_specific = re.match(r"\s*(?:export\s+|override\s+)?[A-Za-z_]\w*\s*[:?+!]?=", match[2])
            for target in match[1].split():
                if target_specific:
                    rules.setdefault(target, [])
                else:
                    rules[target] = recipe
    variables = set(re.findall(r"^(?:export\s+)?([A-Za-z_]\w*)\s*[:?+!]?=", text, re.M))
    variables |= set(re.findall(r"\$\(([A-Za-z_]\w*)\)", text)) | set(re.findall(r"export\s+([A-Za-z_]\w*)", text))
    return rules, variables


def recipe_clis(target: str, variable: str) -> list[Path]:
    """The CLIs a target's recipe hands $(VARIABLE) to."""
    rules, _ = makefile()
    clis = []
    for line in rules.get(target, []):
        if f"$({variable})" in line:
            match = re.search(r"-m ((?:classifier|pipeline)[\w.]*)|(benchmarks/\w+\.py)", line)
            if match and (path := cli_file(match[1] or match[2])):
                clis.append(path)
    return clis


@cache
def code_text() -> str:
    """Everything the project's code, build and wiring say, to look a name up in."""
    paths = [ROOT / name for name in CODE_FILES]
    for root in CODE_ROOTS:
        paths += [p for p in (ROOT / root).rglob("*") if p.is_file() and p.suffix in (".py", ".yml", ".yaml", "")]
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in paths if p.exists())


@cache
def prefect_project() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))


def flow_name(entrypoint: str) -> str:
    """The name of the flow at `path.py:function`: its @flow(name=...), else Prefect's default."""
    path, function = entrypoint.split(":")
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call):
                    for keyword in decorator.keywords:
                        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                            return keyword.value.value
    return function.replace("_", "-")


def deployments() -> dict[str, str]:
    """{deployment: its flow's name}, from prefect.yaml."""
    return {d["name"]: flow_name(d["entrypoint"]) for d in prefect_project()["deployments"]}


def work_pools() -> set[str]:
    return {d["work_pool"]["name"] for d in prefect_project()["deployments"]}


def flows() -> set[str]:
    """The names of the project's Prefect flows (their @flow(name=...))."""
    names = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        if "@flow" in source:
            names |= {flow_name(f"{path.relative_to(ROOT)}:{function}")
                      for function in re.findall(r"^@flow\b.*\n(?:@.*\n)*(?:async )?def (\w+)", source, re.M)}
    return names


def python_name_exists(dotted: str) -> bool:
    """classifier.X[.Y...] names a module of src/classifier, or something defined in one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT / "src" / "/".join(parts[:cut])
        source = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)
        if source:
            return cut == len(parts) or re.search(rf"^\s*(?:class|def|async def)\s+{parts[cut]}\b|^{parts[cut]}\b\s*[:=]",
                                                  source.read_text(encoding="utf-8"), re.M) is not None
    return False


# --- the checks --------------------------------------------------------------------------------

page_ids = {"ids": lambda p: str(p.relative_to(ROOT))}


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_make_target_and_variable_exists(page):
    rules, variables = makefile()
    wrong = []
    for target, assignments, unit in make_calls(code_units(page)):
        if target and target not in rules:
            wrong.append(f"`{unit}`: no target {target!r} in the Makefile")
        for name, value in assignments.items():
            if name not in variables and name not in code_text():
                wrong.append(f"`{unit}`: the Makefile has no variable {name}")
            words = commands(value)[0] if commands(value) else []
            for cli in recipe_clis(target, name) if any(word.startswith("-") for word in words) else []:
                wrong += [f"`{unit}`: {name} hands {cli.relative_to(ROOT)} {problem}"
                          for problem in unknown_options(cli, words)]
    assert not wrong, f"{page.relative_to(ROOT)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_a_make_targets_duration_is_the_one_make_help_gives(page):
    """`make bench` (about 7 minutes ...) on a page, `(~7 min)` in the Makefile's `##` help."""
    rules_help = dict(re.findall(r"^([\w-]+):.*##.*\((?:~|under |about )(\d+) min", (ROOT / "Makefile").read_text(), re.M))
    text = page.read_text(encoding="utf-8").replace("\n", " ")
    wrong = [f"`make {target}` (about {minutes} minutes): make help says {rules_help[target]}"
             for target, minutes in re.findall(r"`make ([\w-]+)[^`]*` \((?:[^()]*?, )?(?:about|under) (\d+) min", text)
             if target in rules_help and rules_help[target] != minutes]
    assert not wrong, f"{page.relative_to(ROOT)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_command_line_option_exists(page):
    wrong = []
    for name, words, unit in cli_calls(code_units(page)):
        path = cli_file(name)
        if path is None:
            wrong.append(f"`{unit}`: no module or script {name}")
        else:
            wrong += [f"`{unit}`: {name} has {problem}" for problem in unknown_options(path, words)]
    assert not wrong, f"{page.relative_to(ROOT)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_environment_variable_is_read_or_set_somewhere(page):
    names = {name for unit in code_units(page) for name in ENV_NAME.findall(unit)}
    unknown = sorted(name for name in names
                     if name not in THIRD_PARTY_ENV and not re.search(rf"\b{name}\b", code_text()))
    assert not unknown, (f"{page.relative_to(ROOT)} names environment variables that neither the code, the Makefile "
                         f"nor prefect.yaml use (nor another program this project runs): {unknown}")


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_deployment_flow_work_pool_and_automation_exists(page):
    known, pools = deployments(), work_pools()
    wrong = []
    for unit in code_units(page):
        for flow, deployment in re.findall(r"(?<![\w/.-])([a-z][\w-]*)/([a-z][\w-]*-(?:cpu|gpu))\b", unit):
            if deployment not in known:
                wrong.append(f"`{unit}`: no deployment {deployment!r} in prefect.yaml")
            elif known[deployment] != flow:
                wrong.append(f"`{unit}`: deployment {deployment!r} runs the flow {known[deployment]!r}, not {flow!r}")
        if re.fullmatch(r"[a-z][\w-]*-(?:cpu|gpu)", unit) and unit not in known and unit not in makefile()[0]:
            wrong.append(f"`{unit}`: no deployment of that name in prefect.yaml")
        for pool in re.findall(r"\bPOOL=([\w|]+)|work-pool \w+ ([\w-]+)|--pool '?([\w-]+)", unit):
            wrong += [f"`{unit}`: no work pool {name!r} in prefect.yaml"
                      for name in "|".join(pool).split("|") if name and name not in pools and "$" not in name]
    text = page.read_text(encoding="utf-8")
    for pool in re.findall(r"`([\w-]+)`(?: and `[\w-]+`)? (?:work )?pools?\b", text):
        if pool not in pools:
            wrong.append(f"the `{pool}` pool: no work pool of that name in prefect.yaml")
    prose = text.replace("\n", " ")
    for flow in filter(None, sum(re.findall(r"`([\w-]+)`(?: Prefect)? flows?\b|\bflows? `([\w-]+)`", prose), ())):
        if flow not in flows():
            wrong.append(f"the `{flow}` flow: no flow of that name (the flows: {', '.join(sorted(flows()))})")
    automations = {a["name"] for a in prefect_project().get("automations", [])}
    for automation in filter(None, sum(re.findall(r"`([\w-]+)` automations?\b|\bautomations? `([\w-]+)`", prose), ())):
        if automation not in automations:
            wrong.append(f"the `{automation}` automation: none of that name in prefect.yaml")
    assert not wrong, f"{page.relative_to(ROOT)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_hyphenated_name_is_one_the_code_uses(page):
    """A deployment, automation, flow, artifact, block or outcome code quoted whole (`retrain-cpu`,
    `retrain-comparison`, `not-promoted`): the code, the Makefile or prefect.yaml spells it the same."""
    names = {unit for unit in code_units(page) if re.fullmatch(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+", unit)}
    unknown = sorted(names - EXAMPLE_NAMES - {n for n in names if re.search(rf"(?<![\w-]){n}(?![\w-])", code_text())})
    assert not unknown, f"{page.relative_to(ROOT)} quotes names no code, Makefile or prefect.yaml holds: {unknown}"


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_prefect_block_is_one_the_code_loads(page):
    text = page.read_text(encoding="utf-8").replace("\n", " ")
    names = set(re.findall(r"[Bb]lock `([\w-]+)`", text)) | set(re.findall(r"\.save\(\s*[\"']([\w-]+)[\"']", text))
    unknown = sorted(name for name in names if not re.search(rf"[\"']{re.escape(name)}[\"']", code_text()))
    assert not unknown, f"{page.relative_to(ROOT)} names Prefect blocks the code never loads: {unknown}"


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_event_resource_and_label_name_is_one_the_code_uses(page):
    """`classifier.data.updated`, `classifier.model.promoted`, `prefect.flow-run.Crashed`, ...: a dotted
    name that is no Python module or attribute is an event, a resource or a label, and the code or
    prefect.yaml must spell it the same way."""
    unknown = set()
    for unit in code_units(page):
        for name in DOTTED.findall(unit):
            if name.startswith("classifier.") and python_name_exists(name):
                continue
            if name.startswith("prefect.") and not re.search(r"-|^prefect\.resource\.|^prefect\.run-count", name):
                continue  # a module of Prefect's (prefect.blocks.system), not a name this project chose
            if name.rstrip("*") not in code_text():
                unknown.add(name)
    assert not unknown, (f"{page.relative_to(ROOT)} names events, resources or labels neither the code nor "
                         f"prefect.yaml use: {sorted(unknown)}")


def dvc_stages() -> dict[str, str]:
    """{stage: its command, spaces normalised}, in dvc.yaml's order."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: " ".join(stage["cmd"].split()) for name, stage in stages.items()}


@pytest.mark.parametrize("page", PAGES, **page_ids)
def test_every_stage_command_and_order_is_dvc_yamls(page):
    """A table row `| stage | `python -m classifier...` |` gives dvc.yaml's command (a trailing `...`
    stands for the rest), the table lists every stage, and `a -> b -> c` follows dvc.yaml's order."""
    stages, text = dvc_stages(), page.read_text(encoding="utf-8")
    wrong, tabled = [], []
    for name, command in re.findall(r"^\| *(\w+) *\| *`(python -m classifier\.[^`]*)` *\|", text, re.M):
        tabled.append(name)
        shown = " ".join(command.split())
        real = stages.get(name)
        if real is None:
            wrong.append(f"{name}: no such stage in dvc.yaml")
        elif not (real == shown or shown.endswith("...") and real.startswith(shown[:-3])):
            wrong.append(f"{name}: the page says `{shown}`, dvc.yaml `{real}`")
    if tabled and tabled != list(stages):
        wrong.append(f"the stage table lists {tabled}; dvc.yaml has {list(stages)}")
    order = list(stages)
    for unit in code_units(page):
        if re.fullmatch(r"\w+(?: -> \w+)+", unit.strip()):
            chain = unit.split(" -> ")
            start = order.index(chain[0]) if chain[0] in order else -1
            if start < 0 or order[start:start + len(chain)] != [c.strip() for c in chain]:
                wrong.append(f"`{unit.strip()}`: dvc.yaml's stages run {' -> '.join(order)}")
    assert not wrong, f"{page.relative_to(ROOT)}:\n" + "\n".join(wrong)


def layout_entries(parent: str) -> set[str]:
    """The modules and packages the README's Layout block indents under `parent` (`pipeline/`, `src/classifier/`)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = next(block.group(0) for block in FENCE.finditer(readme[readme.index("## Layout"):]))
    listed, inside = set(), False
    for line in layout.splitlines():
        if not line.startswith(" "):
            inside = line.startswith(parent + " ")
        elif inside and (entry := re.match(r"^  ([\w.]+\.py|\w+/)\s", line)):
            listed.add(entry.group(1))
    return listed


def test_the_readme_layout_lists_every_room_of_pipeline():
    """The README's Layout block names each module and package of pipeline/, and nothing that is gone."""
    listed = layout_entries("pipeline/")
    rooms = {p.name for p in (ROOT / "pipeline").glob("*.py") if p.stem not in ("__init__", "__main__")}
    rooms |= {f"{p.parent.name}/" for p in (ROOT / "pipeline").glob("*/__init__.py")}
    assert listed == rooms, f"README's layout of pipeline/: missing {sorted(rooms - listed)}, gone {sorted(listed - rooms)}"


def test_the_readme_layout_lists_every_room_of_classifier():
    """The README's Layout block names each room (package) of src/classifier/, and nothing that is gone."""
    listed = {entry for entry in layout_entries("src/classifier/") if entry.endswith("/")}
    rooms = {f"{p.parent.name}/" for p in (ROOT / "src" / "classifier").glob("*/__init__.py")}
    assert listed == rooms, f"README's layout of src/classifier/: missing {sorted(rooms - listed)}, gone {sorted(listed - rooms)}"


# --- the checks check ----------------------------------------------------------------------------


def test_the_pages_have_commands_to_check():
    units = [unit for page in PAGES for unit in code_units(page)]
    assert len(make_calls(units)) > 20 and len(cli_calls(units)) > 10


def test_reading_the_options_from_source_agrees_with_argparse():
    """The static reading against the real parser of `python -m pipeline` (cheap to import: no
    Prefect, no torch)."""
    from pipeline.__main__ import parser

    top = parser()
    subparsers = next(action for action in top._actions if action.choices and hasattr(action, "add_parser"))
    real = {None: {s for a in top._actions for s in a.option_strings}}
    real |= {name: {s for a in sub._actions for s in a.option_strings} for name, sub in subparsers.choices.items()}
    assert cli_options(ROOT / "pipeline/__main__.py") == real


def test_a_wrong_command_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `make runn`, then `python -m pipeline retrain --bse main` and `python -m pipeline rerun`;\n"
        "```bash\nmake bench BENCH_FLAGS=--quik   # a comment with --nothing\n"
        "python -m classifier.training.predict models/model.pth digit.png --top-k 3 | head\n```\n")
    units = code_units(page)
    assert [(t, a) for t, a, _ in make_calls(units)] == [("runn", {}), ("bench", {"BENCH_FLAGS": "--quik"})]
    problems = [p for name, words, _ in cli_calls(units) for p in unknown_options(cli_file(name), words)]
    assert problems == ["no option --bse for 'retrain'", "no command 'rerun' (it has retrain, run, server-stop)"]
    assert [p for cli in recipe_clis("bench", "BENCH_FLAGS") for p in unknown_options(cli, ["--quik"])] == \
        ["no option --quik"] * 3
    assert "--params" in cli_options(ROOT / "src/classifier/training/train.py")[None]  # from classifier.cli's stage_parser


def test_the_names_are_read_as_prefect_and_the_shell_spell_them():
    assert ENV_NAME.findall("PREFECT_API_URL=http://h:4200/api make run; echo $CLASSIFIER_FORGE_TOKEN classifier.data") == \
        ["PREFECT_API_URL", "CLASSIFIER_FORGE_TOKEN"]
    assert "train-pipeline" in flows() and "train_pipeline" not in flows()  # @flow(name=...), not the function's name
    assert deployments()["sweep-point-gpu"] == "sweep-point" and work_pools() == {"cpu", "gpu"}
    assert DOTTED.findall("prefect event emit classifier.data.updated --resource-id classifier.data") == \
        ["classifier.data.updated", "classifier.data"]
    assert python_name_exists("classifier.training.model.to_device") and not python_name_exists("classifier.model.promoted")
