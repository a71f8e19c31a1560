"""Stage `snapshot`: list the image folder (path, size, version) so DVC can tell what changed, cheaply.

    python -m classifier.snapshot data/snapshot.csv --dataset DATASET --folder DATA_FOLDER

Always run (dvc.yaml: `always_changed`), because no DVC dependency can notice a folder's change
without hashing every file on every command (minutes at 60,000 images). Listing costs
milliseconds per thousand files: os.scandir's size and mtime for a path, or the object store's
listing (size and ETag or mtime) for a URL. The listing is the only thing `download` depends on,
so when nothing was added, removed or edited the file is byte-identical and nothing downstream
reruns. Any other `data.dataset` writes the header only. No torch, no DVC import for a path.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from classifier.cli import UserError, run, stage_parser
from classifier.datasets import DATASETS, is_image_file
from classifier.files import atomic_write_text

log = logging.getLogger("snapshot")

LISTING_COLUMNS = ("path", "size", "version")


def is_url(location: str) -> bool:
    return "://" in location


def _check_classes(shown: str, classes: list[str], counts: dict[str, int]) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise UserError(f"{shown}: needs at least two class folders (<folder>/<class>/<image>), found {found}")
    for name in classes:
        if not counts.get(name):
            raise UserError(f"{shown.rstrip('/')}/{name}: class folder {name!r} holds no image files "
                            "(.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)")


def _walk_local(folder: str, prefix: str, rows: list[tuple[str, int, str]]) -> int:
    before = len(rows)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():  # follows links, as ImageFolder's walk does
                _walk_local(entry.path, f"{prefix}{entry.name}/", rows)
            elif is_image_file(entry.name) and entry.is_file():
                stat = entry.stat()
                rows.append((prefix + entry.name, stat.st_size, str(stat.st_mtime_ns)))
    return len(rows) - before


def list_local(root: Path) -> list[tuple[str, int, str]]:
    if not root.is_dir():
        raise UserError(f"data.folder {str(root)!r}: no such folder (from {Path.cwd()})")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    rows: list[tuple[str, int, str]] = []
    counts = {name: _walk_local(str(root / name), f"{name}/", rows) for name in classes}
    _check_classes(str(root), classes, counts)
    return rows


def url_fs(url: str):
    """DVC's file system for a URL (s3, gs, azure, ssh, http, ... with their plugins), as `dvc get-url`
    finds it; imported only here, so a local folder never pays for DVC's import."""
    from dvc.fs import parse_external_url

    try:
        return parse_external_url(url)
    except Exception as error:  # DVC raises many kinds for an unknown scheme or a missing plugin
        raise UserError(f"data.folder {url!r}: cannot open ({error})") from None


def _version(info: dict) -> str:
    # What changes when an object's content does, without reading it: the ETag or checksum an
    # object store keeps, else the modification time.
    for key in ("ETag", "etag", "md5", "checksum", "mtime", "LastModified", "last_modified", "modified"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def list_url(url: str) -> list[tuple[str, int, str]]:
    fs, root = url_fs(url)
    root = root.rstrip("/")
    try:
        found = fs.fs.find(root, withdirs=True, detail=True)
    except (OSError, ValueError) as error:
        raise UserError(f"data.folder {url!r}: cannot list ({error})") from None
    rows, classes, counts = [], set(), {}
    for path, info in found.items():
        relative = path[len(root):].lstrip("/")
        if not relative:
            continue
        head, _, rest = relative.partition("/")
        if info.get("type") == "directory":
            if not rest:
                classes.add(head)
        elif rest and is_image_file(relative):
            classes.add(head)
            counts[head] = counts.get(head, 0) + 1
            rows.append((relative, int(info.get("size") or 0), _version(info)))
    _check_classes(url, sorted(classes), counts)
    return rows


def walk_order(paths: Sequence[str]) -> list[int]:
    """Indices of `paths` in ImageFolder's order: by class, then folder, then file name."""
    def key(index: int) -> tuple[str, str, str]:
        folder, _, name = paths[index].rpartition("/")
        return paths[index].split("/", 1)[0], folder, name
    return sorted(range(len(paths)), key=key)


def snapshot(location: str) -> list[tuple[str, int, str]]:
    """The folder's image files in walk order: path (relative, '/'-separated), size, version."""
    rows = list_url(location) if is_url(location) else list_local(Path(location))
    return [rows[i] for i in walk_order([path for path, _, _ in rows])]


def csv_text(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    # The csv module, not pandas: this stage runs on every command, and pandas' import alone
    # would cost more than listing 60,000 files.
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue()


def listing_text(rows: Sequence[tuple[str, int, str]]) -> str:
    return csv_text(LISTING_COLUMNS, rows)


def read_listing(path: Path) -> list[tuple[str, int, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        if tuple(next(reader, ())) != LISTING_COLUMNS:
            raise UserError(f"{path}: not a listing written by the snapshot stage")
        return [(path, int(size), version) for path, size, version in reader]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("snapshot", __doc__.splitlines()[0])
    parser.add_argument("listing", type=Path, help="the listing to write (a small DVC out)")
    parser.add_argument("--folder", help="the ImageFolder tree: a path or a URL (default: params' data.folder)")
    parser.add_argument("--dataset", help="data.dataset (default: params'), already validated by the validate stage")
    args = parser.parse_args(argv)
    if args.dataset is None or args.folder is None:
        # Only then: loading params imports pydantic and numpy, a third of this stage's cost.
        from classifier.params import load_params

        data_params = load_params(args.params).data
        args.dataset, args.folder = args.dataset or data_params.dataset, args.folder or data_params.folder
    if args.dataset not in DATASETS:
        raise UserError(f"--dataset {args.dataset!r}: not one of {', '.join(DATASETS)}")
    rows = snapshot(args.folder) if DATASETS[args.dataset].kind == "folder" else []
    atomic_write_text(args.listing, listing_text(rows))
    log.info("%s: %d image files", args.listing, len(rows))


if __name__ == "__main__":
    sys.exit(run(main))
