"""Write MNIST-5k images as an ImageFolder tree (`OUT/<digit>/<index>.png`), for trying the folder source.

    python -m classifier.data.export_folder OUT --start 0 --stop 3000     # the first 3,000
    python -m classifier.data.export_folder OUT --start 3000               # then the remaining 2,000

The bundled file is sorted by digit, so images are taken in an interleaved order (0, 1, ..., 9,
0, 1, ...): any run of them covers every class about equally. `<index>` is the image's row in
the bundled file. Existing files are left alone. No torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.cli import UserError, run
from classifier.data.download import bundled_mnist_5k_path
from classifier.data.prepare import read_mnist_5k


def interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Row indices ordered by (rank within its class, class): one of each class in turn."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))


def export(out_dir: Path, start: int = 0, stop: int | None = None) -> list[Path]:
    images, labels = read_mnist_5k(bundled_mnist_5k_path())
    order = interleaved_order(labels)[start:stop]
    written = []
    for row in order:
        path = out_dir / str(labels[row]) / f"{row:04d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[row], mode="L").save(path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m classifier.data.export_folder", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="root of the ImageFolder tree to write")
    parser.add_argument("--start", type=int, default=0, help="first image, in interleaved order (default: 0)")
    parser.add_argument("--stop", type=int, help="one past the last image (default: all 5,000)")
    args = parser.parse_args(argv)
    if args.start < 0 or (args.stop is not None and args.stop < args.start):
        raise UserError(f"--start {args.start} --stop {args.stop}: need 0 <= start <= stop")
    written = export(args.out_dir, args.start, args.stop)
    print(f"{args.out_dir}: {len(written)} images of MNIST-5k ({args.start} to {args.start + len(written) - 1})")


if __name__ == "__main__":
    sys.exit(run(main))
