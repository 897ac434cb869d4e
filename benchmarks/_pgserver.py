"""A throwaway PostgreSQL server from the binaries on the machine, for the tests and the suite.

`Cluster.start()` runs `initdb` and `pg_ctl` (on PATH, or Debian's /usr/lib/postgresql/*/bin)
in a temporary directory, on a free loopback port, as the `postgres` user when run as root
(initdb refuses root), the way pytest-postgresql's executor does. `ServerUnavailable` says why
no server could be started. Stdlib only (the peer drivers import it from their venvs); the
helpers that talk to the server need psycopg.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

try:
    import psycopg
    import psycopg.conninfo
except ImportError:  # the postgres extra is not installed: the helpers that need it say so
    psycopg = None  # type: ignore[assignment]  # checked before every use

BENCH_DSN_VARIABLE = "BLAZEN_TRIO_BENCH_DSN"
"""A server for the benchmark suite to use instead of starting one (it creates databases)."""

FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
"""Speed over durability, for the tests: a crash of the machine loses a throwaway cluster."""


class ServerUnavailable(Exception):
    """No server could be started here; the message says why."""


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


def _connect_check() -> None:
    if psycopg is None:
        raise ServerUnavailable("psycopg is not installed (pip install -e '.[postgres]')")


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    _connect_check()
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ServerUnavailable(f"cannot connect: {' '.join(str(exc).split())}") from exc


@dataclasses.dataclass
class Cluster:
    """A PostgreSQL server this process started, or one it was given (`Cluster(dsn)`)."""

    dsn: str
    directory: pathlib.Path | None = None
    pg_ctl: str | None = None
    as_user: list[str] = dataclasses.field(default_factory=list)
    options: str = ""

    @classmethod
    def start(cls, *, durable: bool = False) -> Cluster:
        """A new cluster; `durable` keeps PostgreSQL's own fsync and commit settings."""
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise ServerUnavailable("no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
        try:
            return cls._start(initdb, pg_ctl, durable)
        except (subprocess.CalledProcessError, OSError, KeyError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise ServerUnavailable(
                f"cannot start a cluster: {exc} {detail.decode(errors='replace')}"
            ) from exc

    @classmethod
    def _start(cls, initdb: str, pg_ctl: str, durable: bool) -> Cluster:
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
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c max_connections=300"
            + ("" if durable else f" {FAST}")
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
        schema = f"t_{uuid.uuid4().hex[:16]}"
        with _connect(self.dsn) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        return schema, f"{self.dsn} options='-c search_path={schema}'"

    def drop_schema(self, schema: str) -> None:
        with _connect(self.dsn) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def settings(self) -> dict[str, str]:
        """The server's version and the settings that decide what a commit costs."""
        names = ("server_version", "fsync", "synchronous_commit")
        with _connect(self.dsn) as connection:
            shown = [connection.execute(f"SHOW {name}").fetchone() for name in names]
        return {name: str(row[0]) for name, row in zip(names, shown, strict=True) if row}


def fresh_database(dsn: str, name: str) -> str:
    """Drop and create database `name` on the server of `dsn`; a DSN naming it."""
    with _connect(dsn) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


@contextlib.contextmanager
def bench_server() -> Iterator[Cluster]:
    """The suite's server: `BLAZEN_TRIO_BENCH_DSN`'s, or a throwaway cluster with
    PostgreSQL's own durability (fsync, synchronous commit), stopped at the end."""
    _connect_check()
    given = os.environ.get(BENCH_DSN_VARIABLE)
    cluster = Cluster(given) if given else Cluster.start(durable=True)
    try:
        cluster.settings()  # reachable
        yield cluster
    finally:
        cluster.stop()
