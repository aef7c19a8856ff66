"""The settings a CeleryExecutor deployment of this package needs, in one place.

``make cluster`` (``python -m omni_erp.cluster``) applies them to processes on this machine, and
``docker-compose.yaml`` carries the same values for containers; ``tests/cluster/test_compose.py`` checks
that the two agree, so the stack that was measured here is the stack that is shipped.
"""

from __future__ import annotations

import json
from typing import Any

# Airflow settings every component of the cluster shares (env var -> value), deployment-independent.
SHARED_AIRFLOW_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    # The scheduler's /health endpoint (port 8974) - the compose health check and make cluster's wait use it.
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
    # Task slots per Celery worker. Our tasks spend their time waiting for the ERP and Omni, not on CPU,
    # but each is a Python process of ~150 MB: 4 per worker keeps a 2-core, 4 GB worker busy, not swapping.
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
    # A worker takes one task at a time from the broker, so a busy worker does not hoard queued tasks
    # that an idle one could run (Celery's default prefetches 4 per slot).
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
}

# The connections the DAGs use (id -> conn_type); the ledger must be shared by every worker, so it is
# PostgreSQL here, never the embedded SQLite (refused under a non-local executor).
CONNECTION_TYPES: dict[str, str] = {
    "omni_erp_ledger": "postgres",
    "erp_default": "http",
    "omni_default": "http",
    "omni_inbox": "generic",
}

LEDGER_DATABASE = "omni_erp"  # the ledger's database, beside Airflow's metadata database on the same server
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"


def connection_env(connections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` variables (Airflow's JSON form) for ``connections`` (id -> fields).

    :raises ValueError: when a connection id is not one the DAGs use, or has another conn_type.
    """
    env = {}
    for conn_id, fields in connections.items():
        expected = CONNECTION_TYPES.get(conn_id)
        if expected is None:
            raise ValueError(f"unknown connection {conn_id!r}; the DAGs use {sorted(CONNECTION_TYPES)}")
        if fields.get("conn_type") != expected:
            raise ValueError(f"connection {conn_id!r} must have conn_type {expected!r}, got {fields.get('conn_type')!r}")
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(fields)
    return env


def ensure_database(server_url: str, name: str = LEDGER_DATABASE) -> bool:
    """Create database ``name`` on the PostgreSQL server of ``server_url`` unless it exists; True if created.

    The ledger's own schema is created and migrated by the ledger on first use; this only makes the
    empty database (``CREATE DATABASE`` cannot run inside a transaction, hence AUTOCOMMIT).
    """
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
                return False
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            return True
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """``python -m omni_erp.cluster.config ensure-ledger-db <server-url>``: the compose init step's database."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m omni_erp.cluster.config")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("ensure-ledger-db", help="create the ledger database unless it exists")
    create.add_argument("server_url", help="SQLAlchemy URL of any database on the server (e.g. Airflow's)")
    create.add_argument("--name", default=LEDGER_DATABASE)
    args = parser.parse_args(argv)
    created = ensure_database(args.server_url, args.name)
    print(f"ledger database {args.name!r} {'created' if created else 'already exists'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
