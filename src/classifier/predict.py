"""Classify image files with a published model.

    python -m classifier.predict models/model.pth digit.png [more.png ...]

The model's sha256 must match its card (models/model.json beside it) and the weights are
loaded weights-only. Images are read as grayscale and resized to the card's input shape;
like the training data, they should show a light figure on a dark background.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from classifier.cli import UserError, run
from classifier.data import Normalization
from classifier.files import sha256_bytes
from classifier.model import NeuralNetwork, logits_for
from classifier.serialization import load_weights_only


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
    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (shape[1], shape[0]):
                gray = gray.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(gray, dtype=np.uint8))
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None


def predict(model: NeuralNetwork, card: dict, images: torch.Tensor) -> list[tuple[str, float]]:
    normalization = Normalization(card["normalization"]["mean"], card["normalization"]["std"])
    probabilities = logits_for(model, images, normalization, torch.device("cpu")).softmax(dim=1)
    best, indices = probabilities.max(dim=1)
    return [(card["classes"][index], probability) for index, probability in zip(indices.tolist(), best.tolist())]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m classifier.predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_path", type=Path, help="published state_dict, e.g. models/model.pth")
    parser.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--card", type=Path, help="model card (default: the model path with .json)")
    args = parser.parse_args(argv)
    card = load_card(args.card or args.model_path.with_suffix(".json"))
    model = load_model(args.model_path, card)
    images = torch.stack([read_image(path, card["input_shape"]) for path in args.images])
    for path, (label, probability) in zip(args.images, predict(model, card, images)):
        print(f"{path}\t{label}\t{probability:.4f}")


if __name__ == "__main__":
    sys.exit(run(main))
