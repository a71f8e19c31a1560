"""Stage `save`: publish the model as a plain state_dict and its model card, if it is good enough.

    python -m classifier.save models/checkpoint.pt metrics/metrics.json models/model.pth models/model.json

Below `save.min_accuracy` the stage fails and leaves the published model as it was (its
outs are `persist: true`, so DVC does not delete them first). model.pth is serialised in
memory and written atomically, so identical weights give identical bytes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from classifier.cli import UserError, run, stage_parser
from classifier.files import atomic_write_bytes, atomic_write_json, sha256_bytes
from classifier.params import SaveParams, load_params
from classifier.serialization import load_file, to_bytes

log = logging.getLogger("save")


def check_quality(metrics: dict, save_params: SaveParams) -> None:
    accuracy = metrics["test"]["accuracy"]
    if accuracy < save_params.min_accuracy:
        raise UserError(
            f"test accuracy {accuracy:.4f} is below save.min_accuracy {save_params.min_accuracy:.4f}; "
            "the published model was left as it was"
        )


def model_card(checkpoint: dict, metrics: dict, model_sha256: str, model_file: str) -> dict:
    data = checkpoint["data"]
    return {
        "file": model_file,
        "format": "state_dict (load with torch.load(..., weights_only=True))",
        "sha256": model_sha256,
        "dataset": data["dataset"],
        "classes": data["classes"],
        "input_shape": data["image_shape"],
        "normalization": {**data["normalization"], "formula": "(pixel / 255 - mean) / std"},
        "architecture": checkpoint["architecture"],
        "params": checkpoint["params"],
        "metrics": metrics["test"],
        "samples": metrics["samples"],
        "trained_on": checkpoint["device"],
        "torch_version": torch.__version__,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("save", __doc__.splitlines()[0])
    parser.add_argument("checkpoint_path", type=Path, help="checkpoint written by the train stage")
    parser.add_argument("metrics_path", type=Path, help="metrics written by the evaluate stage")
    parser.add_argument("model_path", type=Path, help="state_dict to publish")
    parser.add_argument("card_path", type=Path, help="model card (JSON) to publish beside it")
    args = parser.parse_args(argv)
    save_params = load_params(args.params).save

    metrics = json.loads(args.metrics_path.read_text())
    check_quality(metrics, save_params)
    checkpoint = load_file(args.checkpoint_path)
    model_bytes = to_bytes(checkpoint["model"])
    digest = sha256_bytes(model_bytes)
    # Model first, card second: a crash in between leaves a card whose hash does not match,
    # which predict refuses loudly, rather than a card describing a model that is not there.
    atomic_write_bytes(args.model_path, model_bytes)
    atomic_write_json(args.card_path, model_card(checkpoint, metrics, digest, args.model_path.name))
    log.info("wrote %s (sha256 %s) and %s", args.model_path, digest, args.card_path)


if __name__ == "__main__":
    sys.exit(run(main))
