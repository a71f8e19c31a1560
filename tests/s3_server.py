"""A real S3 remote for DVC on loopback: moto's server mode (`python -m moto.server`), a bucket in it,
and the environment a client needs (issue 29.6). DVC reaches it through dvc-s3 and the remote's
`endpointurl`, as it reaches MinIO; both are pinned in the test extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUCKET = "dvc-remote"
# moto takes any key; a client with none at all is refused by botocore before it asks, as a fork's CI run is.
READ_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class S3Server:
    endpoint: str   # http://127.0.0.1:PORT
    url: str        # the DVC remote's URL: s3://BUCKET/store

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **{
            "aws_access_key_id": READ_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": READ_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": READ_CREDENTIALS["AWS_DEFAULT_REGION"]})

    def keys(self) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def has_md5(self, md5: str | None) -> bool:
        return md5 is not None and f"store/files/md5/{md5[:2]}/{md5[2:]}" in self.keys()

    def put_md5(self, md5: str, body: bytes) -> None:
        """Replace an object of the remote: what a tampered or corrupted remote holds."""
        self.client().put_object(Bucket=BUCKET, Key=f"store/files/md5/{md5[:2]}/{md5[2:]}", Body=body)


def with_credentials(env: dict[str, str]) -> dict[str, str]:
    return without_credentials(env) | READ_CREDENTIALS


def without_credentials(env: dict[str, str]) -> dict[str, str]:
    """No AWS credentials anywhere (as a fork's pull request in CI): none in the environment, no
    ~/.aws files, no instance metadata to ask."""
    cleaned = {key: value for key, value in env.items() if key not in AWS_VARIABLES}
    return cleaned | {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                      "AWS_EC2_METADATA_DISABLED": "true"}


def configure_remote(project: Path, server: S3Server, run) -> None:
    """The project's default DVC remote is the loopback S3 bucket, committed in .dvc/config (as a MinIO
    user's is): `run(args)` runs a command in the project."""
    run(["dvc", "remote", "add", "--default", "--force", "storage", server.url])
    run(["dvc", "remote", "modify", "storage", "endpointurl", server.endpoint])


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (log_dir / "moto.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"MOTO_CALL_RESET_API": "false"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start: {(log_dir / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.2)
        server = S3Server(endpoint, f"s3://{BUCKET}/store")
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
