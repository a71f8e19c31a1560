"""The report's "Recipe (K seeds)" section: the base's params and the head's, each trained with the
training seeds 1..K on the same split, judged seed by seed (classifier.judging.compare.judge_recipe).

    python -m pipeline.report --base main --seeds 5      (make pr-report SEEDS=5)

A recipe is the params a training reads (top-level `seed`, `data`, `model`, `train`); both sides
train with the same code (the workspace's, or in CI the base's), so a pull request that changes only
params is judged on exactly its change, and one that changes code shows that in the model verdict. Each training is
a DVC experiment (`dvc exp run -S ++train.seed=S`, `save.min_accuracy` 0 since nothing is
published), named `recipe-<key>-...`, where the key hashes the recipe and the training and
evaluation code: a recipe's seeds are trained once and found again by the next report, in this
clone's `refs/exps` or, fetched first, the git origin's (`dvc exp push origin` sends them there).
The tables judged are each experiment's committed `metrics/predictions.csv`.

In CI (`--check-head`, `make pr-report SEEDS=K`) nothing of the pull request runs and nothing it
could have written is read: each seed is trained here by the BASE's `classifier.training.train` and
scored by its `classifier.training.evaluate` (the base's worktree first on PYTHONPATH) on the base's
prepared data, from each side's `params.yaml` with `train.seed` set (the base's params code validates
the head's); no experiment is looked up or fetched, since a contributor can push refs. A head recipe
that changes the split (`seed`, `data`) is not judged there: both sides train on the base's split.

Elsewhere (`python -m pipeline.report --seeds K`: the developer's own workspace and code), when
PREFECT_API_URL names a server whose `cpu` pool has a worker online, the missing seeds of each side
go to the workers as one sweep (`python -m pipeline.sweep`, a subprocess: the sweep and the report
are sibling rooms), whose workers train the deployed branch's code in their own clones, with every
key of the recipe set, and `dvc exp push origin`; otherwise here, one `dvc exp run --temp` after
another (the workspace is left as it is). An experiment counts for a recipe only when the params.yaml
it trained is that recipe. Either way each training's progress is a line on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from classifier.judging.compare import (
    HIGHER_IS_BETTER, LABELS, RecipeError, RecipeJudgement, changes_by_verdict, judge_recipe, read_predictions,
    seed_scores, seeds_for, seeds_problem,
)
from classifier.files import file_digest
from classifier.params import CompareParams
from pipeline.project import EVALUATION_PATH, PARAMS_PATH, PREDICTIONS_PATH, flatten
from pipeline.report.head import score
from pipeline.results import git
from pipeline.run.stages import read_dvc_yaml, stream

# The params a training reads: the recipe. `train.seed` is set per training, so it is not part of it.
RECIPE_SECTIONS = ("seed", "data", "model", "train")
# The stages whose code decides a seed's scores.
CODE_STAGES = ("train", "evaluate")
FIGURE = "recipe_seeds.png"
POOL = "cpu"
TRAINING_TIMEOUT_S = 3600.0


@dataclass
class RecipeSection:
    """What the section shows: the judgement, or why there is none, and where each seed came from."""

    seeds: list[int]
    judgement: RecipeJudgement | None = None
    problem: str | None = None
    lines: list[str] = field(default_factory=list)  # where each side's seeds came from
    figure: str | None = None
    model_verdict: str | None = None


def recipe_of(params: Mapping | None) -> dict:
    """The recipe's params, flattened (`train.learning_rate: 0.001`), without `train.seed`."""
    flat = {key: value for section in RECIPE_SECTIONS if section in (params or {})
            for key, value in flatten(section, params[section]).items()}
    flat.pop("train.seed", None)
    return flat


def code_digest(repo: Path) -> dict[str, str]:
    """The md5 of every file the training and evaluation stages depend on (folders, the data, excluded:
    the split is the recipe's `seed` and `data`)."""
    stages = read_dvc_yaml(repo)
    paths = sorted({path for stage in CODE_STAGES for path in _deps(stages.get(stage) or {})})
    return {path: file_digest(repo / path) for path in paths if (repo / path).is_file()}


def _deps(stage: Mapping) -> list[str]:
    return [next(iter(dep)) if isinstance(dep, Mapping) else str(dep) for dep in stage.get("deps") or []]


