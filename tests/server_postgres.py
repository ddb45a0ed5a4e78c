"""A real PostgreSQL server for tests: Debian's ``initdb`` and ``pg_ctl``, one per session.

The server listens on 127.0.0.1 and a free port, keeps its data directory, its unix socket
and its log in one temporary directory, and is stopped (and the directory removed) on exit::

    with Postgres() as pg:
        url = pg.create_database("journal_a")   # postgresql://rotator:...@127.0.0.1:port/...

PostgreSQL refuses to run as root. Run as root (a CI machine), the server runs as the
``postgres`` account the Debian package creates (or ``nobody`` where there is none), and the
temporary directory is handed to it; run as anyone else, it runs as that user. Access needs
a password (scram-sha-256), generated per server. ``stop()`` and ``start()`` restart the same
cluster on the same port, for tests that lose the database mid-rotation.

The binaries come from the Debian package ``postgresql`` (``scripts/setup.sh --tests``
installs it when missing): ``/usr/lib/postgresql/15/bin``, or the newest version there, or
``$ROTATOR_TEST_PG_BIN``. Nothing here imports pytest.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from servers import ServerError, free_port

PG_VERSION = "15"
_LOCAL = "127.0.0.1"
_USER = "rotator"


def pg_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; ``ServerError`` if there is none."""
    configured = os.environ.get("ROTATOR_TEST_PG_BIN")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path(f"/usr/lib/postgresql/{PG_VERSION}/bin"))
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if p.name.isdigit()),
                          key=lambda p: int(p.name), reverse=True)
        candidates += [v / "bin" for v in versions]
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise ServerError("PostgreSQL not found: install the Debian package postgresql "
                      "(bash scripts/setup.sh --tests does) or set ROTATOR_TEST_PG_BIN")


def _server_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerError("running as root and there is neither a postgres nor a nobody account "
                      "to run PostgreSQL as: create one (useradd --system postgres)")


class Postgres:
    """One PostgreSQL cluster on 127.0.0.1; a context manager."""

    def __init__(self) -> None:
        self.bin = pg_bin_dir()
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.account = _server_account()
        self.tmp = Path(tempfile.mkdtemp(prefix="rotator-pg-"))
        self.data = self.tmp / "data"
        self.socket_dir = self.tmp / "socket"
        self.log = self.tmp / "server.log"
        self._running = False

    @property
    def admin_url(self) -> str:
        """The URL of the ``postgres`` database, as the superuser ``rotator``."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{_USER}:{self.password}@{_LOCAL}:{self.port}/{database}"

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self, *args: str) -> None:
        extra: dict[str, Any] = {}
        if self.account is not None:
            extra = {"user": self.account.pw_uid, "group": self.account.pw_gid,
                     "extra_groups": []}
        done = subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=self.tmp,
                              capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   "LC_ALL": "C", "TZ": "UTC"},
                              **extra)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerError(f"{args[0]} failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout)[-2000:]}\n{log}")

    def _prepare(self) -> None:
        self.tmp.chmod(0o700)
        self.socket_dir.mkdir(mode=0o700)
        pwfile = self.tmp / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.account is not None:
            for path in (self.tmp, self.socket_dir, pwfile):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", _USER, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink()

    def start(self) -> None:
        """Start the cluster (again) on the same port."""
        # fsync=off: a crash of the server process (stop("immediate")) loses nothing, only
        # a crash of the machine would, and a test cluster does not outlive it.
        options = (f"-h {_LOCAL} -p {self.port} -k {self.socket_dir} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster: ``fast`` (clients disconnected) or ``immediate`` (like a crash)."""
        if self._running:
            self._running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def __enter__(self) -> Self:
        try:
            self._prepare()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stop("immediate")
        except ServerError:
            pass
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- administration --------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create the database ``name`` (dropping an older one) and return its URL."""
        import psycopg  # the postgres extra; only tests that use a database need it

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


    def create_schema(self, name: str, database: str = "postgres") -> str:
        """Create the schema ``name`` in ``database`` and return a URL whose search path is
        that schema alone: a fresh, empty journal far quicker than a new database."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url(database)}?options=-csearch_path%3D{name}"


__all__ = ["PG_VERSION", "Postgres", "pg_bin_dir"]
