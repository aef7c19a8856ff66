"""What every flow DAG shares - schedule zone, retries, alerts, SLA deadline, trigger parameters - in one place.

DAG files keep only what differs per flow (cron, tags, tasks), so they stay a minute's read.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import AsyncCallback, CronTriggerTimetable, DeadlineAlert, DeadlineReference, Param

from omni_erp.notifiers import DeadlineMissedNotifier, RunFailedNotifier

TIMEZONE = "Asia/Kolkata"  # the warehouse's and Increff's clock
START_DATE = pendulum.datetime(2026, 11, 1, tz=TIMEZONE)
OWNER = "omni-erp-integration"


def every(cron: str) -> CronTriggerTimetable:
    """An explicit cron timetable in IST (a bare cron string would also give CronTriggerTimetable, implicitly)."""
    return CronTriggerTimetable(cron, timezone=TIMEZONE)


def default_args() -> dict[str, Any]:
    """Task defaults: a few quick retries for passing trouble, a hard timeout, and an alert on failure
    (one per failed run, whichever tasks fail; outages summarised: ``omni_erp.notifiers``)."""
    return {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=20),
        "on_failure_callback": RunFailedNotifier(),
        # Operators that call the ERP or Omni take the run's max_in_flight (others ignore it); '' = their default.
        "max_in_flight": "{{ params.max_in_flight | default('') }}",
    }


def sla(flow: str, minutes: int) -> DeadlineAlert:
    """Alert when a run is still queued or running ``minutes`` after it was queued (the notifier runs in the triggerer)."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(DeadlineMissedNotifier, kwargs={"flow": flow}),
    )


def params(flow: str, *, claims: str | None = None, feed: str | None = None, sharded: bool = False) -> dict[str, Param]:
    """The trigger form: the flow id, plus a batch size for DAGs that claim postings (``claims`` names
    them), the re-read / re-send controls for DAGs that read an ERP feed (``feed`` names it), and for
    both the requests in flight per task (``max_in_flight``, handed to the operators by ``default_args``)."""
    form: dict[str, Param] = {
        "flow": Param(flow, type="string", const=flow, title="Flow", description="Flow id used in alerts."),
    }
    if claims:
        form["limit"] = Param(
            500, type="integer", minimum=1, maximum=5000, title="Batch size",
            description=f"Most {claims} postings to claim in one run.",
        )
    if sharded:
        form["shards"] = Param(
            1, type="integer", minimum=1, maximum=16, title="Shards",
            description="Split the push step over this many mapped tasks, each booking its own part of the batch, "
            "so several workers share one run (CeleryExecutor). 1: one task.",
        )
    if claims or feed:
        form["max_in_flight"] = Param(
            8, type="integer", minimum=1, maximum=64, title="Requests in flight",
            description="Most requests each task keeps in flight to the ERP and to Omni at once (it backs off by "
            "itself when they answer 429). Raise it for an ERP that serves many requests at once.",
        )
    if feed:
        form["since_seq"] = Param(
            None, type=["null", "integer"], minimum=0, title=f"Re-read {feed} from sequence number",
            description=f"Re-read the ERP's {feed} feed from this sequence number instead of the stored cursor "
            "(for backfills; documents already recorded are not uploaded again). Empty: the stored cursor.",
        )
        form["retry_failed"] = Param(
            False, type="boolean", title="Retry rejected uploads",
            description=f"Also re-send {feed} Omni rejected (4xx) in earlier runs, once the cause is fixed.",
        )
    return form
