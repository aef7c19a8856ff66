"""Ajio B2B orders from Increff Omni into the seller's ERP (F1: OUTWARD_ORDER_CREATE -> sales order).

### What it does
1. **claim_postings** - takes a batch of `OUTWARD_ORDER_CREATE` postings that the Omni inbox stored.
2. **map_sales_orders** - validates each posting and maps it to an ERP sales order: quantity to
   invoice = ordered - cancelled; the Ajio PO number is read from `orderCustomAttributes.attribute1`
   (or `$OMNI_ERP_PO_PATH`); postings without a PO are dead-lettered with the reason; orders with
   nothing left to invoice are recorded and not booked.
3. **create_sales_orders** - books each order in the ERP with the key `create:<orderCode>` (the code
   percent-encoded where a header needs it, see `omni_erp/keys.py`), so a re-delivered posting, a
   retried task or a re-run never books twice; records the ERP id. It runs even when the mapping
   task failed (one bad posting): the orders mapped are booked. One mapped task per shard (trigger
   parameter `shards`, default 1): each books its own part of the batch, so Celery workers share a run.
4. **report_outcome** - logs one line per posting of the run (always runs)
   and ends the run failed when any task failed or any item was deferred or dead-lettered.

**order_codes** takes only those orders' postings, dead-lettered ones included: each is replayed from the
raw posting the inbox kept (e.g. after fixing `OMNI_ERP_PO_PATH` for a client that puts the PO elsewhere,
or once the ERP's master data is fixed for an order it rejected) and booked once - an order booked
already is never booked again. A backfill run takes the postings received in its data interval, the
same way. **dry_run** claims nothing and logs per posting what the run would record and the exact ERP
request and key it would send; the ledger and the ERP stay untouched.

A posting whose handling fails unexpectedly is deferred with the error and dead-lettered after
`OMNI_ERP_MAX_ITEM_ATTEMPTS` (3) attempts, so it never holds the others back.

If the ERP is down, the affected postings go back to the queue and the next run books them; the run
is marked failed so the outage is visible. Everything is in the ledger (`omni_erp_ledger`
connection, embedded SQLite by default): `inbox_message`, `ajio_order`, `outbound_call`, `dead_letter`.

Connections: `omni_erp_ledger`, `erp_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG

from omni_erp import assets
from omni_erp import dag_conventions as conventions
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.operators.report import LedgerBatchReportOperator
from omni_erp.operators.shards import ShardIdsOperator
from omni_erp.settings import EVENT_CREATE
from omni_erp.tags import Tag

with DAG(
    dag_id=Path(__file__).stem,
    dag_display_name="F1 · Omni order posting → ERP sales order",
    description=__doc__.splitlines()[0],
    doc_md=__doc__,
    schedule=assets.wake_on(assets.ORDER_POSTINGS, cron="*/5 * * * *"),
    start_date=conventions.START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    tags=[Tag.Flow.f1, Tag.System.omni, Tag.System.erp, Tag.Impact.tier_1],
    default_args=conventions.default_args(),
    params=conventions.params("f1", claims="OUTWARD_ORDER_CREATE", sharded=True),
    # SLA: picking waits for the invoice, so a posting run must finish within 15 minutes.
    deadline=conventions.sla("f1", minutes=15),
) as dag:
    claim = OmniInboxClaimOperator(task_id="claim_postings", event_types=[EVENT_CREATE], limit="{{ params.limit }}")
    shard_ids = ShardIdsOperator(task_id="shard_ids", shards="{{ params.shards }}")
    map_orders = ErpSalesOrderMapOperator(task_id="map_sales_orders")
    # all_done: one posting that made the mapping task fail must not keep the others from being booked.
    # One mapped task per shard (the `shards` param), so several workers book one run's batch.
    create = ErpSalesOrderCreateOperator.partial(
        task_id="create_sales_orders", trigger_rule="all_done", outlets=[assets.ERP_SALES_ORDERS],
        shards="{{ params.shards }}",
    ).expand(shard=shard_ids.output)
    report = LedgerBatchReportOperator(task_id="report_outcome", trigger_rule="all_done")

    claim >> map_orders >> create >> report
