"""Stage `evaluate`: score the trained model on the test split.

    python -m classifier.evaluate data/prepared models/candidate.pth models/candidate.json \
        metrics/metrics.json metrics/confusion.csv metrics/per_class.csv

metrics.json (git-tracked) holds the dataset, sample counts and the test loss, accuracy and
macro F1; per_class.csv and confusion.csv feed `dvc plots`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from classifier.cli import run, stage_parser
from classifier.data import load_prepared
from classifier.files import atomic_write_json, atomic_write_text
from classifier.model import NeuralNetwork, logits_for, loss_and_accuracy
from classifier.serialization import load_file

log = logging.getLogger("evaluate")

DECIMALS = 6


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


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[dict, list[dict], torch.Tensor]:
    loss, accuracy = loss_and_accuracy(logits, labels)
    predictions = logits.argmax(dim=1)
    per_class = per_class_scores(confusion_matrix(labels, predictions, num_classes))
    macro_f1 = sum(row["f1"] for row in per_class) / num_classes
    summary = {"loss": round(loss, DECIMALS), "accuracy": round(accuracy, DECIMALS), "macro_f1": round(macro_f1, DECIMALS)}
    return summary, per_class, predictions


def per_class_csv(classes: Sequence[str], per_class: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for name, row in zip(classes, per_class):
        writer.writerow([name, f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}", row["support"]])
    return out.getvalue()


def confusion_csv(classes: Sequence[str], labels: torch.Tensor, predictions: torch.Tensor) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(labels.tolist(), predictions.tolist()))
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("evaluate", __doc__.splitlines()[0])
    for name, help_text in [
        ("prepared_dir", "folder written by the prepare stage"),
        ("candidate_path", "state_dict written by the train stage"),
        ("candidate_info_path", "its architecture, as JSON, written by the train stage"),
        ("metrics_path", "metrics JSON to write"),
        ("confusion_path", "per-image (actual, predicted) CSV to write"),
        ("per_class_path", "per-class precision/recall/F1 CSV to write"),
    ]:
        parser.add_argument(name, type=Path, help=help_text)
    args = parser.parse_args(argv)

    info = json.loads(args.candidate_info_path.read_text())
    model = NeuralNetwork(**info["architecture"])
    model.load_state_dict(load_file(args.candidate_path))
    data = load_prepared(args.prepared_dir, ("test",))
    test = data.splits["test"]
    logits = logits_for(model, test.images, data.normalization, torch.device("cpu"))
    summary, per_class, predictions = score(logits, test.labels, data.num_classes)

    metrics = {"dataset": data.meta["dataset"], "samples": data.meta["samples"], "test": summary}
    classes = data.meta["classes"]
    atomic_write_json(args.metrics_path, metrics)
    atomic_write_text(args.confusion_path, confusion_csv(classes, test.labels, predictions))
    atomic_write_text(args.per_class_path, per_class_csv(classes, per_class))
    log.info("test loss %.4f  accuracy %.4f  macro F1 %.4f", summary["loss"], summary["accuracy"], summary["macro_f1"])


if __name__ == "__main__":
    sys.exit(run(main))
