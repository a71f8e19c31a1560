"""Classify image files with a published model.

    python -m classifier.training.predict models/model.pth digit.png [more.png ...] [--top-k 3]

The model's sha256 must match its card (models/model.json beside it) and the weights are
loaded weights-only. Images are read as grayscale and resized to the card's input shape;
like the training data, they should show a light figure on a dark background: an image whose
border is lighter than mid-grey gets a warning on stderr, since the model answers it anyway,
and often confidently (a dark zero on white paper: "3 0.9890").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from classifier.cli import UserError, run
from classifier.training.split import Normalization
from classifier.files import sha256_bytes
from classifier.data.images import read_image as read_model_input
from classifier.training.model import HOST, NeuralNetwork, logits_for
from classifier.training.serialization import load_weights_only


def load_card(card_path: Path) -> dict:
    try:
        return json.loads(card_path.read_text())
    except OSError as error:
        raise UserError(f"{card_path}: cannot read the model card ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{card_path}: not valid JSON ({error})") from None


def load_model(model_path: Path, card: dict) -> NeuralNetwork:
    """Verify the model file against its card's sha256, then load it weights-only."""
    try:
        model_bytes = model_path.read_bytes()
    except OSError as error:
        raise UserError(f"{model_path}: cannot read ({error.strerror})") from None
    actual = sha256_bytes(model_bytes)
    if actual != card.get("sha256"):
        raise UserError(f"{model_path}: sha256 {actual} does not match its card ({card.get('sha256')}); refusing to load")
    model = NeuralNetwork(**card["architecture"])
    model.load_state_dict(load_weights_only(model_bytes, model_path))
    return model


def read_image(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """The image as training saw its kind: classifier.data.images, the function prepare uses."""
    if shape[0] != shape[1]:
        raise UserError(f"model input shape {list(shape)} is not square; this predict reads square images only")
    return torch.from_numpy(read_model_input(path, shape[0]))


# Training digits are light strokes on a black field, so their border is near 0; a border this
# bright means a dark figure on a light background, which the model was never shown.
BORDER_WIDTH = 2
MID_GREY = 127.5


def border_mean(image: torch.Tensor) -> float:
    """Mean of the outermost BORDER_WIDTH pixels of a uint8 H x W image."""
    inner = torch.zeros_like(image, dtype=torch.bool)
    inner[BORDER_WIDTH:-BORDER_WIDTH, BORDER_WIDTH:-BORDER_WIDTH] = True
    return image[~inner].float().mean().item()


def looks_inverted(image: torch.Tensor) -> bool:
    return border_mean(image) > MID_GREY


def predict(model: NeuralNetwork, card: dict, images: torch.Tensor, top_k: int = 1) -> list[list[tuple[str, float]]]:
    """Per image, the top_k (class name, probability) pairs, most probable first."""
    normalization = Normalization(card["normalization"]["mean"], card["normalization"]["std"])
    # Always the CPU: the weights were saved from the host (a GPU-trained model too) and load there.
    probabilities = logits_for(model, images, normalization, HOST).softmax(dim=1)
    best, indices = probabilities.topk(top_k, dim=1)
    return [[(card["classes"][index], probability) for index, probability in zip(row_indices, row_best)]
            for row_indices, row_best in zip(indices.tolist(), best.tolist())]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m classifier.training.predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_path", type=Path, help="published state_dict, e.g. models/model.pth")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--card", type=Path, help="model card (default: the model path with .json)")
    parser.add_argument("--top-k", type=int, default=1, metavar="K",
                        help="print the K most probable classes, each with its probability (default: %(default)s)")
    args = parser.parse_args(argv)
    card = load_card(args.card or args.model_path.with_suffix(".json"))
    if not 1 <= args.top_k <= len(card["classes"]):
        raise UserError(f"--top-k {args.top_k}: must be between 1 and the model's {len(card['classes'])} classes")
    model = load_model(args.model_path, card)
    images = torch.stack([read_image(path, card["input_shape"]) for path in args.images])
    for path, image in zip(args.images, images):
        if looks_inverted(image):
            print(f"warning: {path}: light background (border mean {border_mean(image):.0f}/255); the model expects "
                  "a light figure on a dark background, like MNIST: invert the image first", file=sys.stderr)
    for path, ranked in zip(args.images, predict(model, card, images, args.top_k)):
        print("\t".join([str(path), *(f"{label}\t{probability:.4f}" for label, probability in ranked)]))


if __name__ == "__main__":
    sys.exit(run(main))
