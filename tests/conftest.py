"""Shared test settings: hypothesis profiles (derandomized on CI so CI is not flaky)."""

from __future__ import annotations

import importlib.util
import os

from hypothesis import HealthCheck, settings

# The PostgreSQL server fixtures (`postgres_cluster`, `postgres_dsn`): tests/_postgres.py;
# the worker tests' `dsn` and `store`: tests/_pg_fixtures.py (it needs the postgres extra).
pytest_plugins = ["_postgres", *(["_pg_fixtures"] if importlib.util.find_spec("psycopg") else [])]

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=40)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
