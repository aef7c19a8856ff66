"""ERP e-invoices to Increff Omni as Ajio B2B invoices (F2: e-invoice -> POST /ajio-vms/b2bInvoice/posting).

### What it does
1. **fetch_einvoices** - reads the e-invoices the ERP generated since the stored cursor
   (`erp_einvoice_seq`, re-reading 200 sequence numbers behind it because the ERP can publish a
   document late or out of order), records each once in the ledger and matches it to its order:
   same Ajio PO, only the order's SKUs, no SKU above its booked quantity, total within one rupee.
   A matched invoice makes its order *invoiced* (IRN and acknowledgement time, which starts the
   24-hour IRN cancellation window of F3). Unknown orders and mismatches are not uploaded: they are
   recorded with the reason and dead-lettered; invoices of cancelled orders are not uploaded.
2. **upload_invoices** - uploads each matched invoice once (invoice number, date in IST, Ajio PO,
   IRN, signed QR, partial-invoice flag and lines, PDF URL). Omni's 4xx marks the invoice
   `upload_failed` with Increff's code/message/description until someone fixes it and triggers a
   run with **retry_failed**; 5xx and timeouts are retried, and if Omni stays down the invoices wait
   for the next run and this run fails so the outage is visible.
3. **report_outcome** - logs every ERP document the run touched (always runs).

Re-read the feed from an earlier point with **since_seq** (nothing is recorded or uploaded twice).
Ledger tables: `erp_document`, `ajio_order`, `sync_cursor`, `outbound_call`, `dead_letter`.

Connections: `omni_erp_ledger`, `erp_default`, `omni_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, AsyncCallback, CronTriggerTimetable, DeadlineAlert, DeadlineReference, Param

from omni_erp.alerts import deadline_missed, task_failed
from omni_erp.operators.documents import ErpEInvoiceFetchOperator
from omni_erp.operators.omni import OmniInvoiceUploadOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="F2 · ERP e-invoice → Omni B2B invoice",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=CronTriggerTimetable("*/5 * * * *", timezone="Asia/Kolkata"),
    start_date=pendulum.datetime(2026, 11, 1, tz="Asia/Kolkata"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    tags=[Tag.Flow.f2, Tag.System.erp, Tag.System.omni, Tag.Impact.tier_1],
    default_args={
        "owner": "omni-erp-integration",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(minutes=20),
        "on_failure_callback": task_failed,
    },
    params={
        "flow": Param("f2", type="string", const="f2", title="Flow", description="Flow id used in alerts."),
        "since_seq": Param(
            None, type=["null", "integer"], minimum=0, title="Re-read from sequence number",
            description="Re-read the ERP feed from this sequence number (empty: from the stored cursor).",
        ),
        "retry_failed": Param(
            False, type="boolean", title="Retry failed uploads",
            description="Also upload invoices Omni rejected before (after the cause was fixed).",
        ),
    },
    # SLA: the warehouse cannot pick an Ajio order until its invoice reached Omni (domain.md section 1).
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=15),
        callback=AsyncCallback(deadline_missed, kwargs={"flow": "f2"}),
    ),
) as dag:
    fetch = ErpEInvoiceFetchOperator(task_id="fetch_einvoices", since_seq="{{ params.since_seq }}")
    upload = OmniInvoiceUploadOperator(task_id="upload_invoices", retry_failed="{{ params.retry_failed }}")
    report = LedgerBatchReportOperator(task_id="report_outcome", trigger_rule="all_done")

    fetch >> upload >> report
