"""Look up an Airflow connection, treating "not defined" as None so callers can fall back to defaults."""

from __future__ import annotations

from typing import Any


def get_connection(conn_id: str) -> Any | None:
    """Return the connection ``conn_id``, or None when it is not defined.

    Inside a task the Task SDK asks the execution API; in a plain process (tests, the standalone
    inbox, the demo) it reads ``AIRFLOW_CONN_*`` variables and configured secrets backends.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
