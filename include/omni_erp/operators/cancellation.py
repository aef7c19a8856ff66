"""F3: cancel Ajio orders in the ERP on ``OUTWARD_ORDER_CANCEL``, routed by the order's ledger state (domain.md decision 5)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from omni_erp import keys, settings
from omni_erp.exceptions import RemoteRejectedError
from omni_erp.operators.dry_run import WOULD_DEAD_LETTER, DryRunErpOperator
from omni_erp.rules.cancellation import ALREADY_CANCELLED, ORDER_CLOSED, cancellation_route
from omni_erp.states import (
    CANCEL_CREDIT_NOTE,
    CANCEL_IRN,
    CANCEL_NOT_BOOKED,
    CANCEL_SALES_ORDER,
    DOC_INVOICE,
    DOC_SKIPPED,
    DOC_UPLOADED,
    ORDER_CANCELLED,
    STAGE_CANCELLATION,
)
from omni_erp.timeutil import now

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.ledger.repo import ClaimedPosting

WAITING_FOR_INVOICE = "waiting_for_invoice"  # not "deferred": that one means an outage (LedgerOperator.process_each)

# Constant per order: a retried or re-delivered cancellation must send the very same body under its key.
IRN_CANCEL_REASON = "Order cancelled by Ajio before dispatch"
CREDIT_NOTE_REASON = "Order cancelled by Ajio after the 24-hour IRN cancellation window"

# The ERP's answers (409) that are business facts, not errors (contracts/erp_rest.yaml).
ERP_ORDER_INVOICED = "ORDER_INVOICED"
ERP_IRN_WINDOW_CLOSED = "IRN_CANCEL_WINDOW_CLOSED"


class ErpOrderCancelOperator(DryRunErpOperator):
    """Handle the batch's ``OUTWARD_ORDER_CANCEL`` postings (for Ajio always full cancellations).

    Routes by the order's state in the ledger: not booked -> marked cancelled, nothing called (an order
    never seen is registered as cancelled so F1 never books it); booked, not e-invoiced -> the ERP
    sales order is cancelled; e-invoiced less than ``irn_window_hours`` ago -> IRN and sales order
    cancelled; later (or when the ERP says the window closed) -> the ERP raises a credit note, which
    the Ajio seller SOP keeps in the ERP (never uploaded; logged and shown in the run report). An
    invoice not yet uploaded to Omni is marked so that F2 never uploads it. Every ERP write carries
    one key per order and action, so re-deliveries, retries and re-runs never act twice.

    In a dry run (``dry_run``) each posting goes through the same routing and the task logs what it would
    record and the exact ERP requests it would send (IRN cancel, sales-order cancel, credit note); nothing
    is sent or recorded (``omni_erp.operators.dry_run``).

    :param erp_conn_id: connection of the ERP.
    :param irn_window_hours: how long after its acknowledgement an IRN can be cancelled (GST rule: 24).
    :param max_consecutive_unavailable: stop calling an ERP that failed this many orders in a row.
    """

    def __init__(self, *, irn_window_hours: float = 24, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.irn_window_hours = irn_window_hours

    def execute(self, context: Context) -> dict[str, Any]:
        irn_window = timedelta(hours=float(self.irn_window_hours))
        if irn_window <= timedelta(0):
            raise ValueError(f"irn_window_hours must be positive, got {self.irn_window_hours!r}")
        summary = self.process_each(
            self.postings_of_this_run([settings.EVENT_CANCEL]),
            partial(self._cancel_one, irn_window=irn_window),
            defer=self.defer_posting,
            give_up=self.dead_letter_posting,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )
        return self.dry_run_summary(summary) if self.scope.dry_run else summary

    def _cancel_one(self, posting: ClaimedPosting, *, irn_window: timedelta) -> str:
        order = self.ledger.get_order(posting.order_code)
        try:
            route = cancellation_route(order, at=now(), irn_window=irn_window)
        except ValueError as exc:
            return self._dead_letter(posting, str(exc))
        problem = _route_problem(order, route)
        if problem:
            return self._dead_letter(posting, problem)
        if self.scope.dry_run:
            return self._dry_run(posting, order, route)
        try:
            if route == CANCEL_NOT_BOOKED:
                return self._not_booked(posting, order)
            assert order is not None
            if route == ALREADY_CANCELLED:
                return self._already_cancelled(posting, order)
            if route == CANCEL_SALES_ORDER:
                return self._cancel_sales_order(posting, order)
            return self._cancel_invoiced(posting, order, route)
        except RemoteRejectedError as exc:
            reason = f"ERP rejected the cancellation: {exc.code + ': ' if exc.code else ''}{exc.message}"
            return self._dead_letter(posting, reason, outcome="rejected_by_erp")

    # --- routes ---------------------------------------------------------------------------

    def _not_booked(self, posting: ClaimedPosting, order: dict[str, Any] | None) -> str:
        ledger = self.ledger
        with ledger.transaction():
            if order is None:
                # The cancellation overtook the CREATE: record the order as cancelled with no CREATE
                # message, which is how F1 recognises an order it must never book.
                ledger.register_order(
                    order_code=posting.order_code,
                    po_number=None,
                    state=ORDER_CANCELLED,
                    create_message_id=None,
                    lines=[],
                    total_amount=Decimal(0),
                    erp_request=None,
                )
            self._close_and_finish(posting, route=CANCEL_NOT_BOOKED)
        self.log.info("Order %s cancelled before booking: nothing to cancel in the ERP", posting.order_code)
        return CANCEL_NOT_BOOKED

    def _already_cancelled(self, posting: ClaimedPosting, order: dict[str, Any]) -> str:
        with self.ledger.transaction():
            if order["cancel_route"] is None:
                # An order registered as cancelled by an older release, which noted the route separately.
                self.ledger.update_order(order["order_code"], cancel_route=CANCEL_NOT_BOOKED, closed_at=now())
            self.ledger.finish_posting(posting.message_id, outcome=ALREADY_CANCELLED, batch_id=self.batch_id)
        self.log.info(
            "Order %s was already cancelled (%s); posting %s closed",
            order["order_code"],
            order["cancel_route"] or CANCEL_NOT_BOOKED,
            posting.message_id,
        )
        return ALREADY_CANCELLED

    def _cancel_sales_order(self, posting: ClaimedPosting, order: dict[str, Any]) -> str:
        code = order["order_code"]
        try:
            self.erp.cancel_sales_order(order["erp_sales_order_id"], idempotency_key=keys.cancel_sales_order(code))
        except RemoteRejectedError as exc:
            if exc.status != 409 or exc.code != ERP_ORDER_INVOICED:
                raise
            # The ERP e-invoiced the order but F2 has not recorded the invoice yet. Guessing the route
            # (IRN within 24 h or credit note) needs the acknowledgement time, so wait for F2.
            reason = f"the ERP e-invoiced this order but the invoice is not recorded yet ({exc.code}: {exc.message}); retried next run"
            self.ledger.release_posting(posting.message_id, error=reason, batch_id=self.batch_id)
            self.log.warning("Order %s: %s", code, reason)
            return WAITING_FOR_INVOICE
        self._close_and_finish(posting, route=CANCEL_SALES_ORDER)
        self.log.info("Order %s: ERP sales order %s cancelled (not e-invoiced)", code, order["erp_sales_order_id"])
        return CANCEL_SALES_ORDER

    def _cancel_invoiced(self, posting: ClaimedPosting, order: dict[str, Any], route: str) -> str:
        code, invoice = order["order_code"], order["erp_invoice_number"]
        with self.ledger.transaction():
            # The order is cancelled in Omni whatever the ERP says next: its invoice must never be uploaded.
            self._keep_invoice_out_of_omni(order)
            if route == CANCEL_IRN:
                # Recorded before calling: a replay after a crash continues this route even past 24 h.
                self.ledger.update_order(code, cancel_route=CANCEL_IRN)
        if route == CANCEL_IRN:
            try:
                self.erp.cancel_irn(invoice, IRN_CANCEL_REASON, idempotency_key=keys.cancel_irn(invoice))
            except RemoteRejectedError as exc:
                if exc.status != 409 or exc.code != ERP_IRN_WINDOW_CLOSED:
                    raise
                self.log.info("Order %s: the ERP says the IRN of %s can no longer be cancelled: %s", code, invoice, exc.message)
                route = CANCEL_CREDIT_NOTE
            else:
                self.erp.cancel_sales_order(order["erp_sales_order_id"], idempotency_key=keys.cancel_sales_order(code))
                self._close_and_finish(posting, route=CANCEL_IRN)
                self.log.info("Order %s: IRN of invoice %s and sales order %s cancelled", code, invoice, order["erp_sales_order_id"])
                return CANCEL_IRN

        self.ledger.update_order(code, cancel_route=CANCEL_CREDIT_NOTE)
        booking = self.erp.request_credit_note(invoice, code, CREDIT_NOTE_REASON, idempotency_key=keys.credit_note_for_invoice(invoice))
        self._close_and_finish(posting, route=CANCEL_CREDIT_NOTE)
        # The seller SOP keeps this credit note in the ERP (domain.md decision 5): say so where people look.
        self.log.warning(
            "Order %s cancelled after the IRN window: credit note %s requested in the ERP against invoice %s; "
            "it stays in the ERP and is not uploaded to Omni (Ajio seller SOP)",
            code,
            _document_ref(booking.document),
            invoice,
        )
        return CANCEL_CREDIT_NOTE

    def _dry_run(self, posting: ClaimedPosting, order: dict[str, Any] | None, route: str) -> str:
        """What the route would record and send for ``posting``, logged; nothing is done."""
        code, message_id = posting.order_code, posting.message_id
        earlier = self.handled_earlier(code, message_id, route) if route != ALREADY_CANCELLED else None
        if earlier is not None:
            self.would("close posting %s: order %s would be cancelled already (%s, posting %s of this run)", message_id, code, earlier[1], earlier[0])
            return f"would_{ALREADY_CANCELLED}"
        if route == ALREADY_CANCELLED:
            assert order is not None
            self.would("close posting %s: order %s is already cancelled (%s)", message_id, code, order["cancel_route"] or CANCEL_NOT_BOOKED)
            return f"would_{ALREADY_CANCELLED}"
        if route == CANCEL_NOT_BOOKED and order is None:
            self.would("register order %s as cancelled (no CREATE seen yet), so that it is never booked", code)
        elif route != CANCEL_NOT_BOOKED:
            assert order is not None
            erp = self.erp
            sales_order, invoice = order["erp_sales_order_id"], order["erp_invoice_number"]
            if route in (CANCEL_IRN, CANCEL_CREDIT_NOTE) and self._invoice_to_skip(order):
                self.would("mark invoice %s %s: order %s is cancelled in Omni before its upload", invoice, DOC_SKIPPED, code)
            if route == CANCEL_IRN:
                self.would_send(lambda: erp.cancel_irn(invoice, IRN_CANCEL_REASON, idempotency_key=keys.cancel_irn(invoice)))
            if route in (CANCEL_IRN, CANCEL_SALES_ORDER):
                self.would_send(lambda: erp.cancel_sales_order(sales_order, idempotency_key=keys.cancel_sales_order(code)))
            if route == CANCEL_CREDIT_NOTE:
                self.would_send(
                    lambda: erp.request_credit_note(invoice, code, CREDIT_NOTE_REASON, idempotency_key=keys.credit_note_for_invoice(invoice))
                )
        self.would("mark order %s %s (route %s) and close posting %s", code, ORDER_CANCELLED, route, message_id)
        return f"would_{route}"

    # --- ledger helpers ---------------------------------------------------------------------

    def _close_and_finish(self, posting: ClaimedPosting, *, route: str) -> None:
        """Mark the order cancelled by ``route`` and finish the posting with that outcome, in one transaction."""
        with self.ledger.transaction():
            self.ledger.update_order(posting.order_code, state=ORDER_CANCELLED, cancel_route=route, closed_at=now())
            self.ledger.finish_posting(posting.message_id, outcome=route, batch_id=self.batch_id)

    def _invoice_to_skip(self, order: dict[str, Any]) -> bool:
        """True when the order's invoice is recorded and not uploaded yet: cancelling the order keeps it out of Omni."""
        number = order["erp_invoice_number"]
        document = self.ledger.get_document(DOC_INVOICE, number) if number else None
        return document is not None and document["state"] not in (DOC_UPLOADED, DOC_SKIPPED)

    def _keep_invoice_out_of_omni(self, order: dict[str, Any]) -> None:
        number = order["erp_invoice_number"]
        if not self._invoice_to_skip(order):
            return
        self.ledger.update_document(
            DOC_INVOICE,
            number,
            state=DOC_SKIPPED,
            reason=f"order {order['order_code']} cancelled in Omni before the invoice was uploaded",
            batch_id=self.batch_id,
        )

    def _dead_letter(self, posting: ClaimedPosting, reason: str, *, outcome: str = "dead_letter") -> str:
        if self.scope.dry_run:
            self.would("dead-letter cancellation %s (order %s): %s", posting.message_id, posting.order_code, reason)
            return WOULD_DEAD_LETTER
        self.ledger.dead_letter_posting(
            posting.message_id, stage=STAGE_CANCELLATION, reason=reason, business_key=posting.order_code, outcome=outcome,
            batch_id=self.batch_id,
        )
        self.log.warning("Dead-lettered cancellation %s (order %s): %s", posting.message_id, posting.order_code, reason)
        return outcome


def _route_problem(order: dict[str, Any] | None, route: str) -> str | None:
    """Why ``route`` cannot be taken for ``order`` without a person (the posting is dead-lettered), or None."""
    if route == ORDER_CLOSED:
        assert order is not None
        return (
            f"order {order['order_code']} is {order['state']}: Ajio cannot cancel an order after packing, "
            "so a cancellation of a shipped order needs a person"
        )
    if route in (CANCEL_IRN, CANCEL_CREDIT_NOTE) and not (order or {}).get("erp_invoice_number"):
        assert order is not None
        return f"order {order['order_code']} is {order['state']} but no e-invoice number is recorded"
    return None


def _document_ref(document: Any) -> str:
    """The ERP's id of a credit-note request, whatever shape the adapter returns."""
    if isinstance(document, dict):
        return str(document.get("creditNoteNumber") or document.get("creditNoteRequestId") or "(no id returned)")
    return str(getattr(document, "credit_note_number", None) or document)
