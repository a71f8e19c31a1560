"""Decoded images kept between prepare runs, keyed by content, so a grown folder decodes only its new files.

An entry is an image file's sha256 -> its model input (uint8 size x size). The cache's folder is
named after everything else decoding depends on (classifier/data/images.py's source, Pillow's version,
the size), so a change to any of them starts an empty cache instead of serving stale pixels. It is
an accelerator outside DVC, like train's resume folder: deleting it only costs time.

Each run that decodes something adds one immutable segment (a .npz named by its content); past
MAX_SEGMENTS they are merged into one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL

from classifier.data import images as images_module

MAX_SEGMENTS = 8


def cache_key(size: int) -> str:
    source = Path(images_module.__file__).read_bytes()
    return hashlib.sha256(source + f"|Pillow {PIL.__version__}|{size}".encode()).hexdigest()[:16]


def _joined(arrays: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    return empty if not arrays else arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class DecodedCache:
    def __init__(self, root: Path, size: int):
        self.folder = Path(root) / cache_key(size)
        self.size = size
        self.segments = sorted(self.folder.glob("segment-*.npz")) if self.folder.is_dir() else []
        digests, pixels = [], []
        for segment in self.segments:
            try:
                with np.load(segment, allow_pickle=False) as stored:
                    digests.append(stored["digests"])
                    pixels.append(stored["images"])
            except (OSError, ValueError, KeyError):  # a damaged segment is only a miss
                continue
        # One segment (the usual case after a merge) is used as loaded: no copy of it.
        self.digests = _joined(digests, np.zeros((0, 32), np.uint8))
        self.images = _joined(pixels, np.zeros((0, size, size), np.uint8))
        self.rows = {digest.tobytes().hex(): row for row, digest in enumerate(self.digests)}

    def add(self, digests: Sequence[str], new_images: np.ndarray) -> None:
        """Store newly decoded images (new_images[i] is digests[i]'s) as one segment, merging all
        segments once there are too many."""
        if not len(digests):
            return
        new_digests = np.frombuffer(b"".join(bytes.fromhex(d) for d in digests), np.uint8).reshape(-1, 32)
        merge = len(self.segments) + 1 > MAX_SEGMENTS
        if merge:
            new_digests = np.concatenate([self.digests, new_digests])
            new_images = np.concatenate([self.images, new_images])
        written = self._write(new_digests, new_images)
        if merge:
            for segment in self.segments:
                if segment != written:
                    segment.unlink(missing_ok=True)

    def _write(self, digests: np.ndarray, images: np.ndarray) -> Path:
        name = hashlib.sha256(digests.tobytes()).hexdigest()[:16]
        path = self.folder / f"segment-{name}.npz"
        self.folder.mkdir(parents=True, exist_ok=True)
        # Straight to a temp file, then renamed: readers see a whole segment or none, and no in-memory
        # copy of it doubles prepare's peak (a 240,000-image segment is 190 MB).
        handle, temp = tempfile.mkstemp(dir=self.folder, prefix=".segment-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as temp_file:
                np.savez(temp_file, digests=digests, images=images)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)
        return path

