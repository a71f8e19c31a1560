"""The team server's database: checked before `make server` starts, then brought to Prefect's schema.

    python -m pipeline.server.database check [URL]     # one line: what is wrong, or what was found
    python -m pipeline.server.database upgrade [URL]   # check, then `prefect server database upgrade -y`

URL defaults to PREFECT_API_DATABASE_CONNECTION_URL (what `make server DATABASE_URL=...` sets for
the server alone). PostgreSQL is `postgresql+asyncpg://USER@HOST:PORT/DB` (asyncpg comes with
Prefect); a password left out of the URL comes from PGPASSWORD or ~/.pgpass, as asyncpg reads them.
Nothing here prints a password: every URL shown is redacted. SQLite URLs pass unchecked.

The check says, in one line, why the server could not use the database: not reachable, credentials
refused, no such database, or no `pg_trgm` (Prefect's migrations create the extension, so it must be
installed on the PostgreSQL server and the role must be allowed to create it in that database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

URL_SETTING = "PREFECT_API_DATABASE_CONNECTION_URL"
POSTGRES_DRIVER = "postgresql+asyncpg"
CONNECT_TIMEOUT_S = 10.0


class DatabaseError(Exception):
    """A database the server cannot use; the message is one line and names no password."""


def redacted(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: show its scheme only, never the rest
        return url.split("://", 1)[0] + "://..." if "://" in url else "(not a URL)"


def parse(url: str):
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:
        raise DatabaseError(f"{redacted(url)} is not a database URL: give postgresql+asyncpg://USER@HOST:PORT/DB") from None


async def _check_postgres(url) -> str:
    import asyncpg

    shown = url.render_as_string(hide_password=True)
    try:
        connection = await asyncpg.connect(host=url.host or "localhost", port=url.port or 5432, user=url.username,
                                           password=url.password, database=url.database, timeout=CONNECT_TIMEOUT_S)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as error:
        raise DatabaseError(f"{shown}: PostgreSQL refused the credentials of role {url.username!r} "
                            f"({error.__class__.__name__}): check the user and its password (PGPASSWORD, ~/.pgpass)") from None
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseError(f"{shown}: there is no database {url.database!r} on that server: "
                            f"createdb -O {url.username} {url.database}") from None
    except (OSError, asyncio.TimeoutError) as error:
        raise DatabaseError(f"{shown}: cannot reach PostgreSQL at {url.host or 'localhost'}:{url.port or 5432} "
                            f"({error.__class__.__name__}: {error}); is it running and listening there?") from None
    except asyncpg.PostgresError as error:
        raise DatabaseError(f"{shown}: {error.__class__.__name__}: {error}") from None
    try:
        version = await connection.fetchval("SHOW server_version")
        installed = await connection.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm'")
        if installed is None:
            available = await connection.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
            if not available:
                raise DatabaseError(f"{shown}: the PostgreSQL server has no pg_trgm extension, which Prefect's schema needs: "
                                    "install PostgreSQL's contrib modules there (Debian's postgresql package has them)")
            # pg_trgm is a trusted extension: a role with CREATE on the database may install it (Prefect's migration does).
            allowed = await connection.fetchval(
                "SELECT rolsuper OR has_database_privilege(current_database(), 'CREATE') FROM pg_roles "
                "WHERE rolname = current_user")
            if not allowed:
                raise DatabaseError(f"{shown}: pg_trgm is not created in database {url.database!r} and role "
                                    f"{url.username!r} may not create it: as a superuser, run "
                                    f"`psql -d {url.database} -c 'CREATE EXTENSION pg_trgm'`")
    finally:
        await connection.close()
    trgm = f"pg_trgm {installed}" if installed else "pg_trgm to be created"
    return f"{shown}: PostgreSQL {version.split()[0]}, {trgm}"


def check(url: str) -> str:
    """One line on the database at `url`, or DatabaseError with one line on why the server cannot use it."""
    parsed = parse(url)
    if parsed.drivername.startswith("sqlite"):
        return f"{redacted(url)}: SQLite (one writer at a time: docs/scaling-out.md, \"The server's database\")"
    if parsed.drivername != POSTGRES_DRIVER:
        raise DatabaseError(f"{redacted(url)}: Prefect's server talks to PostgreSQL through asyncpg: the URL must start "
                            f"with {POSTGRES_DRIVER}:// (or sqlite+aiosqlite:/// for a file)")
    if not parsed.database:
        raise DatabaseError(f"{redacted(url)} names no database: {POSTGRES_DRIVER}://USER@HOST:PORT/DB")
    return asyncio.run(_check_postgres(parsed))


def upgrade(url: str) -> None:
    """Prefect's own migrations, up to this Prefect's schema (idempotent); its output only on failure."""
    env = {**os.environ, URL_SETTING: url}
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run([str(prefect), "server", "database", "upgrade", "-y"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        password = parse(url).password
        output = (done.stdout + done.stderr).strip().splitlines()[-20:]
        text = "\n".join(output).replace(password, "***") if password else "\n".join(output)
        raise DatabaseError(f"{redacted(url)}: prefect server database upgrade failed (exit {done.returncode}):\n{text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server.database", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["check", "upgrade"], help="check the database, or check it and upgrade it")
    parser.add_argument("url", nargs="?", help=f"the database URL (default: ${URL_SETTING})")
    args = parser.parse_args(argv)
    url = args.url or os.environ.get(URL_SETTING)
    if not url:
        print(f"error: no database URL: give one, or set {URL_SETTING} (make server DATABASE_URL=...)", file=sys.stderr)
        return 2
    try:
        found = check(url)
        if args.action == "upgrade":
            upgrade(url)
            found += ", schema up to date"
    except DatabaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"database {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
