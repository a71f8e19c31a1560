"""The model verdict and the recipe verdict side by side, on real trainings of the default data.

    python benchmarks/recipe_cases.py [--seeds 3] [--work /tmp/recipe-cases]

A clone of this repository's HEAD (its DVC cache shared with this checkout, so the committed
outputs check out instead of retraining) is the base; each case is a branch that changes params
(`train.epochs 10 -> 3`, `train.learning_rate 0.001 -> 0.0007`, `model.hidden_sizes [512, 512] ->
[512]`, and none). For each, the report's recipe section (pipeline.report.recipe) trains the K seeds
of each side that are not there yet, as DVC experiments (the base's once, for every case), and
judges them; the model verdict (classifier.judging.compare.judge_pair) is judged on each seed's pair of
models: what the report's verdict would read had both sides been trained with that seed. With
unchanged params both sides are the same experiments, so the model verdict is taken between
different seeds of the one recipe instead (seed 1 against 2, 2 against 3, ...): what a retrain of
unchanged params can read. Prints a markdown table, the time taken and the load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from classifier.judging.compare import headline, judge_pair, read_predictions
from classifier.params import load_params
from pipeline.project import PARAMS_PATH, PREDICTIONS_PATH
from pipeline.report.recipe import code_digest, found_experiments, recipe_key, recipe_of, recipe_section

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("`train.epochs 10 -> 3`", {"train.epochs": 3}),
    ("`train.learning_rate 0.001 -> 0.0007`", {"train.learning_rate": 0.0007}),
    ("`model.hidden_sizes [512, 512] -> [512]`", {"model.hidden_sizes": [512]}),
    ("unchanged params", {}),
]


def sh(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def set_params(repo: Path, changes: dict) -> None:
    params = yaml.safe_load((repo / PARAMS_PATH).read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (repo / PARAMS_PATH).write_text(yaml.safe_dump(params, sort_keys=False))


def table_of(repo: Path, sha: str):
    return read_predictions(sh(["git", "show", f"{sha}:{PREDICTIONS_PATH}"], repo))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recipe-cases"))
    args = parser.parse_args(argv)
    repo = args.work / "project"
    if not repo.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        sh(["git", "clone", "-q", str(PROJECT_ROOT), str(repo)], args.work)
        sh(["git", "config", "user.email", "bench@example.invalid"], repo)
        sh(["git", "config", "user.name", "bench"], repo)
        (repo / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {PROJECT_ROOT / '.dvc' / 'cache'}\n")
        sh([sys.executable, "-m", "dvc", "checkout", "--quiet"], repo)
    base_sha = sh(["git", "rev-parse", "HEAD"], repo).strip()
    policy = load_params(repo / PARAMS_PATH).compare
    started = time.monotonic()
    rows = []
    for name, changes in CASES:
        sh(["git", "checkout", "-q", "-B", f"case-{len(rows)}", base_sha], repo)
        if changes:
            set_params(repo, changes)
            sh(["git", "commit", "-q", "-am", name], repo)
        print(f"== {name}", flush=True)
        section = recipe_section(repo, base_sha, policy, args.seeds, args.work / f"out-{len(rows)}",
                                 say=lambda line: print(line, flush=True))
        if section.judgement is None:
            raise SystemExit(f"{name}: {section.problem}")
        code = code_digest(repo)
        base = found_experiments(repo, recipe_key(recipe_of(yaml.safe_load(sh(["git", "show", f"{base_sha}:{PARAMS_PATH}"], repo))), code))
        head = found_experiments(repo, recipe_key(recipe_of(yaml.safe_load((repo / PARAMS_PATH).read_text())), code))
        seeds = section.seeds
        pairs = ([(base[s], head[s]) for s in seeds] if changes else
                 [(base[s], base[seeds[(i + 1) % len(seeds)]]) for i, s in enumerate(seeds)])
        model = [headline(judge_pair(table_of(repo, b), table_of(repo, h), policy)) for b, h in pairs]
        words = Counter(text.split(" (")[0] for text in model)
        rows.append((name, model, words, headline(section.judgement), section.judgement))
        print(f"model verdicts: {model}\nrecipe verdict: {headline(section.judgement)}", flush=True)
    seconds = time.monotonic() - started
    print(f"\n| change | model verdict, seed by seed ({args.seeds} pairs) | recipe verdict ({args.seeds} seeds) |")
    print("|---|---|---|")
    for name, model, words, recipe, _ in rows:
        print(f"| {name} | " + "<br>".join(model) + f" | {recipe} |")
    print("\nper-metric recipe intervals:")
    for name, _, _, _, judgement in rows:
        print(name, "; ".join(f"{m.name} {m.delta:+.4f} [{m.low:+.4f}, {m.high:+.4f}] sd {m.spread:.4f}"
                              for m in judgement.metrics))
    print(f"\n{seconds:.0f} s; load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
