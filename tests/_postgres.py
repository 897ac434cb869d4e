"""A real PostgreSQL server for the tests: a throwaway cluster, or `BLAZEN_TRIO_TEST_DSN`.

`Cluster.start()` (benchmarks/_pgserver.py, shared with the benchmark suite) runs `initdb` and
`pg_ctl` from the server binaries on the machine in a temporary directory. Never a mock. Each
test gets a schema of its own (`search_path` in its DSN), dropped afterwards.

Without a server the tests that need one skip, saying why; with
`BLAZEN_TRIO_REQUIRE_POSTGRES=1` (set by `.ci/run`) they fail instead, so CI cannot skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from benchmarks._pgserver import Cluster, ServerUnavailable

try:
    import psycopg
except ImportError:  # the postgres extra is not installed: the tests say so
    psycopg = None  # type: ignore[assignment]  # checked before every use

__all__ = ["Cluster", "postgres_cluster", "postgres_dsn"]

REQUIRED = os.environ.get("BLAZEN_TRIO_REQUIRE_POSTGRES") == "1"
DSN_VARIABLE = "BLAZEN_TRIO_TEST_DSN"


def unavailable(reason: str) -> NoReturn:
    """Skip (or, when CI requires PostgreSQL, fail) a test that needs the server."""
    message = f"PostgreSQL not available: {reason}"
    if REQUIRED:
        pytest.fail(f"{message} (BLAZEN_TRIO_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(message)


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
    except ServerUnavailable as exc:
        unavailable(str(exc))
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
