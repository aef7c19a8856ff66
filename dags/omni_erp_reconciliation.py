"""Daily reconciliation: ledger vs ERP vs Omni per flow, every open item with its age and reason, as CSV and HTML.

### What it does
**reconcile** compares, per flow (F1-F6):
- the ledger's postings, orders, return orders and ERP documents with the ERP's e-invoice and credit-note
  feeds (through the adapter the `erp_default` connection's type chooses) - documents in one and not the
  other, or naming another order, are listed under *differences*;
- the documents the ledger marked uploaded with Omni's acknowledgements (the ledger's `outbound_call`
  rows; Increff offers no query API) and, where a sandbox stack offers it, Omni's own state;
- every order, posting, ERP document and return order not in a terminal state, oldest first, with its
  age and the reason it waits; the units for manual settlement; the dead letters nobody resolved; and the
  duplicates the flows recognised and did not act on twice.

It writes `figures.csv`, `differences.csv`, `open_items.csv`, `manual_settlements.csv`, `dead_letters.csv`,
`duplicates.csv` and a self-contained `reconciliation.html` into `<folder>/<date>_<run>/`; the folder is the
trigger form's **output_folder**, else `$OMNI_ERP_RECONCILIATION_FOLDER` (an object-storage URL such as
`s3://bucket/recon` with `$OMNI_ERP_RECONCILIATION_CONN_ID`, or a local path), else
`$AIRFLOW_HOME/reconciliation`. The task log names the HTML file; the key figures are in XCom.

If the ERP cannot be read, the report is written without the ERP column and the run fails.
Business SLA alerts run every 10 minutes in `omni_erp_sla_watch`. Trigger it any time for an up-to-date report.

Connections: `omni_erp_ledger`, `erp_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from omni_erp import dag_conventions as conventions
from omni_erp.operators.reconciliation import ReconciliationReportOperator
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="Reconciliation · ledger ⇄ ERP ⇄ Omni",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=conventions.every("30 7 * * *"),  # 07:30 IST, before the warehouse's day
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=60),
    tags=[Tag.Flow.reconciliation, Tag.System.erp, Tag.System.omni, Tag.Impact.tier_2],
    default_args=conventions.default_args(),
    params={
        **conventions.params("reconciliation"),
        "output_folder": Param(
            None, type=["null", "string"], title="Output folder",
            description="Where to write the report: a local path or an object-storage URL (s3://bucket/prefix). "
            "Empty: $OMNI_ERP_RECONCILIATION_FOLDER, else $AIRFLOW_HOME/reconciliation.",
        ),
        "erp_from_seq": Param(
            0, type="integer", minimum=0, title="Read the ERP's feeds from sequence number",
            description="Compare only ERP documents after this feed position (0: all of them).",
        ),
        "omni_state_url": Param(
            None, type=["null", "string"], title="Omni sandbox state URL",
            description="Sandbox stacks only: .../_sandbox/state of the Omni sandbox, to compare Omni's own records.",
        ),
    },
    deadline=conventions.sla("reconciliation", minutes=45),
) as dag:
    ReconciliationReportOperator(
        task_id="reconcile",
        output_folder="{{ params.output_folder }}",
        erp_from_seq="{{ params.erp_from_seq }}",
        omni_state_url="{{ params.omni_state_url }}",
    )
