"""ERP e-invoices to Increff Omni as Ajio B2B invoices (F2: e-invoice -> POST /ajio-vms/b2bInvoice/posting).

### What it does
1. **fetch_einvoices** - reads the e-invoices the ERP generated since the stored cursor
   (`erp_einvoice_seq`, re-reading 200 sequence numbers behind it because the ERP can publish a
   document late or out of order), records each once in the ledger and matches it to its order:
   same Ajio PO, only the order's SKUs, no SKU above its booked quantity, total within one rupee.
   A matched invoice makes its order *invoiced* (IRN and acknowledgement time, which starts the
   24-hour IRN cancellation window of F3). Unknown orders, mismatches, documents the ERP contract
   does not allow and invoice numbers the ERP reused for another order are not uploaded: they are
   dead-lettered with the reason and the task fails once, after reading the whole feed, so the run is
   red; invoices of cancelled orders are not uploaded.
2. **upload_invoices** - uploads each matched invoice once (invoice number, date in IST, Ajio PO,
   IRN, signed QR, partial-invoice flag and lines, PDF URL). Omni's 4xx marks the invoice
   `upload_failed` with Increff's code/message/description until someone fixes it and triggers a
   run with **retry_failed**; 5xx and timeouts are retried, and if Omni stays down the invoices wait
   for the next run and this run fails so the outage is visible. It runs even when the fetch failed.
3. **report_outcome** - logs every ERP document the run touched (always runs) and ends the run
   failed when any task failed (e.g. Omni down) or any document was not matched or not uploaded.

Re-read the feed from an earlier point with **since_seq** (nothing is recorded or uploaded twice).
**order_codes** uploads only those orders' invoices, re-sending ones Omni rejected once the cause is
fixed; a backfill run uploads the invoices recorded in its data interval that are not uploaded yet (the
feed is always read whole). **dry_run** logs each body the next run would send and records nothing.
Ledger tables: `erp_document`, `ajio_order`, `sync_cursor`, `outbound_call`, `dead_letter`.

Connections: `omni_erp_ledger`, `erp_default`, `omni_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG

from omni_erp import assets
from omni_erp import dag_conventions as conventions
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="F2 · ERP e-invoice → Omni B2B invoice",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=assets.wake_on(assets.EINVOICE_FEED, assets.ERP_SALES_ORDERS, cron="*/5 * * * *"),
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    tags=[Tag.Flow.f2, Tag.System.erp, Tag.System.omni, Tag.Impact.tier_1],
    default_args=conventions.default_args(),
    params=conventions.params("f2", feed="e-invoices"),
    # SLA: the warehouse cannot pick an Ajio order until its invoice reached Omni (domain.md section 1).
    deadline=conventions.sla("f2", minutes=15),
) as dag:
    fetch = ErpEInvoiceFetchOperator(
        task_id="fetch_einvoices", since_seq="{{ params.since_seq }}", outlets=[assets.INVOICED_ORDERS]
    )
    # all_done: invoices already matched are uploaded even when the fetch failed (one bad document, an ERP outage).
    upload = OmniInvoiceUploadOperator(
        task_id="upload_invoices", retry_failed="{{ params.retry_failed }}", trigger_rule="all_done",
        outlets=[assets.OMNI_B2B_INVOICES],
    )
    report = LedgerBatchReportOperator(task_id="report_outcome", trigger_rule="all_done")

    fetch >> upload >> report
