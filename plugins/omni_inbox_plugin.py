"""Airflow plugin that serves the Omni inbox inside the API server at ``/omni`` (style.md section 2)."""

from __future__ import annotations

import threading
import time
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from omni_erp import settings
from omni_erp.inbox.app import URL_PREFIX, InboxSettings, create_inbox_app

KEY_CACHE_SECONDS = 60.0  # a rotated key takes effect within a minute without a metadata-DB query per posting


def _server_connection(conn_id: str) -> Any | None:
    """The connection as the API server sees it: ``AIRFLOW_CONN_*``, secrets backends, then the metadata DB.

    Core's lookup always includes the metadata DB; the Task SDK's only does when the process is
    marked as a server (``airflow.api_fastapi.main`` does that, an app built by other means may not).
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


class _InboxKey:
    """Zero-argument callable returning the ``omni_inbox`` password, cached briefly; a missing key is not cached."""

    def __init__(self, conn_id: str = settings.INBOX_CONN_ID, ttl: float = KEY_CACHE_SECONDS) -> None:
        self._conn_id = conn_id
        self._ttl = ttl
        self._value: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            if self._value is None or time.monotonic() >= self._expires:
                conn = _server_connection(self._conn_id)
                self._value = (conn.password or None) if conn is not None else None
                self._expires = time.monotonic() + self._ttl
            return self._value


class OmniInboxPlugin(AirflowPlugin):
    """Mounts the inbox; the key and ledger are read on the first request, so importing this does no I/O.

    The ledger comes from connection ``omni_erp_ledger`` (embedded SQLite when undefined) through
    ``Ledger.from_conn_id``, which in the API server also sees connections stored in the metadata DB.
    """

    name = "omni_inbox"
    fastapi_apps = [
        {
            "app": create_inbox_app(InboxSettings(api_key=_InboxKey(), ledger_conn_id=settings.LEDGER_CONN_ID)),
            "url_prefix": URL_PREFIX,
            "name": "Omni inbox",
        }
    ]
