"""A real PostgreSQL server for the registry's tests, from Debian's ``postgresql`` package.

One server per test session, in its own temporary directory (data, log and unix socket) and
on a free loopback port, so neither the system's cluster nor a server some earlier session
left behind can be in the way; each test gets a fresh database on it. The server is stopped
(``pg_ctl stop -m immediate``) when the session ends. initdb refuses to run as root, so under
root the server runs as the ``postgres`` user the Debian package creates.

Fixtures: ``postgres_server`` (session), ``postgres_url`` (a new empty database), and
``registry_location``, parametrized over the two stores: a SQLite path, or a PostgreSQL URL.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's postgresql and libpq5 packages (`make sysdeps` does)"
SERVER_USER = "postgres"  # created by Debian's postgresql-common
DB_USER = "loa"  # the cluster's superuser, trust authentication on loopback only
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    _databases: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its name."""
        import psycopg

        name = f"registry_{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            # A production server's database usually collates by a language, not bytewise, and
            # Debian's default (glibc en_US.UTF-8) skips punctuation at first: so do the tests'
            # databases (ICU, "ka-shifted"), so the store's own COLLATE "C" is what keeps text
            # order bytewise.
            try:
                admin.execute(
                    f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' "
                    "LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C.UTF-8'"
                )
            except psycopg.Error:
                admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _bindir() -> Path | None:
    """The newest installed server version's binaries."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


def _run(command: list[str], root: Path) -> None:
    result = subprocess.run(
        _as_server_user(command), capture_output=True, text=True, check=False, timeout=120,
        cwd=root,
    )  # fmt: skip
    if result.returncode != 0:
        log = root / "server.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            f"\nserver.log:\n{tail}"
        )


def _start(bindir: Path) -> PostgresServer:
    # Not under pytest's basetemp: that is mode 0700 and root's, which the postgres user
    # could not enter. mkdtemp in /tmp is private to us, and then handed to the server user.
    root = Path(tempfile.mkdtemp(prefix="loa-pg-"))
    if os.geteuid() == 0:
        server = pwd.getpwnam(SERVER_USER)
        os.chown(root, server.pw_uid, server.pw_gid)
    try:
        _run(
            [str(bindir / "initdb"), "-D", str(root / "data"), "-U", DB_USER, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            root,
        )  # fmt: skip
        # A port taken between the probe and the server's bind makes the start fail: try again.
        for attempt in itertools.count(1):
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={root} -c fsync=off -c full_page_writes=off "
                "-c max_connections=50"
            )
            try:
                _run(
                    [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l",
                     str(root / "server.log"), "-o", options, "-w", "-t", str(START_TIMEOUT_S),
                     "start"],
                    root,
                )  # fmt: skip
                return PostgresServer(bindir, root, port)
            except RuntimeError:
                if attempt == 3:
                    raise
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


def _stop(server: PostgresServer) -> None:
    try:
        _run(
            [str(server.bindir / "pg_ctl"), "-D", str(server.data), "stop", "-m", "immediate"],
            server.root,
        )
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb): {INSTALL_HINT}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"no {SERVER_USER} user to run the server as root: {INSTALL_HINT}")
    try:
        import psycopg  # noqa: F401  (its pure-Python mode needs libpq5)
    except ImportError as exc:
        if "libpq" not in str(exc):
            raise  # psycopg itself is missing: `pip install -e '.[dev]'`, not a skip
        pytest.skip(f"psycopg cannot load libpq ({exc}): {INSTALL_HINT}")
    server = _start(bindir)
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)],
)
def registry_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a registry is, once per store: ``open_registry`` opens either."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(tmp_path / "registry.db")
