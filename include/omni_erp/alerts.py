"""What an alert says: the incident a failure belongs to and the words a person reads.

The notifiers (``omni_erp.notifiers``) send; this module decides what a failure *is* and how it reads:

* an ERP or Omni outage (HTTP 5xx, 429, no response) is one incident across every flow it breaks:
  "ERP down since 12:05 IST, 6 runs failed (erp_invoice_upload 2, omni_order_posting 4)";
* a ledger outage likewise; any other failure is an incident of its DAG ("omni_order_posting failing").

No payloads and no secrets: the texts carry DAG, run, task and the error message only.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from omni_erp.timeutil import IST

if TYPE_CHECKING:
    from omni_erp.ledger.alerts import AlertDecision

ALERTS_CONN_ID = "omni_erp_alerts"
DEFAULT_REPEAT_MINUTES = 60
DEFAULT_QUIET_MINUTES = 60
DETAIL_LIMIT = 500

# How RemoteUnavailableError reads (omni_erp.exceptions), also inside report_outcome's "first reason: ...".
_REMOTE_DOWN = re.compile(r"\b(erp|omni) (?:HTTP (?:429|5\d\d)|no response)\b")
_LEDGER_DOWN = re.compile(r"\b(?:OperationalError|could not connect to server|connection refused|database is locked)\b", re.I)
LABELS = {"erp_unavailable": "ERP down", "omni_unavailable": "Omni down", "ledger_unavailable": "Ledger unreachable"}


def repeat_after() -> timedelta:
    """Least time between two summaries of one incident (``OMNI_ERP_ALERT_REPEAT_MINUTES``, default 60)."""
    return timedelta(minutes=float(os.environ.get("OMNI_ERP_ALERT_REPEAT_MINUTES") or DEFAULT_REPEAT_MINUTES))


def quiet_gap() -> timedelta:
    """Failures further apart than this start a new incident (``OMNI_ERP_ALERT_QUIET_MINUTES``, default 60)."""
    return timedelta(minutes=float(os.environ.get("OMNI_ERP_ALERT_QUIET_MINUTES") or DEFAULT_QUIET_MINUTES))


def incident_key(dag_id: str, exception: BaseException | None, reason: str) -> str:
    """``erp_unavailable`` / ``omni_unavailable`` / ``ledger_unavailable`` for outages, else ``failed:<dag_id>``."""
    from omni_erp.exceptions import RemoteUnavailableError

    if isinstance(exception, RemoteUnavailableError):
        return f"{exception.system}_unavailable"
    remote = _REMOTE_DOWN.search(reason)
    if remote:
        return f"{remote.group(1)}_unavailable"
    if _LEDGER_DOWN.search(reason) or type(exception).__name__ == "OperationalError":
        return "ledger_unavailable"
    return f"failed:{dag_id}"


def incident_label(key: str) -> str:
    """"ERP down", "Omni down", "Ledger unreachable" or "<dag_id> failing"."""
    return LABELS.get(key) or f"{key.removeprefix('failed:')} failing"


def local_time(moment: datetime) -> str:
    """The warehouse's clock: ``12:05 IST`` today, ``2026-12-02 12:05 IST`` otherwise."""
    local = moment.astimezone(IST)
    if local.date() == datetime.now(IST).date():
        return local.strftime("%H:%M IST")
    return local.strftime("%Y-%m-%d %H:%M IST")


def run_failed_message(decision: AlertDecision, dag_id: str, run_id: str, reason: str) -> dict[str, Any]:
    """The alert for a failed run: the first of its incident, or the incident's summary."""
    detail = reason[:DETAIL_LIMIT]
    label = incident_label(decision.incident_key)
    if decision.outcome == "summarised":
        by_dag = ", ".join(f"{dag} {count}" for dag, count in decision.runs_by_dag.items())
        since = local_time(decision.since) if decision.since else "?"
        text = (
            f"{label} since {since}, {decision.runs_failed} runs failed ({by_dag}); "
            f"latest: {dag_id} run {run_id}: {detail}"
        )
        kind = "outage_summary"
    else:
        prefix = f"{label}: " if not decision.incident_key.startswith("failed:") else ""
        text = f"{prefix}{dag_id} run {run_id} failed: {detail}"
        kind = "run_failed"
    return {
        "kind": kind,
        "text": text,  # the field chat webhooks (Slack, Mattermost, Teams workflows) display
        "incident": decision.incident_key,
        "dag_id": dag_id,
        "run_id": run_id,
        "since": decision.since.isoformat() if decision.since else None,
        "runs_failed": decision.runs_failed,
        "runs_by_dag": decision.runs_by_dag,
        "detail": detail,
    }


def deadline_message(flow: str | None, dag_id: str, run_id: str, state: str, deadline_time: Any) -> dict[str, Any]:
    """The alert for a run still queued or running at its deadline (the warehouse may be waiting to pick)."""
    return {
        "kind": "deadline_missed",
        "text": f"{dag_id} run {run_id} is still {state} after its deadline {deadline_time}",
        "flow": flow,
        "dag_id": dag_id,
        "run_id": run_id,
        "state": state,
        "detail": f"run not finished by {deadline_time}",
    }


async def deadline_missed(flow: str, context: dict[str, Any] | None = None, **_: Any) -> None:
    """The DeadlineAlert callback of DAG versions before the notifiers: deadlines already stored in the
    metadata database name this path, so it stays and hands over to ``DeadlineMissedNotifier``."""
    from omni_erp.notifiers import DeadlineMissedNotifier

    await DeadlineMissedNotifier(flow=flow, context=context or {})
