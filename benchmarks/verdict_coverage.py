"""Do the verdicts' intervals cover the true change, and does the gate promote an equally good challenger?

    python benchmarks/verdict_coverage.py [--replications 2000] [--sizes 1051,10000] [--strict]
    python benchmarks/verdict_coverage.py --part recipe [--seeds 3,5,10]

Known paired populations, shaped like the default data: 10 classes, the champion right on 95.5%
of test images (class difficulty from 0.5 to 1.5 times the mean), both models wrong on most of the
same images. The challenger's accuracy change is 0, -0.0125, -0.025 or -0.05, with its
disagreements *balanced* (1.25% of images won by the challenger, the change's worth more lost),
*lopsided* (0.2% won) or *one-sided* (none won). Per-example losses are heavy-tailed like the real
champion's: right images about 0.02, wrong ones lognormal around 3 (up to about 20), jittered
without bias between equally good models; an image that changes sides moves from about 0.45 to
about 1.9. The true change of each metric is computed from the population, not sampled.

For each population and test-split size (`--sizes`), `--replications` test splits are drawn, both
models' per-example tables judged with the intervals `classifier.judging.judgement.paired_intervals` uses
(called on arrays of replications at once) and decided with the gate's own checks
(`classifier.judging.gate_rule.gate_checks`) under params.yaml's `compare` policy; the first replication of
each is also run through `classifier.judging.compare.gate` itself, whose intervals must be the same. Prints
a markdown table: each interval's coverage (target >= 0.93 at alpha 0.05), the share promoted
(target >= 0.90 where the change is 0) and the share whose verdict is *cannot tell*. `--strict`
exits 1 on a missed target.

`--part recipe` (also in the default `--part all`, after the model table): the recipe verdict's
paired t interval over K training seeds (classifier.judging.recipe). Known per-seed score populations:
each recipe's score is its mean plus seed noise, a seed's base and head noise correlated (the same
`train.seed` draws the same initial weights for the same architecture) or not, the noise *normal*
(sd 0.008, as accuracy over seeds on the default data), *weak seed* (the same, and one seed in 8
scoring 0.025 lower, as docs/retraining.md's eight seeds did) or *heavy-tailed* (Student's t with 3
degrees of freedom). The true change is the difference of the population means. For K = 3, 5, 10
(`--seeds`) it prints each interval's coverage (target >= 0.93 at alpha 0.05) and the share of
verdicts that are *cannot tell*; the first replication of each row goes through
`classifier.judging.compare.judge_recipe` itself, whose interval must be the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from classifier.judging.compare import gate, judge_recipe
from classifier.judging.gate_rule import gate_checks
from classifier.judging.intervals import accuracy_interval, macro_f1, macro_f1_interval, mean_interval
from classifier.judging.judgement import MetricVerdict
from classifier.params import CompareParams, load_params
from classifier.judging.verdicts import METRICS, metric_verdict, overall

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
BASE_ACCURACY = 0.955
CHANGES = (0.0, -0.0125, -0.025, -0.05)
# The share of images won by the challenger (right only for it), per shape.
WON = {"balanced": 0.0125, "lopsided": 0.002, "one-sided": 0.0}
# Of the images both get wrong, the share where they also agree on the wrong class.
SAME_MISTAKE = 0.7
# Each image's kind: right for both, right only for the champion, only for the challenger, neither.
BOTH_RIGHT, BASE_ONLY, HEAD_ONLY, BOTH_WRONG = range(4)
# Lognormal (log median, sigma) of an image's loss where it changes sides: right (borderline) and wrong.
BORDERLINE_RIGHT, BORDERLINE_WRONG = (np.log(0.4), 0.5), (np.log(1.5), 0.7)
COVERAGE_TARGET, PROMOTION_TARGET = 0.93, 0.90
# Rows of replications drawn at once: bounds memory at n = 10,000.
BLOCK = 250


@dataclass(frozen=True)
class Population:
    """Every (actual, champion predicted, challenger predicted) cell's probability and kind, and the true changes."""

    probabilities: np.ndarray  # over cells (actual * C + base) * C + head
    kinds: np.ndarray
    changes: dict[str, float]  # head - base per metric, in the population


def _lognormal_mean(log_median: float, sigma: float) -> float:
    return float(np.exp(log_median + sigma**2 / 2))


