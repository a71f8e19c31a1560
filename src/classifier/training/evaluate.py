"""Stage `evaluate`: score the trained model on the test split, example by example.

    python -m classifier.training.evaluate data/prepared models/candidate.pth models/candidate.json \
        models/candidate-metrics.json models/candidate-evaluation.json \
        models/candidate-predictions.csv models/candidate-per_class.csv

The candidate's results, cached by DVC beside it; the save stage publishes them to metrics/ with
the model (git-tracked, so a revision carries its published model's results and a later one can be
judged against it with no model and no rerun: classifier.judging.compare, pipeline.report), and leaves
metrics/ as it was when it refuses the candidate:

- metrics.json: numbers only (sample counts; test loss, accuracy, macro F1), for `dvc metrics`.
- evaluation.json: what was evaluated: dataset, class names, test count, and the test split's
  fingerprint, sha256 of its images then its labels, in order. Equal fingerprints mean the
  same images with the same labels in the same order, so two revisions' results pair up.
- predictions.csv: one row per test example, in order: `id` (a hash of the image's pixels,
  stable across runs), `actual` and `predicted` class names, and the example's cross-entropy
  `loss`. The `confusion` plot is drawn from its actual and predicted columns.
- per_class.csv: precision, recall, F1 and support per class, for a `dvc plots` bar chart.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from classifier.cli import run, stage_parser
from classifier.training.split import InMemorySplit, Normalization, load_prepared
from classifier.files import atomic_write_json, atomic_write_text
from classifier.data.images import pixel_hashes, split_fingerprint
from classifier.training.model import NeuralNetwork, logits_for, resolve_device, to_device, to_host
from classifier.training.serialization import load_file

log = logging.getLogger("evaluate")

DECIMALS = 6
# 64 bits of the image's sha256: ids stay short in the CSV, and a collision among a test
# split's images (below 1e-9 for a million of them) would only merge two ids, which the reader refuses.
ID_HEX_DIGITS = 16


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[actual, predicted]"""
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(confusion: torch.Tensor) -> list[dict[str, float]]:
    true_positives = confusion.diagonal().double()
    predicted = confusion.sum(dim=0).double()
    actual = confusion.sum(dim=1).double()
    # A class never predicted (or absent) has precision (or recall) 0, not NaN.
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, true_positives / actual.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return [
        {"precision": p, "recall": r, "f1": f, "support": int(s)}
        for p, r, f, s in zip(precision.tolist(), recall.tolist(), f1.tolist(), actual.tolist())
    ]


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[dict, list[dict], torch.Tensor, torch.Tensor]:
    """The summary, per-class scores, and each example's prediction and cross-entropy loss."""
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    predictions = logits.argmax(dim=1)
    per_class = per_class_scores(confusion_matrix(labels, predictions, num_classes))
    summary = {
        "loss": round(losses.mean().item(), DECIMALS),
        "accuracy": round((predictions == labels).double().mean().item(), DECIMALS),
        # Over every class the data set has, absent ones counting 0 (scikit-learn's labels=..., zero_division=0).
        "macro_f1": round(sum(row["f1"] for row in per_class) / num_classes, DECIMALS),
    }
    return summary, per_class, predictions, losses


def test_logits(model: NeuralNetwork, test: InMemorySplit, normalization: Normalization, device: torch.device) -> torch.Tensor:
    """The split's logits, computed on `device` and brought back to the host, where the tables are made."""
    logits = logits_for(to_device(model, device), to_device(test.images, device), normalization, device)
    return to_host(logits)


def example_ids(images: np.ndarray) -> list[str]:
    """A content id per image, so an id names the same picture in any run; repeats get -2, -3, ..."""
    ids, seen = [], {}
    for digest in (full[:ID_HEX_DIGITS] for full in pixel_hashes(images)):
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids


def predictions_csv(ids: Sequence[str], classes: Sequence[str], labels: torch.Tensor, predictions: torch.Tensor,
                    losses: torch.Tensor) -> str:
    names = np.asarray(classes, dtype=object)
    table = pd.DataFrame({"id": ids, "actual": names[labels.numpy()], "predicted": names[predictions.numpy()],
                          "loss": losses.double().numpy()})
    return table.to_csv(index=False, float_format=f"%.{DECIMALS}f", lineterminator="\n")


def per_class_csv(classes: Sequence[str], per_class: Sequence[dict]) -> str:
    table = pd.DataFrame(per_class, columns=["precision", "recall", "f1", "support"])
    table.insert(0, "class", list(classes))
    return table.to_csv(index=False, float_format=f"%.{DECIMALS}f", lineterminator="\n")


def evaluation_record(meta: dict, fingerprint: str) -> dict:
    return {"dataset": meta["dataset"], "classes": list(meta["classes"]), "test_samples": meta["samples"]["test"],
            "test_fingerprint": fingerprint}


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("evaluate", __doc__.splitlines()[0])
    for name, help_text in [
        ("prepared_dir", "folder written by the prepare stage"),
        ("candidate_path", "state_dict written by the train stage"),
        ("candidate_info_path", "its architecture, as JSON, written by the train stage"),
        ("metrics_path", "metrics JSON to write (numbers only)"),
        ("evaluation_path", "JSON to write: dataset, classes and the test split's fingerprint"),
        ("predictions_path", "per-example (id, actual, predicted, loss) CSV to write"),
        ("per_class_path", "per-class precision/recall/F1 CSV to write"),
    ]:
        parser.add_argument(name, type=Path, help=help_text)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"),
                        help="where the logits are computed (default: %(default)s; the tables are made on the CPU)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device, setting="evaluate --device")

    info = json.loads(args.candidate_info_path.read_text())
    model = NeuralNetwork(**info["architecture"])
    model.load_state_dict(load_file(args.candidate_path))
    data = load_prepared(args.prepared_dir, ("test",))
    test = data.splits["test"]
    # The model's own normalisation (its facts, or its card's): the candidate's equals this split's, and a
    # published model re-scored on newer data (the retrain gate) must see inputs as it was trained to.
    normalization = Normalization(info["normalization"]["mean"], info["normalization"]["std"])
    logits = test_logits(model, test, normalization, device)
    summary, per_class, predictions, losses = score(logits, test.labels, data.num_classes)

    classes = data.meta["classes"]
    images = test.images.numpy()
    fingerprint = split_fingerprint(images, test.labels.numpy())
    atomic_write_json(args.metrics_path, {"samples": data.meta["samples"], "test": summary})
    atomic_write_json(args.evaluation_path, evaluation_record(data.meta, fingerprint))
    atomic_write_text(args.predictions_path, predictions_csv(example_ids(images), classes, test.labels, predictions, losses))
    atomic_write_text(args.per_class_path, per_class_csv(classes, per_class))
    log.info("test loss %.4f  accuracy %.4f  macro F1 %.4f  (test set %s)", summary["loss"], summary["accuracy"],
             summary["macro_f1"], fingerprint[:19])


if __name__ == "__main__":
    sys.exit(run(main))
