"""Does the `compare` policy fit the data? Equally good models, trained with different seeds on
the prepared data, judged by the retrain gate against each other.

    python benchmarks/gate_resolution.py data/prepared [--models 8] [--min-effect 0.005,0.005,0.02 ...]

Trains `--models` models that differ only in their initial weights and shuffle order (torch seeds
1000, 1001, ...; same split, same params.yaml otherwise, one thread), then runs
`classifier.judging.compare.gate` on every ordered pair under params.yaml's policy and each `--min-effect`
triple (accuracy, macro F1, loss), with `compare.keep_out_measurably_worse` off, as params.yaml
sets it, and on every metric. The gate's non-inferiority is the report's own pass, so the share
promoted is also the share whose pull request would pass `--fail-on-regression`. An equally good challenger should be promoted nearly always: the
share promoted is what the policy does to a retrain that changed nothing that matters. Also prints
how the pairs' verdicts read, how often each metric is measurably worse, the discordant pairs and
each metric's resolution (the margin an equally good challenger clears 95% of the time), median
and largest over the pairs. Needs `dvc repro prepare` first (data/prepared).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from classifier.judging.compare import METRICS, gate
from classifier.training.split import load_prepared
from classifier.training.evaluate import score
from classifier.training.model import NeuralNetwork, logits_for
from classifier.params import CompareParams, load_params
from classifier.training.train import fit

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOST = torch.device("cpu")


def equally_good_tables(prepared: Path, params, models: int) -> list[pd.DataFrame]:
    """Per-example test results of `models` models that differ only in their torch seed."""
    data = load_prepared(prepared, ("train", "val", "test"))
    train, val, test = (data.splits[name] for name in ("train", "val", "test"))
    classes = np.asarray(data.meta["classes"], dtype=object)
    tables = []
    for seed in range(1000, 1000 + models):
        started = time.perf_counter()
        torch.manual_seed(seed)
        model = NeuralNetwork(data.input_size, params.model.hidden_sizes, data.num_classes)
        fit(model, train, val, data.normalization, params.train, seed, HOST)
        summary, _, predicted, losses = score(logits_for(model, test.images, data.normalization, HOST),
                                              test.labels, data.num_classes)
        tables.append(pd.DataFrame({"id": [str(index) for index in range(len(test))],
                                    "actual": classes[test.labels.numpy()], "predicted": classes[predicted.numpy()],
                                    "loss": losses.double().numpy()}))
        print(f"model {seed}: accuracy {summary['accuracy']:.4f}, macro F1 {summary['macro_f1']:.4f}, "
              f"loss {summary['loss']:.4f} ({time.perf_counter() - started:.1f} s)", flush=True)
    return tables


def judge_pairs(tables: list[pd.DataFrame], policy: CompareParams) -> None:
    decisions = [gate(tables[a], tables[b], policy, None) for a, b in itertools.permutations(range(len(tables)), 2)]
    effect = policy.min_effect
    print(f"\nmin_effect accuracy {effect.accuracy:g}, macro F1 {effect.macro_f1:g}, loss {effect.loss:g}:")
    for kept_out in ([], policy.keep_out_measurably_worse, list(METRICS)):
        # The same decisions under another compare.keep_out_measurably_worse: the other checks, and
        # no metric of that list measurably worse.
        promoted = sum(all(passed for check, passed in decision.checks.items()
                           if not check.endswith("not measurably worse"))
                       and not any(metric.verdict.worse for metric in decision.judgement.metrics
                                   if metric.name in kept_out)
                       for decision in decisions)
        print(f"  keep_out_measurably_worse [{', '.join(kept_out)}]: {promoted} of {len(decisions)} equally good "
              f"challengers promoted ({promoted / len(decisions):.0%})")
    verdicts = Counter(str(decision.judgement.verdict) for decision in decisions)
    print("  verdicts: " + "; ".join(f"{verdict} {count}" for verdict, count in verdicts.most_common()))
    for name in METRICS:
        worse = sum(metric.verdict.worse for decision in decisions for metric in decision.judgement.metrics
                    if metric.name == name)
        print(f"  {name} measurably worse in {worse} of {len(decisions)}")
    discordant = [decision.paired.base_only + decision.paired.head_only for decision in decisions]
    print(f"  discordant test images per pair: median {statistics.median(discordant):g}, "
          f"range {min(discordant)}-{max(discordant)}")
    for index, name in enumerate(METRICS):
        margins = [decision.resolution[index].margin for decision in decisions]
        print(f"  {name} resolves {statistics.median(margins):.4f} (median), {max(margins):.4f} (largest)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="the prepare stage's folder (data/prepared)")
    parser.add_argument("--models", type=int, default=8, help="equally good models to train (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--min-effect", action="append", default=[], metavar="ACCURACY,MACRO_F1,LOSS",
                        help="another policy to judge by, besides params.yaml's (repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params(args.params)
    tables = equally_good_tables(args.prepared, params, args.models)
    policies = [params.compare]
    for triple in args.min_effect:
        accuracy, macro_f1, loss = (float(value) for value in triple.split(","))
        policies.append(params.compare.model_copy(update={"min_effect": params.compare.min_effect.model_copy(
            update={"accuracy": accuracy, "macro_f1": macro_f1, "loss": loss})}))
    for policy in policies:
        judge_pairs(tables, policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
