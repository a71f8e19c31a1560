"""Stage `save`: publish the candidate model and its model card, if it is good enough.

    python -m classifier.save models/candidate.pth models/candidate.json metrics/metrics.json \
        models/model.pth models/model.json

Below `save.min_accuracy` the stage fails and leaves the published model as it was (its
outs are `persist: true`, so DVC does not delete them first). Otherwise the candidate's
bytes — a plain state_dict, serialised in memory by train — are written atomically to
model.pth, so identical weights give identical bytes. No torch here: publishing is a copy.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import UserError, run, stage_parser
from classifier.files import atomic_write_bytes, atomic_write_json, sha256_bytes
from classifier.params import SaveParams, load_params

log = logging.getLogger("save")


def check_quality(metrics: dict, save_params: SaveParams) -> None:
    accuracy = metrics["test"]["accuracy"]
    if accuracy < save_params.min_accuracy:
        raise UserError(
            f"test accuracy {accuracy:.4f} is below save.min_accuracy {save_params.min_accuracy:.4f}; "
            "the published model was left as it was"
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
    parser.add_argument("metrics_path", type=Path, help="metrics written by the evaluate stage")
    parser.add_argument("model_path", type=Path, help="state_dict to publish")
    parser.add_argument("card_path", type=Path, help="model card (JSON) to publish beside it")
    args = parser.parse_args(argv)
    save_params = load_params(args.params).save

    metrics = json.loads(args.metrics_path.read_text())
    check_quality(metrics, save_params)
    model_bytes = args.candidate_path.read_bytes()
    digest = sha256_bytes(model_bytes)
    card = model_card(json.loads(args.candidate_info_path.read_text()), metrics, digest, args.model_path.name)
    # Model first, card second: a crash in between leaves a card whose hash does not match,
    # which predict refuses loudly, rather than a card describing a model that is not there.
    atomic_write_bytes(args.model_path, model_bytes)
    atomic_write_json(args.card_path, card)
    log.info("wrote %s (sha256 %s) and %s", args.model_path, digest, args.card_path)


if __name__ == "__main__":
    sys.exit(run(main))
