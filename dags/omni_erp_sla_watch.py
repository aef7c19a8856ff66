"""Business SLA watch: alerts each breach once - invoices not at Omni, rejected uploads, IRN and IRP deadlines, dead letters.

### What it does
**check_sla** evaluates five rules on the ledger (`omni_erp.rules.sla`) and sends one alert per rule with
new breaches, naming the order codes (webhook `omni_erp_alerts`, and an ERROR line in this log):
1. orders received for booking with no e-invoice uploaded to Omni after **einvoice_upload_minutes**
   (default 30: the warehouse cannot pick them);
2. invoice or credit-note uploads Omni rejected and still rejected;
3. cancellations not processed while the order's IRN has less than **irn_cancel_warning_hours** left of
   its 24-hour cancellation window;
4. e-invoices and credit notes not at the IRP yet within **irp_limit_warning_days** of the IRP's 30-day
   reporting limit;
5. postings and documents dead-lettered since the last alert.

A breach is alerted once (table `sla_breach`), not on every run; when it stops breaching it is closed, and
a later breach of the same order alerts again. If the webhook cannot be reached the alert is re-sent by the
next run and this run fails. What each alert means and what to do: README, *Business SLA alerts*.

Connections: `omni_erp_ledger`, `omni_erp_alerts` (optional).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from omni_erp import dag_conventions as conventions
from omni_erp.operators.reconciliation import SlaAlertOperator
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="SLA watch · business alerts",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=conventions.every("*/10 * * * *"),
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=[Tag.Flow.reconciliation, Tag.Impact.tier_1],
    default_args=conventions.default_args(),
    params={
        **conventions.params("sla"),
        "einvoice_upload_minutes": Param(
            30, type="integer", minimum=1, maximum=1440, title="Minutes an order may wait for its e-invoice at Omni",
            description="Alert for orders received longer ago than this whose e-invoice is not uploaded to Omni.",
        ),
        "irn_cancel_warning_hours": Param(
            4, type="number", exclusiveMinimum=0, maximum=23, title="Hours before the IRN cancel window closes",
            description="Alert for unprocessed cancellations whose order's IRN has at most this long left of its 24 hours.",
        ),
        "irp_limit_warning_days": Param(
            5, type="number", exclusiveMinimum=0, maximum=29, title="Days before the IRP's 30-day limit",
            description="Alert for e-invoices and credit notes not at the IRP yet within this many days of the limit.",
        ),
    },
    deadline=conventions.sla("sla", minutes=15),
) as dag:
    SlaAlertOperator(
        task_id="check_sla",
        einvoice_upload_minutes="{{ params.einvoice_upload_minutes }}",
        irn_cancel_warning_hours="{{ params.irn_cancel_warning_hours }}",
        irp_limit_warning_days="{{ params.irp_limit_warning_days }}",
    )
