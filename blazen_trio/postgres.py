"""The PostgreSQL checkpoint store: `from blazen_trio.postgres import PostgresCheckpointStore`.

A public submodule, not a name of `blazen_trio` itself, because it needs psycopg 3 and
psycopg-pool, which only the `postgres` extra installs: `pip install 'blazen_trio[postgres]'`.
`bz.Worker` and `bz.WorkflowClient` need no driver of their own: they work through this store.
"""

# Imported first only to fail with the name of the extra that brings it.
try:
    import psycopg as _psycopg  # noqa: F401
    import psycopg_pool as _psycopg_pool  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "blazen_trio.postgres needs psycopg 3 and psycopg-pool; install the extra: "
        "pip install 'blazen_trio[postgres]'",
        name=exc.name,
    ) from exc

from ._postgres import (
    SCHEMA_VERSION as SCHEMA_VERSION,
    PostgresCheckpointStore as PostgresCheckpointStore,
)

PostgresCheckpointStore.__module__ = __name__  # tracebacks and reprs name what users import
