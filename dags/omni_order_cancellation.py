"""Ajio order cancellations from Increff Omni into the seller's ERP (F3: OUTWARD_ORDER_CANCEL).

### What it does
1. **claim_postings** - takes a batch of `OUTWARD_ORDER_CANCEL` postings that the Omni inbox stored
   (for Ajio only full cancellations are sent).
2. **cancel_orders** - routes each order by its state in the ledger (domain.md decision 5):
   - *not booked in the ERP* (no CREATE seen yet, mapped but not booked, nothing to invoice):
     marked cancelled, nothing is called; an order never seen is recorded as cancelled so that a
     late CREATE is never booked;
   - *booked, not e-invoiced*: the ERP sales order is cancelled (key `cancel:<orderCode>`); if the
     ERP already e-invoiced it but the invoice flow has not recorded the invoice yet, the posting
     waits for the next run;
   - *e-invoiced less than 24 hours ago*: the IRN (key `cancel-irn:<invoice>`) and then the sales
     order are cancelled;
   - *e-invoiced 24 hours ago or more* (or the ERP says the IRN window has closed): the ERP raises
     a credit note against the invoice (key `credit-note:<invoice>`). Per the Ajio seller SOP it is
     **kept in the ERP and not uploaded to Omni**; the posting's outcome `credit_note` and a log
     line name it in the run report;
   - *already cancelled*: closed as `already_cancelled`, nothing called; *completed*: dead-lettered
     (Ajio cannot cancel after packing).
   An e-invoice of a cancelled order that is not uploaded yet is marked so the invoice flow skips it.
3. **report_outcome** - logs one line per posting of the run (always runs)
   and ends the run failed when any task failed or any item was deferred or dead-lettered.

The 24-hour clock is the package clock (`OMNI_ERP_CLOCK_OFFSET_S` shifts it in tests and the demo).
If the ERP is down, the affected postings go back to the queue and the next run continues the same
route with the same keys; the run is marked failed so the outage is visible. Everything is in the
ledger (`omni_erp_ledger` connection): `inbox_message`, `ajio_order` (`cancel_route`),
`erp_document`, `outbound_call`, `dead_letter`.

Connections: `omni_erp_ledger`, `erp_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG

from omni_erp import assets
from omni_erp import dag_conventions as conventions
from omni_erp.operators.cancellation import ErpOrderCancelOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.settings import EVENT_CANCEL
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="F3 · Omni order cancellation → ERP",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=assets.wake_on(assets.CANCEL_POSTINGS, cron="*/5 * * * *"),
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    tags=[Tag.Flow.f3, Tag.System.omni, Tag.System.erp, Tag.Impact.tier_1],
    default_args=conventions.default_args(),
    params=conventions.params("f3", claims="OUTWARD_ORDER_CANCEL"),
    # SLA: every hour lost can push an e-invoiced order past the 24-hour IRN window.
    deadline=conventions.sla("f3", minutes=15),
) as dag:
    claim = OmniInboxClaimOperator(task_id="claim_postings", event_types=[EVENT_CANCEL], limit="{{ params.limit }}")
    cancel = ErpOrderCancelOperator(task_id="cancel_orders")
    report = LedgerBatchReportOperator(task_id="report_outcome", trigger_rule="all_done")

    claim >> cancel >> report
