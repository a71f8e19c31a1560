"""A real PostgreSQL on loopback for the team-server tests and benchmarks/server_load.py: Debian's
`postgresql` binaries (`initdb`, `pg_ctl`), a private cluster in a temporary folder on 127.0.0.1 and
a free port, a role and a database for Prefect with `pg_trgm` created.

`postgres` refuses to run as root, so under root the cluster belongs to `nobody` (`runuser -u nobody`),
in a folder of its own under /tmp that nobody can reach (a test's tmp_path sits below a mode-700
folder of root's). Any other user runs it as itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.pipeline.prefect_server import free_port

RUN_AS = "nobody"
APT_PACKAGE = "postgresql"


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin folder (/usr/lib/postgresql/N/bin) holding initdb and pg_ctl."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parent.parent.name)
                   if path.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found and (found[-1].parent / "pg_ctl").exists() else None


def install_postgres() -> Path:
    """Debian's postgresql with apt-get (root only), as tests/conftest.py's chromium; RuntimeError when it cannot."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed and apt-get cannot install them here "
                           f"(needs Debian and root): apt-get install {APT_PACKAGE}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", APT_PACKAGE]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    found = postgres_bin()
    if found is None:
        raise RuntimeError(f"apt-get installed {APT_PACKAGE} but no /usr/lib/postgresql/*/bin/initdb is there")
    return found


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    admin_password: str      # of the superuser `postgres`
    password: str            # of the role `prefect`, owner of the database `prefect`
    folder: Path

    def url(self, database: str = "prefect", user: str = "prefect", password: str | None = None) -> str:
        password = self.password if password is None else password
        return f"postgresql+asyncpg://{user}:{password}@{self.host}:{self.port}/{database}"

    def url_without_password(self, database: str = "prefect", user: str = "prefect") -> str:
        """For a client that takes the password from PGPASSWORD or ~/.pgpass."""
        return f"postgresql+asyncpg://{user}@{self.host}:{self.port}/{database}"

    def admin(self, *statements: str, database: str = "postgres") -> None:
        """Run SQL statements as the superuser, each on its own (CREATE DATABASE refuses a transaction)."""
        import asyncpg

        async def run() -> None:
            connection = await asyncpg.connect(host=self.host, port=self.port, user="postgres",
                                               password=self.admin_password, database=database)
            try:
                for statement in statements:
                    await connection.execute(statement)
            finally:
                await connection.close()
        asyncio.run(run())

    def query(self, statement: str, database: str = "prefect") -> list[tuple]:
        """Rows of a query, as the superuser."""
        import asyncpg

        async def run() -> list[tuple]:
            connection = await asyncpg.connect(host=self.host, port=self.port, user="postgres",
                                               password=self.admin_password, database=database)
            try:
                return [tuple(row) for row in await connection.fetch(statement)]
            finally:
                await connection.close()
        return asyncio.run(run())

    def log(self) -> str:
        return (self.folder / "postgres.log").read_text(errors="replace")


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server(bin_dir: Path, durable: bool = False) -> Iterator[Postgres]:
    """A private PostgreSQL cluster on 127.0.0.1 and a free port, with a role `prefect` that owns a database
    `prefect` in which pg_trgm is created. durable: keep fsync on (benchmarks); tests turn it off."""
    folder = Path(tempfile.mkdtemp(prefix="classifier-postgres-"))
    data = folder / "data"
    admin_password, password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    pwfile = folder / "pwfile"
    pwfile.write_text(admin_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, RUN_AS)
        shutil.chown(pwfile, RUN_AS)
    port = free_port()
    server = Postgres("127.0.0.1", port, admin_password, password, folder)

    def run(command: list[str]) -> None:
        done = subprocess.run(_as_owner(command), capture_output=True, text=True, timeout=300, cwd=folder)
        if done.returncode != 0:
            log = (folder / "postgres.log").read_text() if (folder / "postgres.log").exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}")

    options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} "
               + ("" if durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"))
    started = False
    try:
        run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={pwfile}",
             "-E", "UTF8", "--locale=C", "--no-sync"])
        run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-o", options, "-w",
             "-t", "120", "start"])
        started = True
        server.admin(f"CREATE ROLE prefect LOGIN PASSWORD '{password}'", "CREATE DATABASE prefect OWNER prefect")
        server.admin("CREATE EXTENSION pg_trgm", database="prefect")
        yield server
    finally:
        if started:
            subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=120, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)
