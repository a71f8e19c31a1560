"""Decoded images kept between prepare runs, keyed by content, so a grown folder decodes only its new files.

An entry is an image file's sha256 -> its model input (uint8 size x size). The cache's folder is
named after everything else decoding depends on (classifier/images.py's source, Pillow's version,
the size), so a change to any of them starts an empty cache instead of serving stale pixels. It is
an accelerator outside DVC, like train's resume folder: deleting it only costs time.

Each run that decodes something adds one immutable segment (a .npz named by its content); past
MAX_SEGMENTS they are merged into one.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import PIL

from classifier import images as images_module
from classifier.files import atomic_write_bytes

MAX_SEGMENTS = 8


def cache_key(size: int) -> str:
    source = Path(images_module.__file__).read_bytes()
    return hashlib.sha256(source + f"|Pillow {PIL.__version__}|{size}".encode()).hexdigest()[:16]


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
        self.digests = np.concatenate(digests) if digests else np.zeros((0, 32), np.uint8)
        self.images = np.concatenate(pixels) if pixels else np.zeros((0, size, size), np.uint8)
        self.rows = {digest.tobytes().hex(): row for row, digest in enumerate(self.digests)}

    def lookup(self, digest: str) -> np.ndarray | None:
        row = self.rows.get(digest)
        return None if row is None else self.images[row]

    def add(self, decoded: Mapping[str, np.ndarray]) -> None:
        """Store newly decoded images as one segment (merging all segments once there are too many)."""
        if not decoded:
            return
        digests = list(decoded)
        new_digests = np.frombuffer(b"".join(bytes.fromhex(d) for d in digests), np.uint8).reshape(-1, 32)
        new_images = np.stack([decoded[d] for d in digests])
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
        buffer = io.BytesIO()
        np.savez(buffer, digests=digests, images=images)
        name = hashlib.sha256(digests.tobytes()).hexdigest()[:16]
        path = self.folder / f"segment-{name}.npz"
        atomic_write_bytes(path, buffer.getvalue())  # readers see a whole segment or none
        return path

