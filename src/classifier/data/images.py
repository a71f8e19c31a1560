"""Images in: the one way a picture becomes model input, shared by prepare (training) and predict
(serving), so serving sees exactly what training saw.

Any size or mode -> grayscale ("L", ITU-R 601-2 luma) -> `size` x `size` (bilinear, only when the
size differs) -> uint8 H x W. No torch: prepare does not import it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from classifier.cli import UserError
from classifier.files import sha256_bytes

# What is wrong with a file that does not decode, for the data checks (classifier.data.checks).
NOT_AN_IMAGE, TRUNCATED, UNDECODABLE = "not an image", "truncated", "does not decode"


class DecodeError(UserError):
    """A file that is not a readable image; `kind` says how (NOT_AN_IMAGE, TRUNCATED or UNDECODABLE)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """A decoded image as the model sees it: grayscale uint8, size x size."""
    gray = image.convert("L")
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(gray, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on a read-only one)


def array_to_model_input(pixels: np.ndarray, size: int) -> np.ndarray:
    """A uint8 H x W array (the IDX and CSV sources) through the same path as a file."""
    if pixels.shape == (size, size):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return to_model_input(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L"), size)


def decode(data: bytes | Path, size: int, source: Path | str) -> np.ndarray:
    """Decode an image file (its bytes, or its path) to model input; a file that is not a readable
    image raises a UserError naming `source`."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()  # a truncated file fails here, not later
            return to_model_input(image, size)
    except UnidentifiedImageError:
        raise DecodeError(f"{source}: not an image file, or a corrupt one (PIL cannot identify it)",
                          NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports truncated and bad data as these
        kind = TRUNCATED if "truncated" in str(error) or "broken data stream" in str(error) else UNDECODABLE
        raise DecodeError(f"{source}: cannot decode the image ({error})", kind) from None


def split_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the pixels (uint8, C order) then the labels (int64, little-endian), in split order."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return f"sha256:{digest.hexdigest()}"


def pixel_hashes(images: np.ndarray) -> list[str]:
    """sha256 of each image's pixels (uint8, C order): the content id prepare splits by and evaluate reports."""
    return [sha256_bytes(image.tobytes()) for image in np.ascontiguousarray(images, dtype=np.uint8)]


def read_image(path: Path, size: int) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
    return decode(data, size, path)
