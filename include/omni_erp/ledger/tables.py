"""Ledger tables (SQLAlchemy Core), portable across SQLite and PostgreSQL.

Every table has a natural unique key so writes can be idempotent (insert-or-ignore / upsert).
Times are stored in UTC (domain.md decision 8).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_version = Table(
    "omni_erp_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# Every posting Omni delivered to the inbox, exactly once per messageId.
# state: pending -> claimed -> done | dead ; or ignored (event types we store but do not process).
inbox_message = Table(
    "inbox_message",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("event_type", String(64), nullable=False),
    Column("business_key", String(255), nullable=False),  # orderCode, or returnOrderCode for returns
    Column("order_code", String(255), nullable=False),  # orderCode, or forwardOrderCode for returns
    Column("content_hash", String(64), nullable=False),  # sha256 of payload (older rows: of its canonical form)
    Column("payload", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("outcome", String(64)),
    Column("batch_id", String(255)),
    Column("lease_until", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_inbox_message_claim", "state", "event_type", "id"),
    Index("ix_inbox_message_batch", "batch_id"),
    Index("ix_inbox_message_order", "order_code"),
)

# One row per Ajio order: its state machine and the ERP document ids.
ajio_order = Table(
    "ajio_order",
    metadata,
    Column("order_code", String(255), primary_key=True),
    Column("po_number", String(255)),
    Column("state", String(32), nullable=False),
    Column("create_message_id", String(255)),
    Column("lines", Text, nullable=False),  # JSON: sku, ordered, cancelled, quantity, unitPrice
    Column("total_amount", Numeric(14, 2), nullable=False),
    Column("erp_request", Text),  # the exact body sent to the ERP, re-sent unchanged on retries
    Column("erp_sales_order_id", String(255)),
    Column("erp_invoice_number", String(64)),
    Column("irn", String(64)),
    Column("invoiced_at", DateTime(timezone=True)),  # IRN acknowledgement time: starts the 24 h window
    Column("cancel_route", String(32)),  # added in schema version 2
    Column("closed_at", DateTime(timezone=True)),  # added in schema version 2
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_ajio_order_state", "state"),
)

# Every outbound HTTP attempt (one row per attempt, retries included). Never bodies or secrets.
outbound_call = Table(
    "outbound_call",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("system", String(16), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("idempotency_key", String(255)),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer),
    Column("latency_ms", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # ok | retry | rejected | unavailable
    Column("error", Text),
    Column("batch_id", String(255)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_outbound_call_key", "idempotency_key"),
)

# Anything that cannot be processed, with a reason a person can act on.
dead_letter = Table(
    "dead_letter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stage", String(64), nullable=False),  # inbox | order_posting | ...
    Column("dedupe_key", String(128), nullable=False),
    Column("message_id", String(255)),
    Column("business_key", String(255)),
    Column("reason", Text, nullable=False),
    Column("payload", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    UniqueConstraint("stage", "dedupe_key", name="uq_dead_letter_stage_key"),
)

# Named cursors/watermarks (e.g. the last e-invoice sequence read from the ERP).
sync_cursor = Table(
    "sync_cursor",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# --- schema version 2 (F2-F6) ------------------------------------------------------------------

# Every ERP document we read (e-invoices, credit notes): one row per number, its upload state.
erp_document = Table(
    "erp_document",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("doc_type", String(32), nullable=False),  # invoice | credit_note
    Column("doc_number", String(64), nullable=False),
    Column("order_code", String(255)),
    Column("related_code", String(255)),  # credit note: its return order code, else the invoice number
    Column("seq", Integer),  # position in the ERP's feed
    Column("payload", Text, nullable=False),  # the ERP document as read (no secrets in it)
    Column("state", String(32), nullable=False),
    Column("reason", Text),
    Column("upload_attempts", Integer, nullable=False, default=0),
    Column("uploaded_at", DateTime(timezone=True)),
    Column("batch_id", String(255)),  # the run that last touched it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("doc_type", "doc_number", name="uq_erp_document_number"),
    Index("ix_erp_document_state", "doc_type", "state"),
    Index("ix_erp_document_order", "order_code"),
)

# Shipments seen in COMPLETE postings, once per shipmentCode (a shipment repeats in later postings).
shipment = Table(
    "shipment",
    metadata,
    Column("shipment_code", String(255), primary_key=True),
    Column("order_code", String(255), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("items", Text, nullable=False),  # JSON: [{sku, quantity}]
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_shipment_order", "order_code"),
)

# ERP return orders: customer returns and RTOs (F5), and partial cancellations after e-invoicing (F4).
return_order = Table(
    "return_order",
    metadata,
    Column("return_order_code", String(255), primary_key=True),
    Column("order_code", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message_id", String(255)),
    Column("state", String(32), nullable=False),
    Column("lines", Text, nullable=False),  # JSON: credited units per SKU
    Column("erp_request", Text),
    Column("erp_return_order_id", String(255)),
    Column("credit_note_number", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_return_order_order", "order_code"),
)

# Returned units not credited automatically (QC FAIL or missing): settled offline with Ajio.
manual_settlement = Table(
    "manual_settlement",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("return_order_code", String(255), nullable=False),
    Column("item_code", String(255), nullable=False),
    Column("order_code", String(255), nullable=False),
    Column("sku", String(255), nullable=False),
    Column("qc_status", String(32)),
    Column("qc_reason", String(255)),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("return_order_code", "item_code", name="uq_manual_settlement_item"),
)

# Facts about the ledger itself, e.g. its identity: a UUID created once with the schema, which the
# inbox reports and the flows log so both sides can be shown to use the same ledger.
ledger_meta = Table(
    "ledger_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# --- schema version 4 (issue 12: credit notes through Increff RMS) ---------------------------------

# Each RMS returns report written ("B2B Returns Credit Note Generation for RMS"): one row per file,
# its content kept so a lost file is regenerated byte for byte.
rms_report = Table(
    "rms_report",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file_name", String(255), nullable=False, unique=True),
    Column("report_date", String(10), nullable=False),  # IST date, YYYY-MM-DD
    Column("sequence", Integer, nullable=False),  # 1, 2, ... per report_date
    Column("location", Text, nullable=False),  # where it was written (path or object storage URL)
    Column("row_count", Integer, nullable=False),
    Column("unit_count", Integer, nullable=False),
    Column("content", Text, nullable=False),  # the CSV as written
    Column("batch_id", String(255)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("rewritten_at", DateTime(timezone=True)),  # last regeneration on demand
    UniqueConstraint("report_date", "sequence", name="uq_rms_report_date_sequence"),
)

# Returns whose e-credit note Increff RMS raises (booked in the ERP without one): which report
# carried each, and the RMS credit note once settled. state: to_report -> reported_to_rms -> settled;
# not_reportable when no line has a traceable forward order (reason says why).
rms_return = Table(
    "rms_return",
    metadata,
    Column("return_order_code", String(255), primary_key=True),
    Column("order_code", String(255), nullable=False),
    Column("state", String(32), nullable=False),
    Column("report_id", Integer),  # rms_report.id of the file that carried it
    Column("rms_credit_note_number", String(64)),
    Column("reason", Text),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("reported_at", DateTime(timezone=True)),
    Column("settled_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_rms_return_state", "state"),
    Index("ix_rms_return_report", "report_id"),
)

# --- schema version 5 (issue 10: business SLA alerts) ---------------------------------------------

# One row per business SLA breach (rule + subject: an order code, a document, a dead letter), so each
# breach is alerted once, not once per run. cleared_at is set when the subject stops breaching; if it
# breaches again later the row is reopened and alerted again.
sla_breach = Table(
    "sla_breach",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule", String(64), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("order_code", String(255)),
    Column("detail", Text),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("alerted_at", DateTime(timezone=True), nullable=False),
    Column("cleared_at", DateTime(timezone=True)),
    UniqueConstraint("rule", "subject", name="uq_sla_breach_rule_subject"),
    Index("ix_sla_breach_open", "rule", "cleared_at"),
)


# --- schema version 6 (issue 10: one alert per failed run, outages summarised) -----------------------

# Each run that alerted, once per kind (failed | deadline): a run alerts once whichever of its tasks fail.
# outcome: sent | summarised (sent as an outage summary) | suppressed (counted in its incident, not sent).
alert_run = Table(
    "alert_run",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("incident_id", Integer),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per incident (an ERP or Omni outage, or one DAG failing again and again): its runs are counted
# and summarised ("ERP down since 12:05, 6 runs failed") instead of alerting once per run.
alert_incident = Table(
    "alert_incident",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_key", String(255), nullable=False),  # erp_unavailable, omni_unavailable, failed:<dag_id>, ...
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("runs_failed", Integer, nullable=False),
    Column("alerts_sent", Integer, nullable=False),
    Column("last_sent_at", DateTime(timezone=True), nullable=False),
    Column("last_reason", Text),
    Index("ix_alert_incident_key", "incident_key", "last_seen"),
)