def population(change: float, shape: str) -> Population:
    """The paired population with accuracy change `change` and disagreements shaped `shape`."""
    difficulty = np.linspace(0.5, 1.5, CLASSES)  # mean 1, so the class-weighted shares are the nominal ones
    won = WON[shape]
    lost = won - change
    both_wrong = 1 - BASE_ACCURACY - won
    probabilities = np.zeros((CLASSES,) * 3)
    kinds = np.zeros((CLASSES,) * 3, dtype=np.int64)
    for actual in range(CLASSES):
        weight = difficulty[actual] / CLASSES  # classes equally frequent, errors by difficulty
        wrong = [(actual + step) % CLASSES for step in range(1, CLASSES)]
        probabilities[actual, actual, actual] = 1 / CLASSES - weight * (lost + won + both_wrong)
        for mistake in wrong:
            probabilities[actual, actual, mistake] = weight * lost / len(wrong)
            kinds[actual, actual, mistake] = BASE_ONLY
            probabilities[actual, mistake, actual] = weight * won / len(wrong)
            kinds[actual, mistake, actual] = HEAD_ONLY
            for other in wrong:
                share = SAME_MISTAKE if other == mistake else (1 - SAME_MISTAKE) / (len(wrong) - 1)
                probabilities[actual, mistake, other] = weight * both_wrong / len(wrong) * share
                kinds[actual, mistake, other] = BOTH_WRONG
    by_side = [probabilities.sum(axis=2), probabilities.sum(axis=1)]  # [actual, predicted] of each side
    loss_step = _lognormal_mean(*BORDERLINE_WRONG) - _lognormal_mean(*BORDERLINE_RIGHT)
    changes = {"accuracy": float(np.trace(by_side[1]) - np.trace(by_side[0])),
               "macro_f1": float(macro_f1(by_side[1]) - macro_f1(by_side[0])),
               "loss": (lost - won) * loss_step}  # the jitter of the other images is unbiased
    return Population(probabilities.ravel(), kinds.ravel(), changes)


def draw(rng: np.random.Generator, people: Population, n: int, replications: int):
    """`replications` test splits of n images: the cells (replications x n) and both sides' losses."""
    cells = rng.choice(len(people.probabilities), size=(replications, n), p=people.probabilities)
    kind = people.kinds[cells]
    base_loss, head_loss = np.empty(cells.shape), np.empty(cells.shape)
    right, wrong = kind == BOTH_RIGHT, kind == BOTH_WRONG
    base_loss[right] = rng.exponential(0.02, right.sum())
    head_loss[right] = base_loss[right] * rng.lognormal(-0.5, 1.0, right.sum())  # mean-one jitter
    base_loss[wrong] = rng.lognormal(np.log(3), 0.8, wrong.sum())
    head_loss[wrong] = base_loss[wrong] * rng.lognormal(-0.08, 0.4, wrong.sum())
    for side_kind, (base_shape, head_shape) in ((BASE_ONLY, (BORDERLINE_RIGHT, BORDERLINE_WRONG)),
                                                (HEAD_ONLY, (BORDERLINE_WRONG, BORDERLINE_RIGHT))):
        chosen = kind == side_kind
        base_loss[chosen] = rng.lognormal(*base_shape, chosen.sum())
        head_loss[chosen] = rng.lognormal(*head_shape, chosen.sum())
    return cells, base_loss, head_loss


def _split(cells: np.ndarray):
    return cells // CLASSES**2, cells // CLASSES % CLASSES, cells % CLASSES