def recipe_key(recipe: Mapping, code: Mapping) -> str:
    text = json.dumps({"recipe": recipe, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def overrides(recipe: Mapping, workspace: Mapping) -> list[str]:
    """`dvc exp run -S` values that turn the workspace's params into `recipe` (Hydra grammar: `++` sets a key
    whether or not it is there, `~` removes one)."""
    changes = [f"++{key}={json.dumps(value)}" for key, value in recipe.items() if workspace.get(key, object()) != value]
    changes += [f"~{key}" for key in workspace if key not in recipe]
    return changes


def found_experiments(repo: Path, key: str, recipe: Mapping | None = None) -> dict[int, str]:
    """The training seed of each experiment of this recipe in `refs/exps`, and its commit. With `recipe`,
    only experiments whose params are that recipe count: a name is a claim, the params.yaml it trained is
    the fact."""
    refs = git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/").stdout.split("\n")
    found = {}
    for line in filter(None, refs):
        sha, ref = line.split(" ", 1)
        if not ref.rsplit("/", 1)[-1].startswith(f"recipe-{key}-"):
            continue
        params = yaml.safe_load(git(repo, "show", f"{sha}:{PARAMS_PATH}").stdout or "{}") or {}
        if recipe is not None and recipe_of(params) != dict(recipe):
            continue
        seed = (params.get("train") or {}).get("seed")
        if isinstance(seed, int):
            found.setdefault(seed, sha)
    return found


def fetch_from_origin(repo: Path) -> bool:
    """The origin's experiments, so a recipe trained for an earlier report is found; False when there is none."""
    if git(repo, "remote", "get-url", "origin").returncode != 0:
        return False
    return git(repo, "fetch", "--quiet", "origin", "+refs/exps/*:refs/exps/*").returncode == 0


def pool_has_workers(pool: str = POOL) -> bool:
    """A Prefect server is configured and `pool` has a worker online."""
    if not os.environ.get("PREFECT_API_URL"):
        return False
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return any(worker.status.value == "ONLINE" for worker in client.read_workers_for_work_pool(pool))
    except Exception:  # no server answering, no such pool: train here
        return False


def run_locally(repo: Path, key: str, changes: Sequence[str], seeds: Sequence[int], label: str,
                say: Callable[[str], None]) -> None:
    for number, seed in enumerate(seeds, start=1):
        name = f"recipe-{key}-seed-{seed}"
        args = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name, "-S", f"++train.seed={seed}",
                "-S", "save.min_accuracy=0", *(flag for change in changes for flag in ("-S", change))]
        say(f"recipe: {label} seed {seed} ({number}/{len(seeds)}): dvc exp run -n {name} ...")
        started = time.monotonic()

        def show(line: str) -> None:
            # One line per stage and per epoch, not DVC's every line.
            if " epoch " in line or line.startswith("Running stage"):
                say(f"recipe:   {label} seed {seed}: {line.strip()}")

        code, lines = stream(args, repo, show, TRAINING_TIMEOUT_S, "dvc exp run")
        if code != 0:
            raise RecipeError(f"the {label}'s training with seed {seed} failed (dvc exp run exit {code}): "
                              + " | ".join(lines[-5:]))
        say(f"recipe: {label} seed {seed} done in {time.monotonic() - started:.0f} s")


def run_on_workers(repo: Path, key: str, changes: Sequence[str], seeds: Sequence[int], label: str,
                   say: Callable[[str], None]) -> None:
    """The missing seeds as one sweep on the pool's workers; their experiments come back through the origin."""
    grid = ["-S", "++train.seed=" + ",".join(map(str, seeds)), "-S", "save.min_accuracy=0"]
    grid += [flag for change in changes for flag in ("-S", change)]
    say(f"recipe: {label}: {len(seeds)} seed(s) to the {POOL} pool's workers as one sweep")
    # A name of its own per sweep: a worker refuses an experiment name its baseline already has.
    name = f"recipe-{key}-sweep{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    code, lines = stream([sys.executable, "-m", "pipeline.sweep", *grid, "--name", name],
                         repo, lambda line: say(f"recipe:   {line.rstrip()}"), TRAINING_TIMEOUT_S, "sweep")
    if code != 0:
        raise RecipeError(f"the {label}'s sweep failed (exit {code}): " + " | ".join(lines[-3:]))
    fetch_from_origin(repo)


