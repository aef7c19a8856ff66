"""Ledger engines (SQLite in WAL mode, or PostgreSQL), where the ledger is, and the versioned schema.

Engines are created lazily and cached per URL and process; nothing connects at import.

Where the ledger is comes from the ``omni_erp_ledger`` connection (``locate_ledger``): ``postgres``
(the URL built by the postgres provider's ``PostgresHook``, with the connection's extras such as
``sslmode`` passed to libpq, driver psycopg 3) or ``sqlite`` (host = file path). When the connection
is undefined the *embedded* SQLite file (``$OMNI_ERP_LEDGER_PATH``, else under ``$AIRFLOW_HOME``) is
used, loudly: a WARNING each time it is chosen, and refused outright when Airflow's ``[core] executor``
is not ``LocalExecutor`` - with Celery or Kubernetes workers every host would get a private ledger
that the inbox never writes to. Setting ``OMNI_ERP_LEDGER_PATH`` does not lift the refusal (a SQLite
file in WAL mode cannot be shared between hosts); a deployment that really runs every process on one
host says so by defining the connection as ``sqlite`` with the file in ``host``.

Every ledger carries an identity (``ledger_identity``): a UUID created once with the schema, which the
inbox reports in its authenticated health answer and the flows log, so both sides can be compared.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, select, text

from omni_erp import settings
from omni_erp.exceptions import OmniErpError
from omni_erp.ledger import tables
from omni_erp.timeutil import now

log = logging.getLogger(__name__)

IDENTITY_KEY = "identity"  # ledger_meta row holding the ledger's UUID
LOCAL_EXECUTORS = frozenset({"LocalExecutor"})  # executors whose tasks all run on the scheduler's host


class LedgerConfigError(OmniErpError, ValueError):
    """The ledger connection is unusable or the embedded fallback is refused; the message says what to fix."""


@dataclass(frozen=True)
class LedgerLocation:
    """Where the ledger is, as resolved from the configuration.

    :param url: SQLAlchemy URL, password included (never log it; use ``display``).
    :param embedded: True when no connection is defined and the embedded SQLite fallback was chosen.
    """

    url: str
    embedded: bool = False

    def __repr__(self) -> str:
        return f"LedgerLocation({self.display!r}, embedded={self.embedded})"

    @property
    def display(self) -> str:
        """The URL with its password masked, for logs and the authenticated health answer."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return make_url(url).render_as_string(hide_password=True)

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
        cur.execute("PRAGMA busy_timeout=30000")
        _switch_to_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # An AUTOCOMMIT connection (the inbox writer's) runs each statement as its own transaction.
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _switch_to_wal(cursor: Any, attempts: int = 50) -> None:
    """Put the file in WAL mode (persistent, so usually already done by whoever opened it first).

    The switch needs the file to itself: when several processes open a new ledger at once, SQLite may
    answer "database is locked" without waiting for the busy timeout, so retry briefly until one made it.
    """
    import sqlite3

    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # a no-op once the file is in WAL mode
            return
        except sqlite3.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


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
                # Shared by a task's worker threads (max_in_flight, at most 64, and the task's own thread): one
                # pooled connection each at most, held only for their short transactions. All stay open: an SQLite
                # connection is a file handle, while closing the ones above a smaller pool and opening them again
                # (connect and PRAGMAs) cost 0.7 ms CPU per document uploaded with 32 in flight (issue 8).
                engine = create_engine(
                    url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=65, max_overflow=8
                )
                _configure_sqlite(engine)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=56)
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
    """SQLAlchemy URL of the ledger connection, or of the embedded SQLite file (logged as a WARNING).

    :raises LedgerConfigError: see ``locate_ledger``.
    """
    location = locate_ledger(conn_id)
    if location.embedded:
        warn_embedded(location, conn_id)
    return location.url


def warn_embedded(location: LedgerLocation, conn_id: str = settings.LEDGER_CONN_ID) -> None:
    """The one WARNING line that says the embedded SQLite fallback is in use."""
    log.warning(
        "ledger: connection %r is not defined; using the embedded SQLite ledger %s, private to this host. "
        "Define the connection so the inbox and every worker provably share one ledger.",
        conn_id,
        location.display,
    )


