"""SLA alerts: the deadline callback (runs in the triggerer) and the task-failure callback (runs on the worker).

Both log at ERROR with the DAG, run and reason; when the ``omni_erp_alerts`` HTTP connection exists
they also POST a small JSON message to it (a chat or paging webhook). No payloads, no secrets.
"""

from __future__ import annotations

import logging
from typing import Any

ALERTS_CONN_ID = "omni_erp_alerts"

log = logging.getLogger(__name__)


def _message(kind: str, flow: str, dag_id: str | None, run_id: str | None, detail: str) -> dict[str, Any]:
    return {"kind": kind, "flow": flow, "dag_id": dag_id, "run_id": run_id, "detail": detail[:500]}


async def deadline_missed(flow: str, context: dict[str, Any] | None = None, **_: Any) -> None:
    """DeadlineAlert callback: the run did not finish in time (the warehouse may be waiting to pick)."""
    dag_run = (context or {}).get("dag_run") or {}
    deadline = (context or {}).get("deadline") or {}
    message = _message(
        "deadline_missed",
        flow,
        dag_run.get("dag_id"),
        dag_run.get("dag_run_id") or dag_run.get("run_id"),
        f"run not finished by {deadline.get('deadline_time')}",
    )
    log.error("SLA missed: %s", message)
    from omni_erp.connections import get_connection

    if get_connection(ALERTS_CONN_ID) is None:
        return
    from airflow.providers.http.hooks.http import HttpAsyncHook

    await HttpAsyncHook(method="POST", http_conn_id=ALERTS_CONN_ID, retry_limit=3).run(json=message)


def task_failed(context: Any) -> None:
    """``on_failure_callback``: one ERROR line (and webhook post) naming the task and the reason."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    message = _message(
        "task_failed",
        (context.get("params") or {}).get("flow", "-"),
        getattr(ti, "dag_id", None),
        getattr(dag_run, "run_id", None),
        f"{getattr(ti, 'task_id', '?')}: {context.get('exception')}",
    )
    log.error("Task failed: %s", message)
    from omni_erp.connections import get_connection

    if get_connection(ALERTS_CONN_ID) is None:
        return
    from airflow.providers.http.hooks.http import HttpHook

    HttpHook(method="POST", http_conn_id=ALERTS_CONN_ID).run(json=message, extra_options={"timeout": 10})


def send_alert(message: dict[str, Any]) -> None:
    """Send one alert that is not about a run (e.g. a business SLA breach from the reconciliation DAG).

    One ERROR log line; and, when the ``omni_erp_alerts`` HTTP connection exists, a POST of ``message`` to it
    (10 s timeout, 3 attempts with backoff on connection errors, timeouts and 5xx).

    :raises Exception: the webhook refused the alert or stayed unreachable: the caller records nothing as
        alerted, so its next run sends the alert again.
    """
    log.error("Alert %s: %s", message.get("kind", "-"), message)
    from omni_erp.connections import get_connection

    if get_connection(ALERTS_CONN_ID) is None:
        return
    import requests
    import tenacity
    from airflow.providers.http.hooks.http import HttpHook

    def passing_trouble(exc: BaseException) -> bool:
        response = getattr(exc, "response", None)
        return isinstance(exc, (requests.ConnectionError, requests.Timeout)) or (
            response is not None and response.status_code >= 500
        )

    HttpHook(method="POST", http_conn_id=ALERTS_CONN_ID).run_with_advanced_retry(
        _retry_args={
            "stop": tenacity.stop_after_attempt(3),
            "wait": tenacity.wait_exponential(multiplier=0.5, max=5),
            "retry": tenacity.retry_if_exception(passing_trouble),
            "reraise": True,
        },
        json=message,
        extra_options={"timeout": 10},
    )
