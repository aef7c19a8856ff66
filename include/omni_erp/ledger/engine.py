"""Ledger engines (SQLite in WAL mode, or PostgreSQL) and the versioned schema migrations.

Engines are created lazily and cached per URL and process; nothing connects at import.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text

from omni_erp import settings
from omni_erp.ledger import tables
from omni_erp.timeutil import now

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers; ``BEGIN IMMEDIATE`` so every transaction is a single writer.

    pysqlite's own transaction handling would start a deferred transaction and fail with
    "database is locked" on upgrade; taking the write lock up front makes claims serialised.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def get_engine(url: str) -> Engine:
    """Return the cached engine for ``url`` with its schema migrated to the current version."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                db_file = url.split(":///", 1)[1]
                Path(db_file).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
                _configure_sqlite(engine)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
            _engines[url] = engine
        if url not in _migrated:
            migrate(engine)
            _migrated.add(url)
        return engine


def dispose_all() -> None:
    """Close every cached engine (tests, and forked workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()


def ledger_url_for_conn_id(conn_id: str = settings.LEDGER_CONN_ID) -> str:
    """SQLAlchemy URL of the ledger connection, or the embedded SQLite default when it is not defined."""
    from omni_erp.connections import get_connection

    conn = get_connection(conn_id)
    if conn is None:
        return sqlite_url(settings.default_ledger_path())
    conn_type = (conn.conn_type or "").lower()
    # `airflow connections add --conn-type sqlite` stores "generic" when no sqlite provider is installed.
    if conn_type == "sqlite" or (conn_type in {"generic", ""} and (conn.host or "").startswith("/")):
        if not conn.host:
            raise ValueError(f"connection {conn_id!r}: a sqlite ledger needs the file path in 'host'")
        return sqlite_url(conn.host)
    if conn_type in {"postgres", "postgresql"}:
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or "localhost",
            port=conn.port or 5432,
            database=conn.schema or "postgres",
        ).render_as_string(hide_password=False)
    raise ValueError(
        f"connection {conn_id!r}: ledger conn_type must be sqlite (host = absolute file path) or postgres, not {conn_type!r}"
    )


# --- migrations ---------------------------------------------------------------------------


def _v1(conn: Connection) -> None:
    existing = set(inspect(conn).get_table_names())
    for table in (tables.inbox_message, tables.ajio_order, tables.outbound_call, tables.dead_letter, tables.sync_cursor):
        if table.name not in existing:
            table.create(conn)


def _v2(conn: Connection) -> None:
    """F2-F6: ERP documents, shipments, return orders, manual settlements; cancellation route on orders."""
    existing = set(inspect(conn).get_table_names())
    for table in (tables.erp_document, tables.shipment, tables.return_order, tables.manual_settlement):
        if table.name not in existing:
            table.create(conn)
    order_columns = {c["name"] for c in inspect(conn).get_columns(tables.ajio_order.name)}
    for column in ("cancel_route VARCHAR(32)", "closed_at TIMESTAMP WITH TIME ZONE"):
        if column.split()[0] not in order_columns:
            ddl = column if conn.dialect.name == "postgresql" else column.replace(" WITH TIME ZONE", "")
            conn.execute(text(f"ALTER TABLE {tables.ajio_order.name} ADD COLUMN {ddl}"))


# Ordered; each step runs once, in its own transaction, and records its version.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def _lock_for_migration(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
    # SQLite: BEGIN IMMEDIATE already holds the single write lock.


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(tables.schema_version.name):
        return 0
    return conn.execute(select(tables.schema_version.c.version).order_by(tables.schema_version.c.version.desc())).scalar() or 0


def migrate(engine: Engine) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; safe when several processes start at once."""
    with engine.begin() as conn:
        _lock_for_migration(conn)
        if not inspect(conn).has_table(tables.schema_version.name):
            tables.schema_version.create(conn)
        version = current_version(conn)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"ledger schema is version {version}, newer than this package ({SCHEMA_VERSION}); upgrade omni_erp"
            )
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("ledger: applying schema migration %d", number)
            step(conn)
            conn.execute(tables.schema_version.insert().values(version=number, applied_at=now()))
        return SCHEMA_VERSION
