"""The test images whose prediction flipped between two models, as one picture for a report.

    python -m classifier.training.flips data/prepared flips.csv sha256:... flips.png

`flips.csv` (written by the pull-request report) has one row per image: `index` (its position
in the test split, which is the row order of metrics/predictions.csv), `actual`, `base` and
`head` (the classes predicted). The prepared test split must be the one both models were
scored on: its fingerprint is checked against the one given, and a mismatch is an error, not a
picture of other images. Each tile is the image, enlarged, over the caption
`true: base -> head`; torchvision's `make_grid` lays the tiles out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from classifier.cli import UserError, run
from classifier.training.split import load_prepared
from classifier.training.evaluate import split_fingerprint

SCALE = 3
CAPTION_HEIGHT = 14
PER_ROW = 10


def tile(image: np.ndarray, caption: str) -> torch.Tensor:
    """One image (uint8, H x W), enlarged, with its caption underneath: a 3 x H' x W' float tensor."""
    picture = Image.fromarray(image, mode="L").resize((image.shape[1] * SCALE, image.shape[0] * SCALE),
                                                      Image.Resampling.NEAREST)
    canvas = Image.new("L", (picture.width, picture.height + CAPTION_HEIGHT), color=255)
    canvas.paste(picture, (0, 0))
    ImageDraw.Draw(canvas).text((2, picture.height + 1), caption, fill=0, font=ImageFont.load_default())
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).expand(3, -1, -1)


def grid(images: np.ndarray, rows: Sequence[dict]) -> np.ndarray:
    """The tiles of `rows` (their `index` into `images`) in a grid: H x W x 3 uint8."""
    tiles = [tile(images[int(row["index"])], f"{row['actual']}: {row['base']}->{row['head']}") for row in rows]
    laid_out = make_grid(tiles, nrow=PER_ROW, padding=4, pad_value=0.5)
    return (laid_out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m classifier.training.flips", description=__doc__.splitlines()[0])
    parser.add_argument("prepared_dir", type=Path, help="folder written by the prepare stage")
    parser.add_argument("flips_csv", type=Path, help="index, actual, base, head: one row per flipped image")
    parser.add_argument("fingerprint", help="the test split's fingerprint both models were scored on")
    parser.add_argument("out_png", type=Path, help="picture to write")
    args = parser.parse_args(argv)

    test = load_prepared(args.prepared_dir, ("test",)).splits["test"]
    images, labels = test.images.numpy(), test.labels.numpy()
    if split_fingerprint(images, labels) != args.fingerprint:
        raise UserError(f"{args.prepared_dir}: its test split is not the one the models were scored on "
                        f"({args.fingerprint}); rerun the pipeline (`dvc repro`) first")
    with open(args.flips_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UserError(f"{args.flips_csv}: no flipped images to draw")
    Image.fromarray(grid(images, rows), mode="RGB").save(args.out_png)


if __name__ == "__main__":
    sys.exit(run(main))
