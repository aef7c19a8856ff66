"""Alert notifiers: the failure callback (task runner) and the deadline callback (triggerer), one per incident.

Both are ``BaseNotifier`` subclasses that send through the connection ``omni_erp_alerts``, so the channel
is swapped without code: an ``http`` connection is a webhook that gets a JSON body with a ``text`` field
(what Slack/Mattermost incoming webhooks and Teams workflows display) plus structured fields; no
connection means the alert is only logged at ERROR.

* ``RunFailedNotifier`` (``on_failure_callback`` of every task): a run alerts once, whichever of its tasks
  fail (the failing task and ``report_outcome`` no longer both alert), and repeated failures of one cause
  are counted in an incident and summarised at most every ``OMNI_ERP_ALERT_REPEAT_MINUTES`` ("ERP down
  since 12:05 IST, 6 runs failed"). The record is in the ledger (``alert_run``, ``alert_incident``).
* ``DeadlineMissedNotifier`` (``DeadlineAlert`` callback): alerts only when the run is still queued or
  running; Airflow 3.3 also fires deadlines of runs that already failed (apache/airflow#60927).

When the ledger cannot be read the alert is sent anyway: an extra alert beats a missing one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from airflow.sdk import BaseNotifier

from omni_erp import alerts, settings

log = logging.getLogger(__name__)

ACTIVE_RUN_STATES = frozenset({"queued", "running"})
SEND_ATTEMPTS = 3
SEND_TIMEOUT_S = (5.0, 10.0)  # connect, read


class AlertNotifier(BaseNotifier):
    """Shared by the two notifiers: where alerts go and how they are sent.

    :param alerts_conn_id: the channel's connection (``http``: webhook URL in host); absent -> log only.
    :param ledger_conn_id: the ledger holding the alert records.
    """

    template_fields = ("alerts_conn_id",)

    def __init__(
        self,
        *,
        alerts_conn_id: str = alerts.ALERTS_CONN_ID,
        ledger_conn_id: str = settings.LEDGER_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # the triggerer passes context= to the constructor
        self.alerts_conn_id = alerts_conn_id
        self.ledger_conn_id = ledger_conn_id

    def alert_book(self) -> Any:
        from omni_erp.ledger.alerts import AlertBook
        from omni_erp.ledger.repo import Ledger

        return AlertBook(Ledger.from_conn_id(self.ledger_conn_id).engine)

    def deliver(self, message: dict[str, Any]) -> bool:
        """Send ``message`` on the connection's channel (log only without one); True when it was delivered.

        Three attempts with a short backoff and a timeout each; a channel that stays down is logged, not
        raised, so a broken webhook never fails the task it reports on.
        """
        from omni_erp.connections import get_connection

        connection = get_connection(self.alerts_conn_id)
        if connection is None:
            log.warning("No %r connection: the alert above was only logged", self.alerts_conn_id)
            return False
        if (connection.conn_type or "http") not in ("http", "https"):
            log.error("Connection %r has type %r; alerts support http webhooks", self.alerts_conn_id, connection.conn_type)
            return False
        import requests
        from airflow.providers.http.hooks.http import HttpHook

        # HttpHook: host (+ schema/port) is the URL, login/password basic auth, extras extra headers (a token).
        hook = HttpHook(method="POST", http_conn_id=self.alerts_conn_id)
        problem = "no attempt"
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                response = hook.run(json=message, extra_options={"timeout": SEND_TIMEOUT_S, "check_response": False})
            except requests.RequestException as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    return True
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break  # the webhook refuses this body: retrying will not help
            if attempt < SEND_ATTEMPTS:
                time.sleep(0.5 * 2 ** (attempt - 1))
        log.error("Alert not delivered to %r (%s); it is in this log only", self.alerts_conn_id, problem)
        return False


class RunFailedNotifier(AlertNotifier):
    """``on_failure_callback``: one alert per failed run, outages summarised (see the module docstring)."""

    def notify(self, context: Any) -> None:
        from omni_erp.timeutil import now

        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None) or "?"
        run_id = getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None) or "?"
        exception = context.get("exception")
        reason = f"{getattr(ti, 'task_id', '?')}: {exception}"
        key = alerts.incident_key(dag_id, exception if isinstance(exception, BaseException) else None, reason)
        try:
            decision = self.alert_book().run_failed(
                dag_id, run_id, key, reason, now=now(), repeat_after=alerts.repeat_after(), quiet_gap=alerts.quiet_gap()
            )
        except Exception as exc:  # noqa: BLE001 - the ledger being down must not swallow the alert
            from omni_erp.ledger.alerts import AlertDecision

            log.warning("Alert records unavailable (%s): sending without de-duplication", type(exc).__name__)
            decision = AlertDecision("sent", key, since=now(), runs_failed=1, runs_by_dag={dag_id: 1})
        message = alerts.run_failed_message(decision, dag_id, run_id, reason)
        if not decision.send:
            log.error("Run failed (%s, not sent: %s): %s", decision.outcome, key, message["text"])
            return
        log.error("Run failed: %s", message["text"])
        self.deliver(message)


class DeadlineMissedNotifier(AlertNotifier):
    """``DeadlineAlert`` callback (runs in the triggerer): alerts only for runs still queued or running.

    :param flow: the flow id shown in the alert.
    """

    def __init__(self, *, flow: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flow = flow

    async def async_notify(self, context: Any) -> None:
        await asyncio.to_thread(self.notify, context)

    def notify(self, context: Any) -> None:
        from omni_erp.timeutil import now

        dag_run = (context or {}).get("dag_run") or {}
        deadline = (context or {}).get("deadline") or {}
        dag_id = dag_run.get("dag_id") or "?"
        run_id = dag_run.get("dag_run_id") or dag_run.get("run_id") or "?"
        state = str(dag_run.get("state") or "unknown").lower()
        if state not in ACTIVE_RUN_STATES:
            # apache/airflow#60927: deadlines of runs that already ended still fire; a failed run alerted itself.
            log.info("Deadline of %s run %s passed, but the run is %s: no deadline alert", dag_id, run_id, state)
            return
        try:
            first = self.alert_book().deadline_missed(dag_id, run_id, now=now())
        except Exception as exc:  # noqa: BLE001 - the ledger being down must not swallow the alert
            log.warning("Alert records unavailable (%s): sending without de-duplication", type(exc).__name__)
            first = True
        message = alerts.deadline_message(self.flow, dag_id, run_id, state, deadline.get("deadline_time"))
        if not first:
            log.error("SLA missed (already alerted for this run, not sent): %s", message["text"])
            return
        log.error("SLA missed: %s", message["text"])
        self.deliver(message)

