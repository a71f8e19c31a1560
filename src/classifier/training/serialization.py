"""torch.save / torch.load in one place: bytes-stable saving and weights-only loading."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from classifier.cli import UserError
from classifier.files import atomic_write_bytes


def to_bytes(obj: Any) -> bytes:
    # An in-memory buffer gives the zip's inner folder the fixed name "archive"; saving to a
    # temp file would name it after the temp file and change the bytes from run to run.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_atomically(obj: Any, path: Path) -> bytes:
    data = to_bytes(obj)
    atomic_write_bytes(path, data)
    return data


def load_weights_only(data: bytes, source: Path | str) -> Any:
    """Load tensors and plain containers only; a pickle that asks for anything else is refused."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or ValueError here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{source}: refused to load (weights-only): {first_line}") from None


def load_file(path: Path) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    return load_weights_only(data, path)
