"""Ajio returns from Increff Omni booked as ERP return orders, and their credit notes uploaded to Omni (F5 + F6).

### What it does
1. **claim_returns** - takes a batch of `RETURN_ORDER_COMPLETE` postings (customer returns and RTOs;
   `SELF_SHIP` counts as a customer return) that the Omni inbox stored.
2. **create_return_orders** - checks that the forward order is in the ledger and e-invoiced (unknown
   order: dead letter; not yet invoiced: waits for the next run), then books one ERP return order per
   `returnOrderCode` (key `return:<returnOrderCode>`) for the units that passed QC. Units with QC
   `FAIL` or no QC status are not credited: they are recorded for manual settlement with Ajio and
   listed in the task log (domain.md decision 7). A return with no unit passing QC makes no ERP call.
3. **fetch_credit_notes** (F6) - reads the credit notes the ERP generated since the stored cursor and
   matches each to its return order; those of customer returns and RTOs become ready to upload.
4. **upload_credit_notes** (F6) - sends each ready credit note once to
   `POST /ajio-vms/creditNote/posting` with `returnOrderId` = the posting's `returnOrderCode`.
5. **report_to_rms** - the RMS credit-note path (see below): writes the RMS report of the returns booked
   without an ERP credit note and not reported yet, regenerates a lost report, records RMS credit notes.
6. **report_outcome** - logs one line per posting and ERP document of the run (always runs) and
   ends the run failed when any task failed or any item was deferred, dead-lettered or not uploaded.

### Credit notes: ERP or Increff RMS
`OMNI_ERP_CREDIT_NOTE_PATH` (or the run param `credit_note_path`) says who raises a return's e-credit
note: `erp` (default) - the ERP, and steps 3-4 upload it; `rms` - the ERP books the return without an
e-credit note, step 5 writes it into the "B2B Returns Credit Note Generation for RMS" report (CSV in
`OMNI_ERP_RMS_REPORT_DIR`, one row per returned SKU, QC-pass units only; named by date and sequence), and
the seller uploads that file in RMS (Invoice Solutions -> Credit Note). The path is fixed per return when
it is booked; switching it later changes only new returns. A return stays `reported_to_rms` until its RMS
credit note is recorded with `rms_credit_notes`. No return is ever in two reports.

Steps 3 and 4 run in every run, even when step 2 found nothing or failed: they also pick up credit
notes of earlier runs. A re-delivered posting, a retried task or a re-run never books a second
return order or uploads a credit note twice. If the ERP is down, the affected postings go back to
the queue and the run is marked failed so the outage is visible.

Params: `since_seq` re-reads the ERP credit-note feed from that position (the cursor never moves
back); `retry_failed` re-sends credit notes Omni rejected earlier, once someone fixed the cause;
`credit_note_path` overrides the setting for this run; `rms_regenerate` writes a lost RMS report again
(its file name); `rms_credit_notes` records the credit notes RMS raised (`RET-1=CN-1, ...` or the path of
a CSV with columns `returnOrderId,creditNoteNumber`).

Connections: `omni_erp_ledger`, `erp_default`, `omni_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from omni_erp import assets
from omni_erp import dag_conventions as conventions
from omni_erp.operators.credit_notes import ErpCreditNoteFetchOperator, OmniCreditNoteUploadOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.operators.returns import ErpSalesReturnOperator
from omni_erp.operators.rms import RmsReturnReportOperator
from omni_erp.settings import EVENT_RETURN
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="F5 + F6 · Omni returns → ERP return orders → credit notes to Omni",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=assets.wake_on(assets.RETURN_POSTINGS, assets.CREDIT_NOTE_FEED, cron="*/15 * * * *"),
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    tags=[Tag.Flow.f5, Tag.System.omni, Tag.System.erp, Tag.Impact.tier_1],
    default_args=conventions.default_args(),
    params={
        **conventions.params("f5", claims="return", feed="credit notes"),
        "credit_note_path": Param(
            None, type=["null", "string"], enum=[None, "erp", "rms"], title="Credit note path",
            description="Who raises the e-credit notes of this run's new returns: erp (uploaded by this DAG) or rms "
            "(reported to Increff RMS). Empty: the OMNI_ERP_CREDIT_NOTE_PATH setting (default erp).",
        ),
        "rms_regenerate": Param(
            None, type=["null", "string"], title="Regenerate RMS report",
            description="File name of an RMS report to write again from the ledger (e.g. a deleted file).",
        ),
        "rms_credit_notes": Param(
            None, type=["null", "string"], title="RMS credit notes",
            description="Credit notes RMS raised: RET-1=CN-1, RET-2=CN-2, or the path / URL of a CSV with columns "
            "returnOrderId,creditNoteNumber. Those returns become settled.",
        ),
    },
    # SLA: one run must finish well before the next is due (Ajio settles returns on the credit note).
    deadline=conventions.sla("f5", minutes=15),
) as dag:
    claim = OmniInboxClaimOperator(task_id="claim_returns", event_types=[EVENT_RETURN], limit="{{ params.limit }}")
    create = ErpSalesReturnOperator(task_id="create_return_orders", credit_note_path="{{ params.credit_note_path }}")
    # all_done: credit notes of earlier runs are fetched and uploaded even when this run's returns failed.
    fetch = ErpCreditNoteFetchOperator(task_id="fetch_credit_notes", since_seq="{{ params.since_seq }}", trigger_rule="all_done")
    upload = OmniCreditNoteUploadOperator(
        task_id="upload_credit_notes", retry_failed="{{ params.retry_failed }}", trigger_rule="all_done"
    )
    rms = RmsReturnReportOperator(
        task_id="report_to_rms", settle="{{ params.rms_credit_notes }}", regenerate="{{ params.rms_regenerate }}",
        trigger_rule="all_done",
    )
    report = LedgerBatchReportOperator(task_id="report_outcome", trigger_rule="all_done", show_rms_waiting=True)

    claim >> create >> fetch >> upload >> rms >> report
