"""Stage `snapshot`: list the image folder (path, size, version) so DVC can tell what changed, cheaply.

    python -m classifier.data.snapshot data/snapshot.csv --dataset DATASET --folder DATA_FOLDER
        [--hash-cache .cache/snapshot]

Always run (dvc.yaml: `always_changed`), because no DVC dependency can notice a folder's change
without hashing every file on every command (minutes at 60,000 images). Listing costs
milliseconds per thousand files: for a path, os.scandir's stats, and each file's sha256 read only
when its (size, mtime, ctime, inode) is not in `--hash-cache` (this machine's, outside DVC); for a
URL, the object store's listing (size and ETag or mtime). The listing holds no local times, so the
same images on another machine or at another path list the same bytes, and dvc.lock stays put.
The listing is the only thing `download` depends on, so when nothing was added, removed or edited
the file is byte-identical and nothing downstream reruns. A symlink loop in the folder is named and
refused. Any other `data.dataset` writes the header only. No torch, no DVC import for a path.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
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


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _refuse_loop(shown: str, ancestor: str) -> UserError:
    return UserError(f"{shown}: a symlink loop (it leads back to {ancestor}); remove the link or point it "
                     "outside the folder")


def _walk_local(folder: str, prefix: str, shown_root: str, ancestors: dict[tuple[int, int], str],
                found: list[tuple[str, os.stat_result]]) -> int:
    """Every image file under `folder`, following links as ImageFolder's walk does; a link that leads back
    to a folder on the way down (`ancestors`: identity -> its name) is a loop, named and refused."""
    before = len(found)
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError as error:  # a link to itself: is_dir raises rather than says no
                if error.errno == errno.ELOOP:
                    raise _refuse_loop(f"{shown_root}/{prefix}{entry.name}", "itself") from None
                raise
            if is_dir:
                identity = _identity(entry.stat())
                shown = f"{shown_root}/{prefix}{entry.name}"
                if identity in ancestors:
                    raise _refuse_loop(shown, ancestors[identity])
                _walk_local(entry.path, f"{prefix}{entry.name}/", shown_root, {**ancestors, identity: shown}, found)
            elif is_image_file(entry.name) and entry.is_file():
                found.append((prefix + entry.name, entry.stat()))
    return len(found) - before


def _hash_file(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class HashCache:
    """This machine's (size, mtime, ctime, inode) -> sha256 of the folder's files, outside DVC (like the
    decoded cache): listing stays a stat per file, and the listing DVC sees holds content hashes, not
    this machine's times, so the same images anywhere give the same listing and the same dvc.lock.

    One JSON file per folder: the last listing's stats in walk order and their digests. When nothing
    changed, one comparison of the two stat lists (C speed) stands for 60,000 look-ups."""

    def __init__(self, folder: Path | None, root: Path):
        self.path = None if folder is None else Path(folder) / (
            hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16] + ".json")
        self.stats: list[list] = []
        self.digests_held: list[str] = []
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_bytes())
                if len(stored["stats"]) == len(stored["digests"]):
                    self.stats, self.digests_held = stored["stats"], stored["digests"]
            except (OSError, ValueError, KeyError, TypeError):  # a damaged cache is only a miss
                pass

    def digests(self, root: Path, found: Sequence[tuple[str, os.stat_result]]) -> list[str]:
        stats = [[relative, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino] for relative, stat in found]
        if stats == self.stats:
            return list(self.digests_held)
        known = {row[0]: (row, digest) for row, digest in zip(self.stats, self.digests_held)}
        digests = []
        for row in stats:
            held = known.get(row[0])
            digests.append(held[1] if held is not None and held[0] == row else _hash_file(str(root / row[0])))
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"stats": stats, "digests": digests}, separators=(",", ":")))
        return digests


def list_local(root: Path, hash_cache: Path | None = None) -> list[tuple[str, int, str]]:
    """(path, size, sha256) of every image file: the version of a local file is its content's hash."""
    if not root.is_dir():
        raise UserError(f"data.folder {str(root)!r}: no such folder (from {Path.cwd()})")
    shown_root = str(root).rstrip("/")
    top = {_identity(root.stat()): shown_root}
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    found: list[tuple[str, os.stat_result]] = []
    counts = {}
    for name in classes:
        identity = _identity((root / name).stat())
        if identity in top:
            raise _refuse_loop(f"{shown_root}/{name}", top[identity])
        counts[name] = _walk_local(str(root / name), f"{name}/", shown_root,
                                   {**top, identity: f"{shown_root}/{name}"}, found)
    _check_classes(str(root), classes, counts)
    digests = HashCache(hash_cache, root).digests(root, found)
    return [(relative, stat.st_size, digest) for (relative, stat), digest in zip(found, digests)]


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


def snapshot(location: str, hash_cache: Path | None = None) -> list[tuple[str, int, str]]:
    """The folder's image files in walk order: path (relative, '/'-separated), size, version (a local
    file's sha256, kept in `hash_cache` by stat; an object store's ETag or checksum)."""
    rows = list_url(location) if is_url(location) else list_local(Path(location), hash_cache)
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
    parser.add_argument("--hash-cache", type=Path, help="folder keeping this machine's file stats -> sha256, "
                        "so an unchanged file is not read again (outside DVC; deleting it costs one read)")
    args = parser.parse_args(argv)
    if args.dataset is None or args.folder is None:
        # Only then: loading params imports pydantic and numpy, a third of this stage's cost.
        from classifier.params import load_params

        data_params = load_params(args.params).data
        args.dataset, args.folder = args.dataset or data_params.dataset, args.folder or data_params.folder
    if args.dataset not in DATASETS:
        raise UserError(f"--dataset {args.dataset!r}: not one of {', '.join(DATASETS)}")
    rows = snapshot(args.folder, args.hash_cache) if DATASETS[args.dataset].kind == "folder" else []
    atomic_write_text(args.listing, listing_text(rows))
    log.info("%s: %d image files", args.listing, len(rows))


if __name__ == "__main__":
    sys.exit(run(main))