def tables_of(cells: np.ndarray, base_loss: np.ndarray, head_loss: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One replication as the champion's and the challenger's per-example tables."""
    actual, base, head = (part.astype(str) for part in _split(cells))
    ids = [f"{index:06d}" for index in range(len(cells))]
    return (pd.DataFrame({"id": ids, "actual": actual, "predicted": base, "loss": base_loss}),
            pd.DataFrame({"id": ids, "actual": actual, "predicted": head, "loss": head_loss}))


def judge_block(cells: np.ndarray, base_loss: np.ndarray, head_loss: np.ndarray, policy: CompareParams):
    """Per replication: each metric's (low, high) interval and the gate's decision and overall verdict."""
    confidence = 1 - policy.alpha
    actual, base, head = _split(cells)
    n = cells.shape[1]
    base_right, head_right = actual == base, actual == head
    base_only, head_only = np.sum(base_right & ~head_right, axis=1), np.sum(~base_right & head_right, axis=1)
    ends = {"accuracy": np.stack(accuracy_interval(base_only, head_only, n, confidence), axis=1),
            "loss": np.stack(mean_interval(head_loss - base_loss, confidence), axis=1),
            "macro_f1": np.array([macro_f1_interval(actual[row], base[row], head[row], CLASSES, confidence)
                                  for row in range(len(cells))])}
    offsets = (np.arange(len(cells)) * CLASSES**2)[:, None]
    points = {}
    for side, predicted, loss in (("base", base, base_loss), ("head", head, head_loss)):
        confusion = np.bincount((actual * CLASSES + predicted + offsets).ravel(), minlength=len(cells) * CLASSES**2)
        points[side] = {"accuracy": np.mean(actual == predicted, axis=1), "loss": loss.mean(axis=1),
                        "macro_f1": macro_f1(confusion.reshape(-1, CLASSES, CLASSES).astype(float))}
    min_effect = policy.min_effect.model_dump()
    promoted, verdicts = [], []
    for row in range(len(cells)):
        metrics = tuple(
            MetricVerdict(name, points["base"][name][row], points["head"][name][row],
                          points["head"][name][row] - points["base"][name][row], *ends[name][row], min_effect[name],
                          metric_verdict(name, *ends[name][row], min_effect[name]))
            for name in METRICS)
        floor = points["base"]["accuracy"][row] - min_effect["accuracy"]  # no record yet: the champion's
        promoted.append(all(gate_checks(metrics, policy, floor).values()))
        verdicts.append(overall([metric.verdict for metric in metrics]))
    return ends, np.array(promoted), verdicts


def measure(people: Population, n: int, replications: int, policy: CompareParams, rng: np.random.Generator) -> dict:
    """Coverage per metric, the share promoted and the share judged *cannot tell*, over the replications."""
    covered = {name: 0 for name in METRICS}
    promoted = cannot_tell = 0
    for start in range(0, replications, BLOCK):
        cells, base_loss, head_loss = draw(rng, people, n, min(BLOCK, replications - start))
        ends, promotes, verdicts = judge_block(cells, base_loss, head_loss, policy)
        if start == 0:  # the same intervals as the gate computes on the tables themselves
            decision = gate(*tables_of(cells[0], base_loss[0], head_loss[0]), policy, None)
            for metric in decision.judgement.metrics:
                assert np.allclose((metric.low, metric.high), ends[metric.name][0]), metric
            assert decision.promote == promotes[0]
        for name in METRICS:
            truth = people.changes[name]
            covered[name] += int(np.sum((ends[name][:, 0] <= truth) & (truth <= ends[name][:, 1])))
        promoted += int(promotes.sum())
        cannot_tell += sum(verdict.startswith("cannot tell") for verdict in verdicts)
    return {**{name: covered[name] / replications for name in METRICS},
            "promoted": promoted / replications, "cannot_tell": cannot_tell / replications}


# The recipe part: per-seed noise of a score (sd), the shapes, correlations and true changes simulated.
SEED_SD = 0.008
SEED_SHAPES = ("normal", "weak seed", "heavy-tailed")
SEED_CORRELATIONS = (0.0, 0.5)
RECIPE_CHANGES = (0.0, -0.0125, -0.025)
WEAK_SHARE, WEAK_DROP = 1 / 8, 0.025


def seed_noise(rng: np.random.Generator, shape: str, size: tuple[int, ...]) -> np.ndarray:
    """Per-seed deviations from a recipe's mean score, mean 0 (so the true change is the means' difference)."""
    if shape == "normal":
        return rng.normal(0.0, SEED_SD, size)
    if shape == "weak seed":
        weak = rng.random(size) < WEAK_SHARE
        return rng.normal(0.0, SEED_SD, size) - WEAK_DROP * (weak - WEAK_SHARE)
    return SEED_SD * rng.standard_t(3, size) / np.sqrt(3.0)  # t(3) scaled to sd SEED_SD


def recipe_measure(shape: str, correlation: float, change: float, seeds: int, replications: int,
                   policy: CompareParams, rng: np.random.Generator) -> dict:
    """Coverage of the recipe interval of an accuracy change and the share judged *cannot tell*."""
    shared = seed_noise(rng, shape, (replications, seeds))
    own = [seed_noise(rng, shape, (replications, seeds)) for _ in range(2)]
    # A seed's noise on each side: `correlation` of it shared (the same seed), the rest its own.
    weight_shared, weight_own = np.sqrt(correlation), np.sqrt(1 - correlation)
    base = BASE_ACCURACY + weight_shared * shared + weight_own * own[0]
    head = BASE_ACCURACY + change + weight_shared * shared + weight_own * own[1]
    low, high = mean_interval(head - base, 1 - policy.alpha)
    first = pd.DataFrame({"seed": range(seeds), "accuracy": base[0], "macro_f1": base[0], "loss": 0.2})
    judged = judge_recipe(first, first.assign(accuracy=head[0]), policy).metrics[0]
    assert np.allclose((judged.low, judged.high), (low[0], high[0])), judged
    min_effect = policy.min_effect.accuracy
    cannot_tell = sum(metric_verdict("accuracy", lo, hi, min_effect).startswith("cannot tell")
                      for lo, hi in zip(low, high))
    return {"coverage": float(np.mean((low <= change) & (change <= high))), "cannot_tell": cannot_tell / replications}


def recipe_table(seed_counts: list[int], replications: int, policy: CompareParams, rng: np.random.Generator) -> list[str]:
    """Print the recipe interval's coverage table; returns the missed targets."""
    print(f"\nRecipe verdict: {replications:,} replications per row; per-seed sd {SEED_SD:g}; accuracy "
          f"min_effect {policy.min_effect.accuracy:g}\n")
    print("| K seeds | noise | seed correlation | accuracy change | coverage | cannot tell |")
    print("|--:|---|--:|--:|--:|--:|")
    missed = []
    for seeds in seed_counts:
        for shape in SEED_SHAPES:
            for correlation in SEED_CORRELATIONS:
                for change in RECIPE_CHANGES:
                    result = recipe_measure(shape, correlation, change, seeds, replications, policy, rng)
                    print(f"| {seeds} | {shape} | {correlation:g} | {change:+.4f} | {result['coverage']:.3f} | "
                          f"{result['cannot_tell']:.1%} |", flush=True)
                    if result["coverage"] < COVERAGE_TARGET:
                        missed.append(f"the recipe interval covers {result['coverage']:.3f} at K {seeds}, {shape}, "
                                      f"correlation {correlation:g}, {change:+}")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=2000, help="test splits per cell (default: %(default)s)")
    parser.add_argument("--sizes", default="1051,10000", help="test-split sizes n (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--part", choices=("all", "model", "recipe"), default="all",
                        help="the model verdict's table, the recipe verdict's, or both (default: %(default)s)")
    parser.add_argument("--seeds", default="3,5,10", help="the recipe part's seed counts K (default: %(default)s)")
    parser.add_argument("--recipe-replications", type=int, default=20000,
                        help="replications per row of the recipe part (default: %(default)s)")
    args = parser.parse_args(argv)
    policy = load_params(args.params).compare
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    missed = []
    if args.part in ("all", "model"):
        missed += model_table(args, policy, rng)
    if args.part in ("all", "recipe"):
        missed += recipe_table([int(k) for k in args.seeds.split(",")], args.recipe_replications, policy, rng)
    print(f"\n{time.perf_counter() - started:.0f} s")
    for line in missed:
        print(f"missed: {line}")
    return 1 if missed and args.strict else 0


