"""What every flow DAG shares - schedule zone, retries, alerts, SLA deadline, trigger parameters - in one place.

DAG files keep only what differs per flow (cron, tags, tasks), so they stay a minute's read.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import AsyncCallback, CronTriggerTimetable, DeadlineAlert, DeadlineReference, Param

from omni_erp.notifiers import DeadlineMissedNotifier, RunFailedNotifier
from omni_erp.run_scope import MAX_ORDER_CODE_LENGTH, MAX_ORDER_CODES

TIMEZONE = "Asia/Kolkata"  # the warehouse's and Increff's clock
START_DATE = pendulum.datetime(2026, 11, 1, tz=TIMEZONE)
OWNER = "omni-erp-integration"


def every(cron: str) -> CronTriggerTimetable:
    """A cron timetable in IST whose runs cover the time since the previous tick (their data interval).

    A scheduled run works on everything due whatever its interval; a backfill run (``airflow backfill
    create``) works on what was received or recorded in its interval (``omni_erp.run_scope``), so the
    interval must not be empty: it is the gap between two ticks (``*/5`` -> 5 minutes, daily -> 1 day).
    """
    return CronTriggerTimetable(cron, timezone=TIMEZONE, interval=cron_period(cron))


def cron_period(cron: str) -> timedelta:
    """The time between two consecutive ticks of ``cron``, taken at a fixed reference (no clock read)."""
    from croniter import croniter  # Airflow's cron timetables import it anyway

    ticks = croniter(cron, START_DATE)
    first = ticks.get_next(pendulum.DateTime)
    return ticks.get_next(pendulum.DateTime) - first


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
        # What the run works on (omni_erp.run_scope): the trigger form's dry_run and order_codes, and a
        # backfill run's data interval (other runs take everything due, whatever their interval).
        "dry_run": "{{ params.dry_run | default(false) }}",
        "order_codes": "{{ params.order_codes | default([], true) | tojson }}",
        "window": "{{ data_interval_start.isoformat() ~ '/' ~ data_interval_end.isoformat() "
        "if dag_run.run_type == 'backfill' and data_interval_start else '' }}",
        # The batch size, so a dry run's tasks select what the claim would take ('' where the DAG has none).
        "limit": "{{ params.limit | default('') }}",
    }


def sla(flow: str, minutes: int) -> DeadlineAlert:
    """Alert when a run is still queued or running ``minutes`` after it was queued (the notifier runs in the triggerer)."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback(DeadlineMissedNotifier, kwargs={"flow": flow}),
    )


def params(flow: str, *, claims: str | None = None, feed: str | None = None, sharded: bool = False) -> dict[str, Param]:
    """The trigger form: ``dry_run`` and ``order_codes`` on every flow, a batch size for DAGs that claim
    postings (``claims`` names them), the re-read / re-send controls for DAGs that read an ERP feed (``feed``
    names it), and for both the requests in flight per task (``max_in_flight``). ``default_args`` hands them
    to the operators. ``flow`` only names the flow in descriptions (the DAG itself says which flow it is)."""
    form: dict[str, Param] = {
        "dry_run": Param(
            False, type="boolean", title="Dry run",
            description="Compute and log exactly what this run would send to the ERP and Omni, and what it would "
            "record; send nothing and change nothing in the ledger. The task logs show it.",
        ),
        "order_codes": Param(
            [], type="array", title="Only these orders",
            # No blank at either end and no control character anywhere (\S alone lets a tab or BEL through).
            items={"type": "string", "minLength": 1, "maxLength": MAX_ORDER_CODE_LENGTH,
                   "pattern": r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"},
            maxItems=MAX_ORDER_CODES, uniqueItems=True,
            description=f"Reprocess only these Ajio order codes (one per line), including postings that were "
            f"dead-lettered and uploads Omni rejected, once the cause is fixed: the inbox kept the raw posting and "
            f"{flow.upper()} replays it. Orders already done are skipped. Empty: everything due.",
        ),
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
