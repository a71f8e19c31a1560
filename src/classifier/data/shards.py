"""Packed, content-addressed shards: many small files stored as a few DVC objects.

DVC keeps one cache object per file of a directory output, and hashing, pushing and pulling
60,000 of them takes minutes (docs/performance.md). The folder source's image bytes therefore
live in SHARDS pack files, each file's bytes stored once under its sha256 and placed by the
digest's first hex digit. The placement is a function of the content alone, so the same set of
images gives the same pack bytes whether it was built at once or grown over many runs.

A pack: MAGIC, the count (uint64 LE), the sorted digests (32 bytes each), each entry's end
offset into the payload (uint64 LE), then the payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from classifier.cli import UserError
from classifier.files import atomic_write_bytes

MAGIC = b"CLSPACK1"
SHARDS = 16
DIGEST_BYTES = 32


def shard_of(digest: str) -> int:
    return int(digest[0], 16)


def pack_name(shard: int) -> str:
    return f"images-{shard:x}.pack"


def pack_bytes(entries: Mapping[str, bytes]) -> bytes:
    digests = sorted(entries)
    ends = np.cumsum([len(entries[d]) for d in digests], dtype=np.uint64) if digests else np.zeros(0, np.uint64)
    return b"".join([MAGIC, np.uint64(len(digests)).astype("<u8").tobytes(),
                     b"".join(bytes.fromhex(d) for d in digests), ends.astype("<u8").tobytes(),
                     *(entries[d] for d in digests)])


def write_pack(path: Path, entries: Mapping[str, bytes]) -> None:
    atomic_write_bytes(path, pack_bytes(entries))


def _header(data: bytes, path: Path) -> tuple[list[str], np.ndarray, int]:
    if data[:len(MAGIC)] != MAGIC:
        raise UserError(f"{path}: not an image pack (written by the download stage)")
    count = int(np.frombuffer(data, "<u8", 1, len(MAGIC))[0])
    start = len(MAGIC) + 8
    raw = data[start:start + count * DIGEST_BYTES]
    digests = [raw[i:i + DIGEST_BYTES].hex() for i in range(0, len(raw), DIGEST_BYTES)]
    ends = np.frombuffer(data, "<u8", count, start + count * DIGEST_BYTES)
    return digests, ends, start + count * (DIGEST_BYTES + 8)


def pack_digests(path: Path) -> set[str]:
    """The digests a pack holds, reading its header only."""
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC) + 8)
        if head[:len(MAGIC)] != MAGIC:
            raise UserError(f"{path}: not an image pack (written by the download stage)")
        count = int(np.frombuffer(head, "<u8", 1, len(MAGIC))[0])
        raw = handle.read(count * DIGEST_BYTES)
    return {raw[i:i + DIGEST_BYTES].hex() for i in range(0, len(raw), DIGEST_BYTES)}


def read_pack(path: Path, wanted: Iterable[str] | None = None) -> dict[str, bytes]:
    """A pack's entries (only those in `wanted`, when given), digest -> file bytes."""
    data = Path(path).read_bytes()
    digests, ends, payload = _header(data, path)
    keep = None if wanted is None else set(wanted)
    entries = {}
    start = 0
    for digest, end in zip(digests, ends.tolist()):
        if keep is None or digest in keep:
            entries[digest] = data[payload + start:payload + end]
        start = end
    return entries
