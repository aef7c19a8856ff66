"""Ajio order completions from Increff Omni reconciled against the ERP e-invoice (F4: OUTWARD_ORDER_COMPLETE).

### What it does
1. **claim_postings** - takes a batch of `OUTWARD_ORDER_COMPLETE` postings that the Omni inbox stored.
2. **complete_orders** - records every shipment once by `shipmentCode` (Increff repeats earlier
   shipments in every later posting of the order, so a posting carries the shipments *so far*) and
   compares per `channelSkuCode` the units on the order's recorded e-invoice with the posting's live
   units (`orderedQuantity - cancelledQuantity`) and the units of all its distinct shipments:
   - invoiced units no longer live were *cancelled after e-invoicing*: the ones not yet on a return
     order go on one ERP return order `PC-<orderCode>-<n>` at the invoice's unit prices, registered
     in the ledger before the call and sent with the key `return:<code>`; the ERP raises the credit
     note, which stays in the ERP by default (domain.md decision 6);
   - invoiced units neither shipped nor cancelled are still to ship (a split shipment), not a
     shortfall: the order is `partially_shipped` until a later COMPLETE ships or cancels them, then
     `completed` (or `completed_with_return`);
   - shipped plus cancelled above invoiced for any SKU, an invoiced SKU the posting does not list,
     or no shipped unit at all: nothing is guessed - dead letter with the figures per SKU;
   - unknown or cancelled order: dead letter with the reason; no e-invoice recorded yet: the posting
     waits for the invoice flow (next run).
   The per-SKU table is logged for every order that is not a plain match.
3. **report_outcome** - logs one line per posting of the run (always runs)
   and ends the run failed when any task failed or any item was deferred or dead-lettered.

If the ERP is down, the affected postings go back to the queue and the next run re-sends the same
return order; the run is marked failed so the outage is visible. Everything is in the ledger
(`omni_erp_ledger` connection): `inbox_message`, `ajio_order`, `shipment`, `return_order`,
`outbound_call`, `dead_letter`.

Connections: `omni_erp_ledger`, `erp_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG

from omni_erp import assets
from omni_erp import dag_conventions as conventions
from omni_erp.operators.completion import ErpOrderCompleteOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.settings import EVENT_COMPLETE
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="F4 · Omni order completion → ERP return order",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=assets.wake_on(assets.COMPLETE_POSTINGS, assets.INVOICED_ORDERS, cron="*/15 * * * *"),
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=45),
    tags=[Tag.Flow.f4, Tag.System.omni, Tag.System.erp, Tag.Impact.tier_2],
    default_args=conventions.default_args(),
    params=conventions.params("f4", claims="OUTWARD_ORDER_COMPLETE"),
    # SLA: completions are bookkeeping after dispatch; a run should still finish well before the next two.
    deadline=conventions.sla("f4", minutes=30),
) as dag:
    claim = OmniInboxClaimOperator(task_id="claim_postings", event_types=[EVENT_COMPLETE], limit="{{ params.limit }}")
    complete = ErpOrderCompleteOperator(task_id="complete_orders")
    report = LedgerBatchReportOperator(task_id="report_outcome", trigger_rule="all_done")

    claim >> complete >> report