def model_table(args, policy: CompareParams, rng: np.random.Generator) -> list[str]:
    """Print the model verdict's coverage table; returns the missed targets."""
    print(f"{args.replications:,} replications per row; alpha {policy.alpha:g}; min_effect "
          f"{policy.min_effect.accuracy:g} / {policy.min_effect.macro_f1:g} / {policy.min_effect.loss:g}\n")
    print("| n | disagreements | accuracy change | accuracy | macro F1 | loss | promoted | cannot tell |")
    print("|--:|---|--:|--:|--:|--:|--:|--:|")
    missed = []
    for n in (int(size) for size in args.sizes.split(",")):
        for shape in WON:
            for change in CHANGES:
                result = measure(population(change, shape), n, args.replications, policy, rng)
                print(f"| {n:,} | {shape} | {change:+.4f} | {result['accuracy']:.3f} | {result['macro_f1']:.3f} | "
                      f"{result['loss']:.3f} | {result['promoted']:.1%} | {result['cannot_tell']:.1%} |", flush=True)
                missed += [f"{name} covers {result[name]:.3f} at n {n}, {shape}, {change:+}" for name in METRICS
                           if result[name] < COVERAGE_TARGET]
                if change == 0 and result["promoted"] < PROMOTION_TARGET:
                    missed.append(f"{result['promoted']:.1%} of equally good challengers promoted at n {n}, {shape}")
    return missed


if __name__ == "__main__":
    sys.exit(main())
