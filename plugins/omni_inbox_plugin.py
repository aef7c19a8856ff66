"""Airflow plugin that serves the Omni inbox inside the API server at ``/omni`` (style.md section 2)."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from omni_erp import settings
from omni_erp.inbox.app import URL_PREFIX, InboxSettings, create_inbox_app
from omni_erp.inbox.auth import ConnectionAuthSource


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


def _inbox_settings() -> InboxSettings:
    """Credentials from ``omni_inbox`` (cached a minute), the ledger from ``omni_erp_ledger`` (re-read every few seconds)."""
    credentials = ConnectionAuthSource(settings.INBOX_CONN_ID, lookup=_server_connection)
    return InboxSettings(
        api_key=credentials.api_key,
        dynamic_credentials=credentials.dynamic_credentials,
        ledger_conn_id=settings.LEDGER_CONN_ID,
        connection_lookup=_server_connection,
    )


class OmniInboxPlugin(AirflowPlugin):
    """Mounts the inbox; credentials and ledger are read on request, so importing this does no I/O.

    The ledger comes from connection ``omni_erp_ledger`` (embedded SQLite when undefined and the
    executor is local), re-read every few seconds so the inbox follows a changed connection, as the
    DAGs do; its identity is in the authenticated ``GET /omni/health`` answer.
    """

    name = "omni_inbox"
    fastapi_apps = [{"app": create_inbox_app(_inbox_settings()), "url_prefix": URL_PREFIX, "name": "Omni inbox"}]
