"""Ledger reads of the reconciliation DAG (issue 10 items 4 and 7), and the ``sla_breach`` verbs.

``ReconciliationQueries(ledger)`` works on a ``Ledger``'s connections (its ``_read``/``_write``), kept apart
from ``repo.py`` so the reconciliation's queries read in one place. Reads change nothing; the ``sla_breach``
writes join an open ``ledger.transaction()``. Rows are dicts with aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, select, update

from omni_erp.ledger import tables as t
from omni_erp.states import (
    CANCEL_CREDIT_NOTE,
    CLAIMED,
    DOC_CREDIT_NOTE,
    DOC_INVALID,
    DOC_INVOICE,
    DOC_MISMATCH,
    DOC_READY,
    DOC_UNMATCHED,
    DOC_UPLOAD_FAILED,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    ORDER_INVOICED,
    ORDER_NOTHING_TO_INVOICE,
    ORDER_READY,
    PENDING,
    RETURN_BOOKED,
    RETURN_MANUAL_ONLY,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from omni_erp.ledger.repo import Ledger

EVENT_CREATE = "OUTWARD_ORDER_CREATE"
EVENT_CANCEL = "OUTWARD_ORDER_CANCEL"

# Where an order's life ends; every other state is open and listed with its age and reason.
TERMINAL_ORDER_STATES = frozenset(
    {ORDER_NOTHING_TO_INVOICE, ORDER_CANCELLED, ORDER_COMPLETED, ORDER_COMPLETED_WITH_RETURN}
)
# ERP documents that still wait for something (an upload, or a person).
OPEN_DOCUMENT_STATES = (DOC_READY, DOC_UPLOAD_FAILED, DOC_UNMATCHED, DOC_MISMATCH, DOC_INVALID)
# Return orders done with: booked (its credit note follows through the feed) or nothing to credit.
TERMINAL_RETURN_STATES = frozenset({RETURN_BOOKED, RETURN_MANUAL_ONLY})
# Posting outcomes that mean "a repeat, recognised and not acted on twice".
DUPLICATE_OUTCOMES = ("duplicate_order", "already_cancelled", "already_completed")


def _utc(value: Any) -> Any:
    """SQLite hands back naive datetimes for timezone-aware columns: make them aware UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [{k: _utc(v) for k, v in row._mapping.items()} for row in conn.execute(query).all()]


