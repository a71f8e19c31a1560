"""The test images whose prediction flipped between two models, as one picture for a report.

    python -m classifier.training.flips data/prepared flips.csv sha256:... flips.png

`flips.csv` (written by the pull-request report) has one row per image: `index` (its position
in the test split, which is the row order of metrics/predictions.csv), `actual`, `base` and
`head` (the classes predicted). The prepared test split must be the one both models were
scored on: its fingerprint is checked against the one given, and a mismatch is an error, not a
picture of other images. Each tile is the image, enlarged, over the caption
`true: base -> head`, ten to a row on a grey ground. numpy and PIL only: a report draws this picture
without the seconds `import torch` costs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from classifier.cli import UserError, run
from classifier.data.images import split_fingerprint
from classifier.data.prepared import read_split

SCALE = 3
CAPTION_HEIGHT = 14
PER_ROW = 10
PADDING = 4
GROUND = 128  # the grey between tiles


def tile(image: np.ndarray, caption: str) -> np.ndarray:
    """One image (uint8, H x W), enlarged, with its caption underneath: uint8, H' x W'."""
    picture = Image.fromarray(image, mode="L").resize((image.shape[1] * SCALE, image.shape[0] * SCALE),
                                                      Image.Resampling.NEAREST)
    canvas = Image.new("L", (picture.width, picture.height + CAPTION_HEIGHT), color=255)
    canvas.paste(picture, (0, 0))
    ImageDraw.Draw(canvas).text((2, picture.height + 1), caption, fill=0, font=ImageFont.load_default())
    return np.asarray(canvas, dtype=np.uint8)


def grid(images: np.ndarray, rows: Sequence[dict]) -> np.ndarray:
    """The tiles of `rows` (their `index` into `images`), PER_ROW to a row, PADDING pixels around each: uint8, H x W."""
    tiles = [tile(images[int(row["index"])], f"{row['actual']}: {row['base']}->{row['head']}") for row in rows]
    height, width = tiles[0].shape
    columns, lines = min(len(tiles), PER_ROW), -(-len(tiles) // PER_ROW)
    laid_out = np.full((lines * (height + PADDING) + PADDING, columns * (width + PADDING) + PADDING), GROUND, np.uint8)
    for place, picture in enumerate(tiles):
        top = PADDING + (place // PER_ROW) * (height + PADDING)
        left = PADDING + (place % PER_ROW) * (width + PADDING)
        laid_out[top:top + height, left:left + width] = picture
    return laid_out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m classifier.training.flips", description=__doc__.splitlines()[0])
    parser.add_argument("prepared_dir", type=Path, help="folder written by the prepare stage")
    parser.add_argument("flips_csv", type=Path, help="index, actual, base, head: one row per flipped image")
    parser.add_argument("fingerprint", help="the test split's fingerprint both models were scored on")
    parser.add_argument("out_png", type=Path, help="picture to write")
    args = parser.parse_args(argv)

    images, labels = read_split(args.prepared_dir, "test")
    if split_fingerprint(images, labels) != args.fingerprint:
        raise UserError(f"{args.prepared_dir}: its test split is not the one the models were scored on "
                        f"({args.fingerprint}); rerun the pipeline (`dvc repro`) first")
    with open(args.flips_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UserError(f"{args.flips_csv}: no flipped images to draw")
    Image.fromarray(grid(images, rows), mode="L").save(args.out_png)


if __name__ == "__main__":
    sys.exit(run(main))
