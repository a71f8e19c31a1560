"""The prepared folder's split files: where the prepare stage writes each split, and how it is read back
(numpy only, so a reader that needs no model, such as the report's pictures, does not import torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def split_paths(prepared_dir: Path, name: str) -> tuple[Path, Path]:
    """Where a prepared split's images (uint8, N x S x S) and labels (int64) are."""
    return prepared_dir / f"{name}_images.npy", prepared_dir / f"{name}_labels.npy"


def read_split(prepared_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split's images and labels, as prepare wrote them."""
    images_path, labels_path = split_paths(prepared_dir, name)
    return np.load(images_path, allow_pickle=False), np.load(labels_path, allow_pickle=False)