def locate_ledger(
    conn_id: str = settings.LEDGER_CONN_ID, *, lookup: Callable[[str], Any | None] | None = None
) -> LedgerLocation:
    """Resolve the ledger from connection ``conn_id`` (read now, never cached); logs nothing.

    :param lookup: ``conn_id -> connection or None``; default ``omni_erp.connections.get_connection``
        (the API-server plugin passes core's lookup, which always includes the metadata DB).
    :raises LedgerConfigError: the connection has an unusable type or no sqlite path, or it is undefined
        while the executor is not local (the embedded fallback would split the ledger between hosts).
    """
    if lookup is None:
        from omni_erp.connections import get_connection as lookup

    conn = lookup(conn_id)
    if conn is None:
        executor = configured_executor()
        if not executors_are_local(executor):
            raise LedgerConfigError(
                f"connection {conn_id!r} is not defined and [core] executor is {executor!r}: the embedded SQLite "
                "ledger would be private to each host, so the inbox and the flows would not share it. Define "
                f"{conn_id!r} (postgres; or sqlite with the file path in host if every process runs on this host)."
            )
        return LedgerLocation(sqlite_url(settings.default_ledger_path()), embedded=True)
    conn_type = (conn.conn_type or "").lower()
    # `airflow connections add --conn-type sqlite` stores "generic" when no sqlite provider is installed.
    if conn_type == "sqlite" or (conn_type in {"generic", ""} and (conn.host or "").startswith("/")):
        if not conn.host:
            raise LedgerConfigError(f"connection {conn_id!r}: a sqlite ledger needs the file path in 'host'")
        return LedgerLocation(sqlite_url(conn.host))
    if conn_type in {"postgres", "postgresql"}:
        return LedgerLocation(postgres_url(conn, conn_id))
    raise LedgerConfigError(
        f"connection {conn_id!r}: ledger conn_type must be sqlite (host = absolute file path) or postgres, not {conn_type!r}"
    )


def postgres_url(conn: Any, conn_id: str) -> str:
    """The URL ``PostgresHook`` builds for ``conn``, plus the libpq parameters among its extras.

    ``PostgresHook.sqlalchemy_url`` (provider 7.1.1) carries login, password, host, port, schema and
    the ``sqlalchemy_query`` extra, but not plain extras such as ``sslmode`` or ``options``: the hook
    passes those to libpq only in ``get_conn``. We add them to the URL's query, which SQLAlchemy hands
    to psycopg as connection parameters, so the ledger connects the way the hook would.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=conn_id, connection=conn, sqlalchemy_scheme="postgresql+psycopg")
    url = hook.sqlalchemy_url
    libpq_params = {
        name: str(value)
        for name, value in (conn.extra_dejson or {}).items()
        if name not in PostgresHook.ignored_extra_options and value is not None
    }
    return url.set(query={**libpq_params, **url.query}).render_as_string(hide_password=False)


def configured_executor() -> str:
    """Airflow's ``[core] executor`` setting as written (e.g. ``LocalExecutor``, ``CeleryExecutor,KubernetesExecutor``)."""
    from airflow.sdk.configuration import conf

    return conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor"


def executors_are_local(executor_setting: str) -> bool:
    """True when every executor named in ``executor_setting`` runs tasks on this host (``LocalExecutor``).

    Understands Airflow's forms: ``LocalExecutor``, a module path, ``alias:LocalExecutor``, several
    executors separated by commas, and per-team lists (``LocalExecutor;team1=CeleryExecutor``).
    """
    names = [
        entry.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        for team_part in executor_setting.split(";")
        for entry in team_part.rpartition("=")[2].split(",")
        if entry.strip()
    ]
    return bool(names) and all(name in LOCAL_EXECUTORS for name in names)


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


def _v3(conn: Connection) -> None:
    """Ledger identity: a UUID created once, so the inbox and the flows can show they use the same ledger."""
    if not inspect(conn).has_table(tables.ledger_meta.name):
        tables.ledger_meta.create(conn)
    if _read_identity(conn) is None:
        conn.execute(tables.ledger_meta.insert().values(key=IDENTITY_KEY, value=str(uuid.uuid4()), created_at=now()))


def _v4(conn: Connection) -> None:
    """Issue 12: the RMS returns reports and the returns whose credit note Increff RMS raises."""
    existing = set(inspect(conn).get_table_names())
    for table in (tables.rms_report, tables.rms_return):
        if table.name not in existing:
            table.create(conn)


def _v5(conn: Connection) -> None:
    """Issue 10: business SLA breaches, so each is alerted once (omni_erp.rules.sla)."""
    if not inspect(conn).has_table(tables.sla_breach.name):
        tables.sla_breach.create(conn)


def _v6(conn: Connection) -> None:
    """Issue 10: which runs alerted and the incidents their alerts are summarised in."""
    existing = set(inspect(conn).get_table_names())
    for table in (tables.alert_run, tables.alert_incident):
        if table.name not in existing:
            table.create(conn)


# Ordered; each step runs once, in its own transaction, and records its version.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
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


# --- identity --------------------------------------------------------------------------------


def _read_identity(conn: Connection) -> str | None:
    meta = tables.ledger_meta
    return conn.execute(select(meta.c.value).where(meta.c.key == IDENTITY_KEY)).scalar()


def _required_identity(conn: Connection) -> str:
    identity = _read_identity(conn)
    if identity is None:  # only if someone deleted the row: refuse rather than invent a new identity
        raise LedgerConfigError("the ledger has no identity row in ledger_meta; restore it from a backup")
    return identity


def ledger_identity(engine: Engine) -> str:
    """The ledger's UUID, created once by schema migration 3 and never changed."""
    with engine.connect() as conn:
        return _required_identity(conn)


def describe_ledger(engine: Engine) -> dict[str, Any]:
    """Backend, identity and schema version, read from the database in one connection."""
    with engine.connect() as conn:
        return {"backend": engine.dialect.name, "identity": _required_identity(conn), "schema_version": current_version(conn)}
