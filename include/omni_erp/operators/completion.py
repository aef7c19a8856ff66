"""F4: handle ``OUTWARD_ORDER_COMPLETE`` postings; units cancelled after e-invoicing go on an ERP return order.

The domain decision (what a COMPLETE posting says) and its pure rule live in ``omni_erp.rules.completion``.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from omni_erp import keys, settings
from omni_erp.exceptions import LedgerConflictError, RemoteRejectedError
from omni_erp.operators.dry_run import DRY_RUN, WOULD_DEAD_LETTER, DryRunErpOperator
from omni_erp.rules.completion import (
    COMPLETED,
    DEAD_LETTER,
    PARTIALLY_SHIPPED,
    Completion,
    decide_completion,
    partial_cancel_code,
    plan_shipments,
    return_lines,
)
from omni_erp.states import (
    DOC_INVOICE,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    ORDER_NOTHING_TO_INVOICE,
    ORDER_PARTIALLY_SHIPPED,
    ORDER_REJECTED,
    RETURN_BOOKED,
    RETURN_PARTIAL_CANCEL,
    RETURN_READY,
    RETURN_REJECTED,
    STAGE_COMPLETION,
)
from omni_erp.timeutil import now

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.ledger.repo import ClaimedPosting
    from omni_erp.models.erp import EInvoice

# Posting outcomes (the rule's verdicts COMPLETED, PARTIALLY_SHIPPED, DEAD_LETTER are outcomes too).
RETURN_ORDER_CREATED = "return_order_created"
ALREADY_COMPLETED = "already_completed"
NO_EINVOICE = "no e-invoice recorded yet"
WAITING_FOR_EINVOICE = "waiting_for_einvoice"  # not "deferred": that one means an outage (LedgerOperator.process_each)


# --- the operator --------------------------------------------------------------------------------


_COUNTS_LOCK = threading.Lock()


class ErpOrderCompleteOperator(DryRunErpOperator):
    """Handle the batch's ``OUTWARD_ORDER_COMPLETE`` postings by the module's domain decision.

    Per posting: its new shipments are recorded once by ``shipmentCode``; units cancelled after
    e-invoicing and not yet on a return order go on one ERP return order ``PC-<orderCode>-<n>`` at the
    invoice's prices, registered in the ledger (with the shipments, in one transaction) before the ERP
    call, so a crash or retry re-sends the same code and key; the ERP then raises the credit note,
    which stays in the ERP (domain.md decision 6). The order becomes ``partially_shipped`` while
    invoiced units are still to ship, ``completed``/``completed_with_return`` once every invoiced unit
    is shipped or cancelled. Data problems are dead-lettered with the figures, in one transaction with
    closing the posting; an order without a recorded e-invoice waits for F2 (the posting goes back to
    the queue). Any other error of one posting is isolated by ``process_each``.

    In a dry run (``dry_run``) each posting goes through the same rule and the task logs the shipments and
    return orders it would record, the exact return-order requests it would send and the state it would
    close the order with; nothing is sent or recorded (``omni_erp.operators.dry_run``).

    :param erp_conn_id: connection of the ERP.
    :param max_consecutive_unavailable: stop calling an ERP that failed this many orders in a row.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        shipments: Counter[str] = Counter()
        summary = self.process_each(
            self.postings_of_this_run([settings.EVENT_COMPLETE]),
            lambda posting: self._complete_one(posting, shipments),
            defer=self.defer_posting,
            give_up=self.dead_letter_posting,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )
        shipments = +shipments  # drop the zero counts
        self.log.info("Shipments of batch %s: %s", self.batch_id, dict(shipments) or "none")
        summary = {**summary, **{k: shipments[k] for k in sorted(shipments)}}
        return self.dry_run_summary(summary) if self.scope.dry_run else summary

    def _complete_one(self, posting: ClaimedPosting, counts: Counter[str]) -> str:
        from omni_erp.models.omni import OutwardOrderPosting

        ledger = self.ledger
        try:
            model = OutwardOrderPosting.model_validate(posting.payload)
        except ValueError as exc:
            return self._dead_letter(posting, f"invalid posting: {exc}")
        code = model.order_code
        order = ledger.get_order(code)
        if order is None:
            return self._dead_letter(posting, f"order {code} is unknown: no OUTWARD_ORDER_CREATE was recorded for it")
        if order["state"] == ORDER_CANCELLED:
            return self._dead_letter(
                posting, f"order {code} was cancelled ({order['cancel_route']}); a completion after a cancellation needs a person"
            )
        if order["state"] in (ORDER_REJECTED, ORDER_NOTHING_TO_INVOICE):
            return self._dead_letter(posting, f"order {code} is {order['state']}: nothing was invoiced for it")
        recorded = {s["shipment_code"]: s for s in ledger.order_shipments(code)}
        shipments = plan_shipments(model.shipments, recorded, posting.message_id)
        if shipments.conflict:
            return self._dead_letter(posting, shipments.conflict)
        try:
            invoice = self._recorded_invoice(order)
        except ValueError as exc:
            return self._dead_letter(posting, f"recorded e-invoice {order['erp_invoice_number']} is unreadable: {exc}")
        if invoice is None:
            if self.scope.dry_run:
                self.would("put posting %s back in the queue: order %s has %s", posting.message_id, code, NO_EINVOICE)
                return f"would_{WAITING_FOR_EINVOICE}"
            ledger.release_posting(posting.message_id, error=NO_EINVOICE, batch_id=self.batch_id)
            self.log.info("Order %s: %s; the posting waits for the invoice flow (F2)", code, NO_EINVOICE)
            return WAITING_FOR_EINVOICE

        returns = ledger.return_orders(order_code=code, kind=RETURN_PARTIAL_CANCEL)
        rejected = [r["return_order_code"] for r in returns if r["state"] == RETURN_REJECTED]
        if rejected:
            return self._dead_letter(posting, f"return order(s) {', '.join(rejected)} of order {code} were rejected by the ERP")
        decision = decide_completion(
            invoiced=((line.sku, line.quantity) for line in invoice.lines),
            live=((item.channel_sku_code, item.quantity_to_invoice) for item in model.order_items),
            shipped=[
                *((item["sku"], item["quantity"]) for s in recorded.values() for item in s["items"]),
                *((item["sku"], item["quantity"]) for items in shipments.new.values() for item in items),
            ],
            returned_before=((line["sku"], line["quantity"]) for r in returns for line in r["lines"]),
        )
        if not decision.plain or decision.verdict == DEAD_LETTER:
            self.log.info("Order %s, invoice %s, units per SKU:\n%s", code, invoice.invoice_number, decision.table())
        if shipments.cancelled:
            self.log.info("Order %s: shipment(s) %s are cancelled; their units are not counted", code, ", ".join(shipments.cancelled))
        if decision.verdict == DEAD_LETTER:
            return self._dead_letter(posting, f"order {code}: {decision.reason}", figures=decision.figures_json())

        request = self._return_request(code, invoice, decision.to_return, returns) if decision.to_return else None
        if self.scope.dry_run:
            with _COUNTS_LOCK:
                counts.update(new_shipments=len(shipments.new), duplicate_shipments=shipments.repeated)
            return self._dry_run(posting, order, decision, shipments.new, request)
        try:
            with ledger.transaction():
                # The shipments, a new return order and (with nothing to book) the order's new state: all or nothing.
                for shipment_code, items in shipments.new.items():
                    if not ledger.record_shipment(shipment_code=shipment_code, order_code=code, message_id=posting.message_id, items=items):
                        raise LedgerConflictError(f"shipment {shipment_code} is recorded for another order")
                if request is not None:
                    self._register_return(posting, code, request)
                ready = [r for r in ledger.return_orders(order_code=code, kind=RETURN_PARTIAL_CANCEL) if r["state"] == RETURN_READY]
                closed = None if ready else self._close(posting, order, decision, changed=bool(shipments.new))
        except LedgerConflictError as exc:
            return self._dead_letter(posting, str(exc))
        with _COUNTS_LOCK:  # postings of different orders finish on several threads (max_in_flight)
            counts.update(new_shipments=len(shipments.new), duplicate_shipments=shipments.repeated)
        if closed is not None:
            return closed
        return self._book_returns(posting, order, decision, ready)

    # --- steps --------------------------------------------------------------------------------

    def _dry_run(
        self,
        posting: ClaimedPosting,
        order: dict[str, Any],
        decision: Completion,
        new_shipments: dict[str, list[dict[str, Any]]],
        request: dict[str, Any] | None,
    ) -> str:
        """What the decision would record and send for ``posting``, logged; nothing is done."""
        from omni_erp.models.erp import ReturnOrderRequest

        code = order["order_code"]
        earlier = self.handled_earlier(code, posting.message_id)
        if earlier is not None:
            self.log.warning(
                "%s: posting %s is weighed against the ledger as it is; posting %s of this run would have changed order %s first",
                DRY_RUN, posting.message_id, earlier[0], code,
            )
        for shipment_code, items in new_shipments.items():
            self.would("record shipment %s of order %s: %s", shipment_code, code, ", ".join(f"{i['sku']} x{i['quantity']}" for i in items))
        ready = [r["erp_request"] for r in self.ledger.return_orders(order_code=code, kind=RETURN_PARTIAL_CANCEL) if r["state"] == RETURN_READY]
        if request is not None:
            stored = self.ledger.get_return_order(request["returnOrderCode"])
            if stored is not None and stored["erp_request"] != request:
                return self._dead_letter(
                    posting, f"return order {request['returnOrderCode']} is registered already with other lines: {stored['lines']}"
                )
            if stored is None:
                self.would("register return order %s of order %s (%s)", request["returnOrderCode"], code, RETURN_READY)
                ready.append(request)
        erp = self.erp
        for body in ready:
            return_order = ReturnOrderRequest.model_validate(body)
            key = keys.return_order(return_order.return_order_code)
            self.would_send(lambda return_order=return_order, key=key: erp.create_return_order(return_order, idempotency_key=key))
            self.would("record return order %s %s", return_order.return_order_code, RETURN_BOOKED)
        return self._close(
            posting, order, decision, changed=bool(new_shipments) or bool(ready), booked=bool(ready), with_return=request is not None
        )

    def _close(
        self,
        posting: ClaimedPosting,
        order: dict[str, Any],
        decision: Completion,
        *,
        changed: bool,
        booked: bool = False,
        with_return: bool = False,
    ) -> str:
        """Set the order's state from the decision and finish the posting (inside the caller's transaction).

        In a dry run only logs it; ``with_return``: a return order would be registered for the order first.
        """
        ledger, code = self.ledger, order["order_code"]
        if self.scope.dry_run:
            return self._would_close(posting, order, decision, changed=changed, booked=booked, with_return=with_return)
        if decision.verdict == PARTIALLY_SHIPPED:
            ledger.update_order(code, state=ORDER_PARTIALLY_SHIPPED)
            ledger.finish_posting(posting.message_id, outcome=PARTIALLY_SHIPPED, batch_id=self.batch_id)
            self.log.info(
                "Order %s partially shipped: %s still to ship or be cancelled; the order stays open for a later COMPLETE",
                code,
                ", ".join(f"{sku} x{n}" for sku, n in decision.outstanding.items()),
            )
            return PARTIALLY_SHIPPED
        final = ORDER_COMPLETED_WITH_RETURN if ledger.return_orders(order_code=code, kind=RETURN_PARTIAL_CANCEL) else ORDER_COMPLETED
        if order["state"] == final and not changed:
            ledger.finish_posting(posting.message_id, outcome=ALREADY_COMPLETED, batch_id=self.batch_id)
            return ALREADY_COMPLETED
        ledger.update_order(code, state=final, closed_at=now())
        outcome = RETURN_ORDER_CREATED if booked else COMPLETED
        ledger.finish_posting(posting.message_id, outcome=outcome, batch_id=self.batch_id)
        return outcome

    def _would_close(
        self, posting: ClaimedPosting, order: dict[str, Any], decision: Completion, *, changed: bool, booked: bool, with_return: bool
    ) -> str:
        """``_close`` of a dry run: the same state and outcome, logged instead of recorded."""
        code = order["order_code"]
        if decision.verdict == PARTIALLY_SHIPPED:
            state, outcome = ORDER_PARTIALLY_SHIPPED, PARTIALLY_SHIPPED
        else:
            has_return = with_return or bool(self.ledger.return_orders(order_code=code, kind=RETURN_PARTIAL_CANCEL))
            state = ORDER_COMPLETED_WITH_RETURN if has_return else ORDER_COMPLETED
            outcome = ALREADY_COMPLETED if order["state"] == state and not changed else RETURN_ORDER_CREATED if booked else COMPLETED
        if outcome == ALREADY_COMPLETED:
            self.would("close posting %s: order %s is %s already", posting.message_id, code, state)
        else:
            self.would("mark order %s %s and close posting %s (%s)", code, state, posting.message_id, outcome)
        if decision.verdict == PARTIALLY_SHIPPED:
            self.log.info("Order %s: %s still to ship or be cancelled", code, ", ".join(f"{sku} x{n}" for sku, n in decision.outstanding.items()))
        return f"would_{outcome}"

    def _recorded_invoice(self, order: dict[str, Any]) -> EInvoice | None:
        """The order's e-invoice as F2 recorded it (never read from the ERP here: the ledger is the record)."""
        from omni_erp.models.erp import EInvoice

        number = order["erp_invoice_number"]
        document = self.ledger.get_document(DOC_INVOICE, number) if number else None
        return EInvoice.model_validate(document["payload"]) if document else None

    @staticmethod
    def _return_request(order_code: str, invoice: EInvoice, units: dict[str, int], returns: list[dict[str, Any]]) -> dict[str, Any]:
        """The next partial-cancel return order's exact ERP body, stored and re-sent unchanged on every retry."""
        from omni_erp.models.erp import ReturnOrderRequest

        returned_by_line: Counter[str] = Counter()
        for r in returns:
            for line in r["lines"]:
                if line.get("lineCode"):
                    returned_by_line[line["lineCode"]] += int(line["quantity"])
        return ReturnOrderRequest(
            returnOrderCode=partial_cancel_code(order_code, len(returns) + 1),
            orderCode=order_code,
            invoiceNumber=invoice.invoice_number,
            reason=RETURN_PARTIAL_CANCEL,
            lines=return_lines(invoice.lines, units, returned_by_line),
        ).to_json_dict()

    def _register_return(self, posting: ClaimedPosting, order_code: str, request: dict[str, Any]) -> None:
        code = request["returnOrderCode"]
        stored = self.ledger.register_return_order(
            return_order_code=code,
            order_code=order_code,
            kind=RETURN_PARTIAL_CANCEL,
            state=RETURN_READY,
            lines=request["lines"],
            erp_request=request,
            message_id=posting.message_id,
        )
        if stored["erp_request"] != request:
            raise LedgerConflictError(f"return order {code} is registered already with other lines: {stored['lines']}")

    def _book_returns(self, posting: ClaimedPosting, order: dict[str, Any], decision: Completion, ready: list[dict[str, Any]]) -> str:
        """Book the registered return orders in the ERP (no transaction open), then record them and close the posting in one."""
        from omni_erp.models.erp import ReturnOrderRequest

        ledger = self.ledger
        booked: list[tuple[str, str]] = []
        for stored in ready:
            code = stored["return_order_code"]
            request = ReturnOrderRequest.model_validate(stored["erp_request"])
            try:
                booking = self.erp.create_return_order(request, idempotency_key=keys.return_order(code))
            except RemoteRejectedError as exc:
                reason = f"ERP rejected return order {code}: {exc.code + ': ' if exc.code else ''}{exc.message}"
                with ledger.transaction():
                    for done_code, erp_id in booked:
                        ledger.update_return_order(done_code, state=RETURN_BOOKED, erp_return_order_id=erp_id)
                    ledger.update_return_order(code, state=RETURN_REJECTED)
                    return self._dead_letter(posting, reason, outcome="rejected_by_erp")
            booked.append((code, booking.document.return_order_id))
            self.log.info(
                "Order %s: return order %s booked in the ERP as %s%s for units cancelled after e-invoicing (%s); "
                "the ERP raises the credit note, which stays in the ERP (domain.md decision 6)",
                stored["order_code"],
                code,
                booking.document.return_order_id,
                " (already there)" if booking.replayed else "",
                ", ".join(f"{line.sku} x{line.quantity}" for line in request.lines),
            )
        with ledger.transaction():
            for code, erp_id in booked:
                ledger.update_return_order(code, state=RETURN_BOOKED, erp_return_order_id=erp_id)
            return self._close(posting, order, decision, changed=True, booked=True)

    def _dead_letter(self, posting: ClaimedPosting, reason: str, *, figures: str | None = None, outcome: str = DEAD_LETTER) -> str:
        if self.scope.dry_run:
            self.would("dead-letter completion %s (order %s): %s", posting.message_id, posting.order_code, reason)
            return WOULD_DEAD_LETTER
        self.ledger.dead_letter_posting(
            posting.message_id,
            stage=STAGE_COMPLETION,
            reason=reason,
            business_key=posting.order_code,
            payload=figures,
            outcome=outcome,
            batch_id=self.batch_id,
        )
        self.log.warning("Dead-lettered completion %s (order %s): %s", posting.message_id, posting.order_code, reason)
        return DEAD_LETTER if outcome == DEAD_LETTER else outcome