class ReconciliationQueries:
    """Reads for the reconciliation and the SLA rules, and the ``sla_breach`` verbs, on ``ledger``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _read(self) -> AbstractContextManager[Connection]:
        return self.ledger._read()

    def _write(self) -> AbstractContextManager[Connection]:
        return self.ledger._write()

    # --- SLA rule inputs (omni_erp.rules.sla) ---------------------------------------------------

    def orders_awaiting_upload(self, states: Collection[str] = (ORDER_READY, ORDER_BOOKED, ORDER_INVOICED)) -> list[dict[str, Any]]:
        """Orders in ``states`` with their e-invoice's state and why they wait.

        Keys: ``order_code``, ``state``, ``created_at``, ``invoice_number``, ``invoice_state`` (None when the ERP
        published no e-invoice yet), ``reason`` (the e-invoice's reason, else the CREATE posting's last error).
        """
        o, d = t.ajio_order, t.erp_document
        with self._read() as conn:
            orders = _rows(conn, select(o.c.order_code, o.c.state, o.c.created_at).where(o.c.state.in_(list(states))))
            invoices = {
                r["order_code"]: r
                for r in _rows(conn, select(d.c.order_code, d.c.doc_number, d.c.state, d.c.reason).where(
                    d.c.doc_type == DOC_INVOICE, d.c.order_code.in_(select(o.c.order_code).where(o.c.state.in_(list(states))))
                ).order_by(d.c.id))
            }
            errors = self._posting_errors(conn, EVENT_CREATE, [r["order_code"] for r in orders])
        for order in orders:
            invoice = invoices.get(order["order_code"]) or {}
            order["invoice_number"] = invoice.get("doc_number")
            order["invoice_state"] = invoice.get("state")
            order["reason"] = invoice.get("reason") or errors.get(order["order_code"])
        return sorted(orders, key=lambda r: r["created_at"])

    def _posting_errors(self, conn: Connection, event_type: str, order_codes: list[str]) -> dict[str, str]:
        """Per order, the last error of its latest posting of ``event_type`` that has one."""
        m = t.inbox_message
        errors: dict[str, str] = {}
        for chunk in iter_chunks(order_codes):  # IN lists of a size every database takes
            query = (
                select(m.c.order_code, m.c.last_error)
                .where(m.c.event_type == event_type, m.c.order_code.in_(chunk), m.c.last_error.is_not(None))
                .order_by(m.c.id)
            )
            errors.update({r["order_code"]: r["last_error"] for r in _rows(conn, query)})
        return errors

    def pending_cancellations(self) -> list[dict[str, Any]]:
        """CANCEL postings not processed yet, with their order's state and IRN acknowledgement time.

        Keys: ``message_id``, ``order_code``, ``received_at``, ``last_error``, ``order_state`` (None when no
        CREATE was seen), ``invoiced_at``.
        """
        m, o = t.inbox_message, t.ajio_order
        query = (
            select(m.c.message_id, m.c.order_code, m.c.received_at, m.c.last_error,
                   o.c.state.label("order_state"), o.c.invoiced_at)
            .select_from(m.outerjoin(o, o.c.order_code == m.c.order_code))
            .where(m.c.event_type == EVENT_CANCEL, m.c.state.in_([PENDING, CLAIMED]))
            .order_by(m.c.id)
        )
        with self._read() as conn:
            return _rows(conn, query)

    def unregistered_documents(self) -> list[dict[str, Any]]:
        """E-invoices and credit notes the flows asked the ERP for that no feed has brought yet (so not at the IRP).

        - an order booked (sales order in the ERP) without an e-invoice: kind ``invoice``, key = order code;
        - a return order booked without a credit note: kind ``credit_note``, key = return order code (returns
          whose credit note Increff RMS raised, ``rms_return`` settled, are registered);
        - an order cancelled after the 24-hour window whose credit note has not appeared: kind ``credit_note``,
          key = order code.

        Keys: ``kind``, ``key``, ``order_code``, ``document_date`` (when it was booked: the earliest date the
        document can carry), ``registered`` (always False here).
        """
        o, r, d = t.ajio_order, t.return_order, t.erp_document
        rms = getattr(t, "rms_return", None)
        returns = select(r.c.return_order_code, r.c.order_code, r.c.created_at).where(
            r.c.state == RETURN_BOOKED, r.c.credit_note_number.is_(None)
        )
        if rms is not None:
            settled = select(rms.c.return_order_code).where(rms.c.rms_credit_note_number.is_not(None))
            returns = returns.where(r.c.return_order_code.not_in(settled))
        notes_by_order = select(d.c.order_code).where(d.c.doc_type == DOC_CREDIT_NOTE, d.c.order_code.is_not(None))
        with self._read() as conn:
            booked = _rows(conn, select(o.c.order_code, o.c.created_at).where(o.c.state == ORDER_BOOKED))
            booked_returns = _rows(conn, returns)
            cancelled = _rows(conn, select(o.c.order_code, o.c.closed_at, o.c.updated_at).where(
                o.c.state == ORDER_CANCELLED, o.c.cancel_route == CANCEL_CREDIT_NOTE, o.c.order_code.not_in(notes_by_order)
            ))
        return [
            *({"kind": DOC_INVOICE, "key": b["order_code"], "order_code": b["order_code"], "document_date": b["created_at"],
               "registered": False} for b in booked),
            *({"kind": DOC_CREDIT_NOTE, "key": x["return_order_code"], "order_code": x["order_code"],
               "document_date": x["created_at"], "registered": False} for x in booked_returns),
            *({"kind": DOC_CREDIT_NOTE, "key": c["order_code"], "order_code": c["order_code"],
               "document_date": c["closed_at"] or c["updated_at"], "registered": False} for c in cancelled),
        ]

    def unresolved_dead_letters(self) -> list[dict[str, Any]]:
        """Dead letters nobody marked resolved, oldest first (payload left out)."""
        dl = t.dead_letter
        query = (
            select(dl.c.id, dl.c.stage, dl.c.message_id, dl.c.business_key, dl.c.reason, dl.c.created_at, dl.c.resolved_at)
            .where(dl.c.resolved_at.is_(None))
            .order_by(dl.c.id)
        )
        with self._read() as conn:
            return _rows(conn, query)

    # --- sla_breach: what was alerted ---------------------------------------------------------

    def open_sla_breaches(self) -> dict[str, set[str]]:
        """Per rule, the subjects alerted and not cleared since."""
        b = t.sla_breach
        with self._read() as conn:
            rows = conn.execute(select(b.c.rule, b.c.subject).where(b.c.cleared_at.is_(None))).all()
        found: dict[str, set[str]] = {}
        for rule, subject in rows:
            found.setdefault(rule, set()).add(subject)
        return found

    def record_sla_alert(self, rule: str, breaches: Mapping[str, tuple[str | None, str]], *, at: datetime) -> None:
        """Record that the breaches of ``rule`` were alerted at ``at`` (subject -> (order code, detail)).

        A subject seen before (its breach cleared) is reopened; all rows land in one transaction.
        """
        b = t.sla_breach
        with self._write() as conn:
            known = set(conn.execute(select(b.c.subject).where(b.c.rule == rule, b.c.subject.in_(list(breaches)))).scalars())
            for subject, (order_code, detail) in breaches.items():
                values = dict(order_code=order_code, detail=detail[:2000], first_seen_at=at, alerted_at=at, cleared_at=None)
                if subject in known:
                    conn.execute(update(b).where(b.c.rule == rule, b.c.subject == subject).values(**values))
                else:
                    conn.execute(insert(b).values(rule=rule, subject=subject, **values))

    def clear_sla_breaches(self, rule: str, subjects: Collection[str], *, at: datetime) -> int:
        """Close the breaches of ``rule`` that no longer breach (a later breach of the subject alerts again)."""
        b = t.sla_breach
        with self._write() as conn:
            return conn.execute(
                update(b).where(b.c.rule == rule, b.c.subject.in_(list(subjects)), b.c.cleared_at.is_(None)).values(cleared_at=at)
            ).rowcount

    def sla_breaches(self, *, open_only: bool = False) -> list[dict[str, Any]]:
        """``sla_breach`` rows, oldest first."""
        b = t.sla_breach
        query = select(b).order_by(b.c.id)
        if open_only:
            query = query.where(b.c.cleared_at.is_(None))
        with self._read() as conn:
            return _rows(conn, query)

    # --- reconciliation (omni_erp.rules.reconciliation) -----------------------------------------

    def open_orders(self) -> list[dict[str, Any]]:
        """Orders not in a terminal state: ``order_code``, ``state``, ``created_at``, ``updated_at``, ERP ids,
        ``invoiced_at``, ``invoice_state`` / ``invoice_reason`` (its e-invoice, if any), ``last_error`` (its
        latest posting with an error)."""
        o, d, m = t.ajio_order, t.erp_document, t.inbox_message
        with self._read() as conn:
            orders = _rows(conn, select(
                o.c.order_code, o.c.state, o.c.created_at, o.c.updated_at, o.c.erp_sales_order_id, o.c.erp_invoice_number,
                o.c.invoiced_at,
            ).where(o.c.state.not_in(list(TERMINAL_ORDER_STATES))).order_by(o.c.created_at))
            open_codes = select(o.c.order_code).where(o.c.state.not_in(list(TERMINAL_ORDER_STATES)))
            invoices = {r["order_code"]: r for r in _rows(conn, select(d.c.order_code, d.c.state, d.c.reason).where(
                d.c.doc_type == DOC_INVOICE, d.c.order_code.in_(open_codes)).order_by(d.c.id))}
            errors = {r["order_code"]: r["last_error"] for r in _rows(conn, select(m.c.order_code, m.c.last_error).where(
                m.c.order_code.in_(open_codes), m.c.last_error.is_not(None)).order_by(m.c.id))}
        for order in orders:
            invoice = invoices.get(order["order_code"]) or {}
            order["invoice_state"] = invoice.get("state")
            order["invoice_reason"] = invoice.get("reason")
            order["last_error"] = errors.get(order["order_code"])
        return orders

    def open_postings(self) -> list[dict[str, Any]]:
        """Postings waiting for a run (pending or claimed), oldest first, payload left out."""
        m = t.inbox_message
        query = (
            select(m.c.message_id, m.c.event_type, m.c.business_key, m.c.order_code, m.c.state, m.c.outcome, m.c.attempts,
                   m.c.last_error, m.c.received_at)
            .where(m.c.state.in_([PENDING, CLAIMED]))
            .order_by(m.c.id)
        )
        with self._read() as conn:
            return _rows(conn, query)

    def open_documents(self) -> list[dict[str, Any]]:
        """ERP documents waiting for an upload or a person, payload left out."""
        d = t.erp_document
        query = (
            select(d.c.doc_type, d.c.doc_number, d.c.order_code, d.c.related_code, d.c.state, d.c.reason,
                   d.c.upload_attempts, d.c.created_at, d.c.updated_at)
            .where(d.c.state.in_(list(OPEN_DOCUMENT_STATES)))
            .order_by(d.c.id)
        )
        with self._read() as conn:
            return _rows(conn, query)

    def open_return_orders(self) -> list[dict[str, Any]]:
        """Return orders not booked (waiting for the ERP, or refused by it)."""
        r = t.return_order
        query = (
            select(r.c.return_order_code, r.c.order_code, r.c.kind, r.c.state, r.c.created_at, r.c.updated_at)
            .where(r.c.state.not_in(list(TERMINAL_RETURN_STATES)))
            .order_by(r.c.created_at)
        )
        with self._read() as conn:
            return _rows(conn, query)

    def document_index(self) -> list[dict[str, Any]]:
        """Every ERP document in the ledger: ``doc_type``, ``doc_number``, ``order_code``, ``related_code``, ``seq``, ``state``."""
        d = t.erp_document
        query = select(d.c.doc_type, d.c.doc_number, d.c.order_code, d.c.related_code, d.c.seq, d.c.state).order_by(d.c.id)
        with self._read() as conn:
            return _rows(conn, query)

    def counts_by(self, table_name: str, *columns: str) -> dict[tuple[Any, ...], int]:
        """Row counts of a ledger table grouped by ``columns`` (e.g. ``("ajio_order", "state")``)."""
        table = t.metadata.tables[table_name]
        cols = [table.c[c] for c in columns]
        with self._read() as conn:
            return {tuple(row[:-1]): row[-1] for row in conn.execute(select(*cols, func.count()).group_by(*cols)).all()}

    def successful_calls_by_key(self, system: str, *, more_than: int = 0) -> dict[str, int]:
        """Per idempotency key, how many calls to ``system`` were answered (outcome ``ok``), where more than ``more_than``.

        Several answered calls under one key are repeats the key made harmless: ERP writes answered from the key
        (a replay), or the same document uploaded to Omni again.
        """
        c = t.outbound_call
        count = func.count()
        query = (
            select(c.c.idempotency_key, count)
            .where(and_(c.c.system == system, c.c.outcome == "ok", c.c.idempotency_key.is_not(None)))
            .group_by(c.c.idempotency_key)
            .having(count > more_than)
        )
        with self._read() as conn:
            return {key: n for key, n in conn.execute(query).all()}

    def orders_with_erp_order(self) -> int:
        """How many orders carry an ERP sales order id (booked at some point, whatever happened since)."""
        o = t.ajio_order
        with self._read() as conn:
            return int(conn.execute(select(func.count()).where(o.c.erp_sales_order_id.is_not(None))).scalar() or 0)


def iter_chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    """``values`` in slices of ``size`` (for IN lists)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