def train_with_base_code(tree: Path, prepared: Path, params: Mapping, seeds: Sequence[int], label: str,
                         scratch: Path, say: Callable[[str], None]) -> tuple[dict[int, pd.DataFrame], set[str]]:
    """CI's own trainings: `params` with each `train.seed`, trained by the base's `classifier.training.train`
    on the base's `prepared` data and scored by the base's `classifier.training.evaluate`; each seed's
    per-example table and the test fingerprints they were scored on."""
    tables, fingerprints = {}, set()
    for number, seed in enumerate(seeds, start=1):
        where = scratch / f"{label}-seed-{seed}"
        where.mkdir(parents=True)
        seeded = {**params, "train": {**(params.get("train") or {}), "seed": seed}}
        (where / PARAMS_PATH).write_text(yaml.safe_dump(seeded, sort_keys=False), encoding="utf-8")
        model, card, history = where / "model.pth", where / "model.json", where / "history.csv"
        say(f"recipe: {label} seed {seed} ({number}/{len(seeds)}): the base's train and evaluate ...")
        started = time.monotonic()

        def show(line: str) -> None:
            if " epoch " in line:
                say(f"recipe:   {label} seed {seed}: {line.strip()}")

        train = [sys.executable, "-P", "-m", "classifier.training.train", str(prepared), str(model), str(card),
                 str(history), "--params", str(where / PARAMS_PATH)]
        code, lines = stream(train, tree, show, TRAINING_TIMEOUT_S, "train", {"PYTHONPATH": str(tree / "src")})
        if code != 0:
            raise RecipeError(f"the {label}'s training with seed {seed} failed (the base's train, exit {code}): "
                              + " | ".join(lines[-3:]))
        if (failed := score(tree, prepared, model, card, where)) is not None:
            raise RecipeError(f"the {label}'s seed {seed} could not be scored (the base's evaluate): {failed}")
        tables[seed] = read_predictions((where / PREDICTIONS_PATH).read_text(encoding="utf-8"),
                                        f"the {label}'s seed {seed}")
        fingerprints.add(str(json.loads((where / EVALUATION_PATH).read_text(encoding="utf-8")).get("test_fingerprint")))
        say(f"recipe: {label} seed {seed} done in {time.monotonic() - started:.0f} s")
    return tables, fingerprints


def side_tables(repo: Path, found: Mapping[int, str], seeds: Sequence[int]) -> tuple[dict[int, pd.DataFrame], set[str]]:
    tables, fingerprints = {}, set()
    for seed in seeds:
        sha = found[seed]
        text = git(repo, "show", f"{sha}:{PREDICTIONS_PATH}").stdout
        tables[seed] = read_predictions(text, f"{PREDICTIONS_PATH} of experiment {sha[:7]} (seed {seed})")
        evaluation = json.loads(git(repo, "show", f"{sha}:{EVALUATION_PATH}").stdout or "{}")
        fingerprints.add(str(evaluation.get("test_fingerprint")))
    return tables, fingerprints


def recipe_section(repo: Path, base_sha: str | None, policy: CompareParams | None, count: int, out_dir: Path,
                   model_verdict: str | None = None, say: Callable[[str], None] = lambda line: None,
                   base_tree: Path | None = None, prepared: Path | None = None) -> RecipeSection:
    """K seeds of the base's recipe and K of the workspace's, trained where missing, judged by seed;
    `policy` is the base's. With `base_tree` (CI), every seed is trained by the base's code there, on its
    `prepared` data (train_with_base_code). A training that fails, or results that cannot be read, give the
    reason."""
    section = RecipeSection(seeds=seeds_for(count), model_verdict=model_verdict)
    if problem := seeds_problem(count):
        section.problem = problem
        return section
    base_params = yaml.safe_load(git(repo, "show", f"{base_sha}:{PARAMS_PATH}").stdout or "null") if base_sha else None
    try:
        if base_tree is not None:
            return _judged_by_base(section, repo, base_params, policy, out_dir, say, base_tree, prepared)
        return _judged(section, repo, base_params, policy, out_dir, say)
    except (RecipeError, ValueError) as error:  # PredictionsError is a ValueError
        section.problem = str(error).rstrip(".")
        return section


