"""A real PostgreSQL server for the tests: a throwaway cluster, or `BLAZEN_TRIO_TEST_DSN`.

`Cluster.start()` runs `initdb` and `pg_ctl` from the server binaries on the machine (on PATH,
or Debian's /usr/lib/postgresql/*/bin) in a temporary directory, on a free loopback port, as
the `postgres` user when the tests run as root (initdb refuses root), the way
pytest-postgresql's executor does. Never a mock. Each test gets a schema of its own
(`search_path` in its DSN), dropped afterwards.

Without a server the tests that need one skip, saying why; with
`BLAZEN_TRIO_REQUIRE_POSTGRES=1` (set by `.ci/run`) they fail instead, so CI cannot skip them.
"""

from __future__ import annotations

import glob
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import NoReturn

import attrs
import pytest

try:
    import psycopg
except ImportError:  # the postgres extra is not installed: the tests say so
    psycopg = None  # type: ignore[assignment]  # checked before every use

REQUIRED = os.environ.get("BLAZEN_TRIO_REQUIRE_POSTGRES") == "1"
DSN_VARIABLE = "BLAZEN_TRIO_TEST_DSN"


def unavailable(reason: str) -> NoReturn:
    """Skip (or, when CI requires PostgreSQL, fail) a test that needs the server."""
    message = f"PostgreSQL not available: {reason}"
    if REQUIRED:
        pytest.fail(f"{message} (BLAZEN_TRIO_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(message)


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define
class Cluster:
    """A PostgreSQL server this test session started, or one it was given."""

    dsn: str
    directory: pathlib.Path | None = None
    pg_ctl: str | None = None
    as_user: list[str] = attrs.Factory(list)
    options: str = ""

    @classmethod
    def start(cls) -> Cluster:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            unavailable("no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
        directory = pathlib.Path(tempfile.mkdtemp(prefix="blazen-trio-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        port = free_port()
        data = directory / "data"
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
             "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True,
        )  # fmt: skip
        # Speed over durability: a crash of this machine loses a throwaway cluster anyway.
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        cluster = cls(
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
            directory,
            pg_ctl,
            as_user,
            options,
        )
        cluster.bring_up()
        return cluster

    def restart(self) -> None:
        """Stop the server (fast: connections are cut) and start it again, the same way."""
        self.take_down()
        self.bring_up()

    def take_down(self) -> None:
        """Stop the server, keeping its data (`bring_up` starts it again)."""
        assert self.pg_ctl is not None
        assert self.directory is not None
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.directory / "data"), "-m", "fast", "-w",
             "stop"],
            check=True, capture_output=True,
        )  # fmt: skip

    def bring_up(self) -> None:
        """Start the server on its data directory, port and options."""
        assert self.pg_ctl is not None
        assert self.directory is not None
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.directory / "data"), "-o", self.options,
             "-l", str(self.directory / "log"), "-w", "start"],
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.pg_ctl is None or self.directory is None:
            return
        data = str(self.directory / "data")
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)

    def new_schema(self) -> tuple[str, str]:
        """A fresh schema, and a DSN whose tables go there."""
        assert psycopg is not None
        schema = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        return schema, f"{self.dsn} options='-c search_path={schema}'"

    def drop_schema(self, schema: str) -> None:
        assert psycopg is not None
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """The session's PostgreSQL server, started once and stopped at the end."""
    if psycopg is None:
        unavailable("psycopg is not installed (pip install -e '.[dev]')")
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield Cluster(given)
        return
    try:
        cluster = Cluster.start()
    except (subprocess.CalledProcessError, OSError, KeyError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        unavailable(f"cannot start a cluster: {exc} {detail.decode(errors='replace')}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_dsn(postgres_cluster: Cluster) -> Iterator[str]:
    """A DSN whose tables live in a schema of this test's own."""
    schema, dsn = postgres_cluster.new_schema()
    try:
        yield dsn
    finally:
        postgres_cluster.drop_schema(schema)
