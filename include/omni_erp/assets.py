"""The flows' Airflow assets: what wakes each flow, and what each flow produces for the next (issue 8.3).

Watched assets (their :class:`~airflow.sdk.AssetWatcher` runs an ``omni_erp.triggers`` trigger in the triggerer):

- ``omni_postings_<event>``: pending postings of one event type in the ledger's inbox -> F1, F3, F4, F5;
- ``erp_einvoice_feed`` / ``erp_credit_note_feed``: documents in the ERP's feeds beyond the ledger's cursors -> F2, F6.

Produced assets (a task's ``outlets``), which draw the lineage F1 -> F2 -> F4 in the UI and wake the next flow:

- ``erp_sales_orders`` (F1 booked orders): the ERP e-invoices what was booked, so F2 looks at once;
- ``invoiced_orders`` (F2 recorded e-invoices): completions (F4) that waited for their invoice can go on;
- ``omni_b2b_invoices`` (F2 uploaded invoices): the end of the order's way to Omni.

Every flow keeps its cron as a safety net (:func:`wake_on`): a missed event, work a failed run gave back, or a
document the ERP published behind the cursor is still picked up within one cron period.

Building these objects does no I/O (the triggers keep only their settings), so DAG files import this freely.
URIs use an ``x-`` scheme: Airflow leaves those as they are, where any other scheme makes it load every
provider's URI normaliser (about 0.6 s at parse time).
"""

from __future__ import annotations

from functools import reduce
from operator import or_

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher

from omni_erp import dag_conventions as conventions
from omni_erp import settings
from omni_erp.triggers import ErpFeedTrigger, LedgerPostingsTrigger

GROUP = "omni_erp"
# The ledger cursors the feed readers advance (omni_erp.operators.invoice_upload / credit_notes: cursor_name).
EINVOICE_CURSOR = "erp_einvoice_seq"
CREDIT_NOTE_CURSOR = "erp_credit_note_seq"


def _postings(event_type: str, name: str) -> Asset:
    return Asset(
        name=name,
        uri=f"x-omni-erp://ledger/inbox_message/{event_type}",
        group=GROUP,
        watchers=[AssetWatcher(name=f"{name}_watcher", trigger=LedgerPostingsTrigger(event_type=event_type))],
    )


def _feed(feed: str, cursor_name: str, name: str, path: str) -> Asset:
    return Asset(
        name=name,
        uri=f"x-omni-erp://erp/{path}",
        group=GROUP,
        watchers=[AssetWatcher(name=f"{name}_watcher", trigger=ErpFeedTrigger(feed=feed, cursor_name=cursor_name))],
    )


ORDER_POSTINGS = _postings(settings.EVENT_CREATE, "omni_postings_order_create")
CANCEL_POSTINGS = _postings(settings.EVENT_CANCEL, "omni_postings_order_cancel")
COMPLETE_POSTINGS = _postings(settings.EVENT_COMPLETE, "omni_postings_order_complete")
RETURN_POSTINGS = _postings(settings.EVENT_RETURN, "omni_postings_return_complete")

EINVOICE_FEED = _feed("einvoices", EINVOICE_CURSOR, "erp_einvoice_feed", "e-invoices")
CREDIT_NOTE_FEED = _feed("credit_notes", CREDIT_NOTE_CURSOR, "erp_credit_note_feed", "credit-notes")

ERP_SALES_ORDERS = Asset(name="erp_sales_orders", uri="x-omni-erp://erp/sales-orders", group=GROUP)
INVOICED_ORDERS = Asset(name="invoiced_orders", uri="x-omni-erp://ledger/ajio_order/invoiced", group=GROUP)
OMNI_B2B_INVOICES = Asset(name="omni_b2b_invoices", uri="x-omni-erp://omni/b2bInvoice", group=GROUP)


def wake_on(*assets: Asset, cron: str) -> AssetOrTimeSchedule:
    """Run when any of ``assets`` has an event, and on ``cron`` (IST) in any case.

    Events that arrive while a run is active are kept by the scheduler and start one more run after it
    (``max_active_runs=1``), so a burst never queues a run per event.
    """
    if not assets:
        raise ValueError("wake_on needs at least one asset; use conventions.every(cron) for a cron-only flow")
    return AssetOrTimeSchedule(timetable=conventions.every(cron), assets=reduce(or_, assets))