def _judged_by_base(section: RecipeSection, repo: Path, base_params: Mapping | None, policy: CompareParams | None,
                    out_dir: Path, say: Callable[[str], None], tree: Path, prepared: Path | None) -> RecipeSection:
    if base_params is None or policy is None or prepared is None:
        section.problem = ("the base's params, `compare` policy or prepared data could not be read, so no recipe "
                           "can be judged")
        return section
    head_params = yaml.safe_load((repo / PARAMS_PATH).read_text(encoding="utf-8"))
    if not isinstance(head_params, Mapping):
        section.problem = f"the head's {PARAMS_PATH} is not a mapping"
        return section
    if any(base_params.get(key) != head_params.get(key) for key in ("seed", "data")):
        section.problem = ("the head changes the split (`seed` or `data`), and CI trains both recipes on the base's "
                           "split: the model verdict above judges that change")
        return section
    tables = {}
    with tempfile.TemporaryDirectory(prefix="recipe-") as scratch:
        for label, params in (("base", base_params), ("head", head_params)):
            tables[label], fingerprints = train_with_base_code(tree, prepared, params, section.seeds, label,
                                                               Path(scratch), say)
            if len(fingerprints) != 1:
                section.problem = f"the {label}'s seeds were scored on different test sets"
                return section
            section.lines.append(f"{label}: {len(section.seeds)} seed(s) trained here by the base's code on the base's "
                                 f"split ({label}'s `params.yaml`, `train.seed` set)")
    return _finish(section, tables["base"], tables["head"], policy, out_dir)


def _finish(section: RecipeSection, base: Mapping[int, pd.DataFrame], head: Mapping[int, pd.DataFrame],
            policy: CompareParams, out_dir: Path) -> RecipeSection:
    section.judgement = judge_recipe(seed_scores(base), seed_scores(head), policy)
    out_dir.mkdir(parents=True, exist_ok=True)
    draw_seeds(out_dir / FIGURE, section.judgement)
    section.figure = FIGURE
    return section


def _judged(section: RecipeSection, repo: Path, base_params: Mapping | None, policy: CompareParams | None,
            out_dir: Path, say: Callable[[str], None]) -> RecipeSection:
    if base_params is None or policy is None:
        section.problem = "the base's params or `compare` policy could not be read, so no recipe can be judged"
        return section
    workspace = recipe_of(yaml.safe_load((repo / PARAMS_PATH).read_text(encoding="utf-8")))
    code = code_digest(repo)
    on_workers = pool_has_workers()
    fetched = fetch_from_origin(repo)
    tables = {}
    for label, recipe in (("base", recipe_of(base_params)), ("head", workspace)):
        key = recipe_key(recipe, code)
        found = found_experiments(repo, key, recipe)
        missing = [seed for seed in section.seeds if seed not in found]
        reused = len(section.seeds) - len(missing)
        if missing:
            runner = run_on_workers if on_workers else run_locally
            # A worker trains the deployed branch's params.yaml, not this workspace's: it gets every key.
            changes = overrides(recipe, {} if on_workers else workspace)
            runner(repo, key, changes, missing, label, say)
            found = found_experiments(repo, key, recipe)
            if still := [seed for seed in missing if seed not in found]:
                raise RecipeError(f"the {label}'s seed(s) {', '.join(map(str, still))} left no experiment here"
                                  + ("" if fetched or not on_workers else " (no git origin to fetch them from)"))
        where = "on the pool's workers" if on_workers else "here"
        section.lines.append(f"{label}: recipe `{key}`, {reused} of {len(section.seeds)} seed(s) found from an "
                             f"earlier run" + (f", {len(missing)} trained {where}" if missing else ""))
        tables[label], fingerprints = side_tables(repo, found, section.seeds)
        if len(fingerprints) != 1:
            section.problem = f"the {label}'s seeds were scored on different test sets"
            return section
        tables[f"{label}_fingerprint"] = fingerprints.pop()
    if tables["base_fingerprint"] != tables["head_fingerprint"]:
        section.problem = ("the two recipes split the data differently (another `seed` or `data`), so their "
                           "seeds' scores cannot be paired")
        return section
    return _finish(section, tables["base"], tables["head"], policy, out_dir)


