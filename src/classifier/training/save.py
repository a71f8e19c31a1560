"""Stage `save`: publish the candidate model, its model card and its results, if it is good enough.

    python -m classifier.training.save models/candidate.pth models/candidate.json models/candidate-metrics.json \
        models/model.pth models/model.json --publish models/candidate-metrics.json metrics/metrics.json ...

Below `save.min_accuracy` the stage fails and publishes nothing: the model, its card and the
git-tracked results in metrics/ (all `persist: true`, so DVC does not delete them first) keep
describing the published model, and the error says which param to change. Otherwise the
candidate's bytes — a plain state_dict, serialised in memory by train — are written atomically to
model.pth, so identical weights give identical bytes, then each `--publish` file (evaluate's and
train's results for the candidate) is copied to its tracked place. No torch here: publishing is a copy.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import UserError, run, stage_parser
from classifier.files import atomic_write_bytes, atomic_write_json, sha256_bytes
from classifier.params import load_params

log = logging.getLogger("save")


def check_quality(metrics: dict, min_accuracy: float, epochs: int) -> None:
    accuracy = metrics["test"]["accuracy"]
    if accuracy < min_accuracy:
        # Two ways on, each one flag: train longer, or accept this accuracy (floored to 2 decimals).
        accept = math.floor(accuracy * 100) / 100
        raise UserError(
            f"test accuracy {accuracy:.4f} is below save.min_accuracy {min_accuracy:.4f}: the candidate was not "
            "published (models/model.pth and metrics/ still describe the published model); raise train.epochs "
            f"or lower save.min_accuracy, e.g. dvc exp run -S train.epochs={2 * epochs} "
            f"or dvc exp run -S save.min_accuracy={accept:g}"
        )


def model_card(candidate_info: dict, metrics: dict, model_sha256: str, model_file: str) -> dict:
    return {
        **candidate_info,
        "file": model_file,
        "format": "state_dict (load with torch.load(..., weights_only=True))",
        "sha256": model_sha256,
        "normalization": {**candidate_info["normalization"], "formula": "(pixel / 255 - mean) / std"},
        "metrics": metrics["test"],
        "samples": metrics["samples"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("save", __doc__.splitlines()[0])
    parser.add_argument("candidate_path", type=Path, help="state_dict written by the train stage")
    parser.add_argument("candidate_info_path", type=Path, help="its facts (JSON), written by the train stage")
    parser.add_argument("metrics_path", type=Path, help="the candidate's metrics, written by the evaluate stage")
    parser.add_argument("model_path", type=Path, help="state_dict to publish")
    parser.add_argument("card_path", type=Path, help="model card (JSON) to publish beside it")
    parser.add_argument("--publish", nargs=2, action="append", default=[], type=Path, metavar=("FROM", "TO"),
                        help="a result of the candidate's to copy to its published, git-tracked place")
    args = parser.parse_args(argv)
    params = load_params(args.params)

    metrics = json.loads(args.metrics_path.read_text())
    check_quality(metrics, params.save.min_accuracy, params.train.epochs)
    model_bytes = args.candidate_path.read_bytes()
    digest = sha256_bytes(model_bytes)
    card = model_card(json.loads(args.candidate_info_path.read_text()), metrics, digest, args.model_path.name)
    # Model first, card second: a crash in between leaves a card whose hash does not match,
    # which predict refuses loudly, rather than a card describing a model that is not there.
    # A crash among the results leaves dvc.lock's save entry as it was, so `dvc repro` reruns save.
    atomic_write_bytes(args.model_path, model_bytes)
    atomic_write_json(args.card_path, card)
    for source, target in args.publish:
        atomic_write_bytes(target, source.read_bytes())
    log.info("wrote %s (sha256 %s) and %s; published %s", args.model_path, digest, args.card_path,
             ", ".join(str(target) for _, target in args.publish) or "no results")


if __name__ == "__main__":
    sys.exit(run(main))