def draw_seeds(path: Path, judgement: RecipeJudgement) -> None:
    """Each metric's score per seed, base and head, a line joining each seed's pair."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.6, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    table = judgement.scores
    for axes, metric in zip(figure.subplots(1, len(judgement.metrics)), judgement.metrics):
        for _, row in table.iterrows():
            axes.plot([0, 1], [row[f"base_{metric.name}"], row[f"head_{metric.name}"]], color="tab:gray",
                      alpha=0.5, linewidth=1)
        axes.scatter([0] * len(table), table[f"base_{metric.name}"], color="tab:gray", label="base", zorder=3)
        axes.scatter([1] * len(table), table[f"head_{metric.name}"], color="tab:blue", label="head", zorder=3)
        axes.set_xticks([0, 1], ["base", "head"])
        axes.set_xlim(-0.4, 1.4)
        better = "higher" if HIGHER_IS_BETTER[metric.name] else "lower"
        axes.set_title(f"{LABELS[metric.name]} ({better} is better)")
        axes.grid(alpha=0.3)
    figure.suptitle(f"Test scores per training seed ({len(table)} seeds, a line per seed)")
    figure.savefig(path)


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def recipe_lines(section: RecipeSection, inline_images: bool = True, artifacts_url: str | None = None) -> list[str]:
    """The section's markdown."""
    lines = [f"### Recipe ({len(section.seeds)} seeds)", ""]
    if section.judgement is None:
        return lines + [f"No recipe verdict: {section.problem}.", ""]
    judgement = section.judgement
    groups = changes_by_verdict(judgement)
    lines += [f"**Recipe verdict: {judgement.verdict}** ({groups[0][1]})"
              + "".join(f"; {verdict} ({changes})" for verdict, changes in groups[1:]) + ".", ""]
    lines += [f"Both recipes (params) trained with training seeds {', '.join(map(str, judgement.seeds))} "
              "(`train.seed`) on the same split and scored on the same test images; each metric's change is "
              f"the mean over the seeds of head - base, seed by seed, with a {judgement.confidence:.0%} paired t "
              f"interval ({len(judgement.seeds) - 1} degrees of freedom), in the model verdict's words against the "
              "base's `min_effect`. *Cannot tell* here means more seeds are needed, not more test images.", ""]
    if section.model_verdict is not None:
        if section.model_verdict == str(judgement.verdict):
            lines += [f"The model verdict above agrees: {section.model_verdict}.", ""]
        else:
            lines += [f"The model verdict above says *{section.model_verdict}* for these two models (one training "
                      "of each recipe); over the seeds the recipe reads otherwise: a difference between the two "
                      "verdicts is the training noise of one draw.", ""]
    level = f"{judgement.confidence:.0%} interval"
    lines += [f"| metric | better | base mean | head mean | mean change | {level} | sd of the changes | "
              "smallest change that matters | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for metric in judgement.metrics:
        better = "higher" if HIGHER_IS_BETTER[metric.name] else "lower"
        verdict = f"**{metric.verdict}**" if metric.verdict.worse or metric.verdict.fails else str(metric.verdict)
        lines.append(f"| {metric.name} | {better} | {metric.base:.4f} | {metric.head:.4f} | {_signed(metric.delta)} | "
                     f"{_signed(metric.low)} to {_signed(metric.high)} | {metric.spread:.4f} | {metric.min_effect:g} | "
                     f"{verdict} |")
    lines += ["", "Each seed's test scores:", "",
              "| seed | " + " | ".join(f"base {LABELS[m.name]} | head {LABELS[m.name]}" for m in judgement.metrics) + " |",
              "|---|" + "---|---|" * len(judgement.metrics)]
    for _, row in judgement.scores.iterrows():
        lines.append(f"| {int(row['seed'])} | " + " | ".join(f"{row[f'base_{m.name}']:.4f} | {row[f'head_{m.name}']:.4f}"
                                                           for m in judgement.metrics) + " |")
    lines += [""] + [f"- {line}" for line in section.lines] + [""]
    if section.figure:
        if inline_images:
            lines += [f"![Test scores per training seed]({section.figure})", ""]
        else:
            where = f"[the workflow run's artifacts]({artifacts_url})" if artifacts_url else "the report's artifact"
            lines += [f"The per-seed scores' plot: `{section.figure}` in {where}.", ""]
    return lines
