"""Operator that books Omni return postings as ERP return orders (F5: RETURN_ORDER_COMPLETE -> return order)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from omni_erp import keys, settings
from omni_erp.exceptions import PayloadError, RemoteRejectedError
from omni_erp.operators.dry_run import WOULD_DEAD_LETTER, DryRunErpOperator
from omni_erp.rules.returns import ReturnPlan, plan_return
from omni_erp.states import (
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_READY,
    RETURN_BOOKED,
    RETURN_CUSTOMER,
    RETURN_MANUAL_ONLY,
    RETURN_READY,
    RETURN_REJECTED,
    RETURN_RTO,
    STAGE_RETURN,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.ledger.repo import ClaimedPosting, Ledger
    from omni_erp.models.omni import ReturnOrderPosting

WAITING_FOR_INVOICE = "waiting_for_invoice"  # not "deferred": that one means an outage or an error (LedgerOperator.process_each)
SUMMARY_KEYS = (
    "booked", "already_booked", "manual_settlement_only", "manual_units", "dead_letter", "deferred", WAITING_FOR_INVOICE
)


class ErpSalesReturnOperator(DryRunErpOperator):
    """Book the batch's return postings (customer returns and RTOs) as ERP return orders, once each.

    The forward order must be in the ledger and e-invoiced: an unknown order is dead-lettered; an
    order not yet invoiced waits for the next run. Units that passed QC are credited through an ERP
    return order keyed ``return:<returnOrderCode>``, registered in the ledger before the ERP is called,
    so a re-delivered posting, a retried task or a crash after the call never books a second one. Units
    with QC FAIL or no QC status are recorded for manual settlement with Ajio and listed in the task log
    (domain.md decision 7); a return with no PASS unit makes no ERP call. An ERP rejection (4xx) is
    dead-lettered with the ERP's message; when the ERP stays unavailable the postings go back to the
    queue and the task fails so the outage is visible.

    On the RMS credit-note path (``settings.credit_note_path``, issue 12) a new return order is booked with
    ``raiseCreditNote: false`` and registered for the RMS report (``RmsReturnReportOperator``); the path is
    fixed per return when it is registered, so switching it later never changes who credits a return.

    In a dry run (``dry_run``) each posting goes through the same checks and plan and the task logs the return
    orders and manual-settlement units it would record and the exact return-order requests it would send;
    nothing is sent or recorded (``omni_erp.operators.dry_run``).

    :param erp_conn_id: connection of the ERP.
    :param max_consecutive_unavailable: stop calling an ERP that failed this many returns in a row.
    :param credit_note_path: ``erp`` or ``rms`` for this run (templated); empty: ``$OMNI_ERP_CREDIT_NOTE_PATH``.
    """

    template_fields: tuple[str, ...] = (*DryRunErpOperator.template_fields, "credit_note_path")

    def __init__(self, *, credit_note_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.credit_note_path = credit_note_path

    def in_flight_limit(self) -> int:
        """One return at a time, in batch order. A return posting conflicts on two keys - its forward order
        (the units still open for return) and its return order code (which Ajio may reuse for another order)
        - while ``process_each`` serialises on one; returns are a small share of the volume, so the batch
        order decides, as before concurrency."""
        return 1

    def execute(self, context: Context) -> dict[str, Any]:
        path = settings.credit_note_path(None if str(self.credit_note_path or "") == "None" else self.credit_note_path)
        self._via_rms = path == settings.CREDIT_NOTE_PATH_RMS
        if self._via_rms and not self.erp.books_returns_without_credit_note:
            from airflow.sdk.exceptions import AirflowFailException

            # Booking anyway would have the ERP and RMS both raise an e-credit note for one return.
            raise AirflowFailException(
                f"credit note path is rms, but the ERP adapter {type(self.erp).__name__} cannot book a return without "
                "an e-credit note; no return was booked. Use the erp path with this ERP."
            )
        self.log.info("Credit note path: %s", path)
        manual_rows: list[dict[str, Any]] = []
        try:
            counts = self.process_each(
                self.postings_of_this_run([settings.EVENT_RETURN]),
                lambda posting: self._handle(posting, manual_rows),
                defer=self.defer_posting,
                give_up=self.dead_letter_posting,
                max_consecutive_unavailable=self.max_consecutive_unavailable,
            )
        finally:
            self._log_manual_settlement(manual_rows)  # also when the run fails: those units need a person
        if self.scope.dry_run:
            return self.dry_run_summary({**counts, "manual_units": len(manual_rows)})
        return {
            "batch_id": self.batch_id,
            **{k: counts.get(k, 0) for k in SUMMARY_KEYS},
            "manual_units": len(manual_rows),
        }

    # --- one posting ---------------------------------------------------------------------------

    def _handle(self, posting: ClaimedPosting, manual_rows: list[dict[str, Any]]) -> str:
        from omni_erp.models.omni import ReturnOrderPosting

        ledger = self.ledger
        try:
            model = ReturnOrderPosting.model_validate(posting.payload)
        except ValueError as exc:
            return self._dead(posting, f"invalid return posting: {exc}")
        code, order_code = model.return_order_code, model.forward_order_code
        if self.scope.dry_run:
            earlier = self.handled_earlier(code)
            if earlier is not None:
                return self._handled_earlier_in_dry_run(posting, code, order_code, *earlier)

        known = ledger.get_return_order(code)
        if known is not None:
            clash = self._clash(known, model)
            if clash:
                return self._dead(posting, clash)
            if known["state"] in (RETURN_BOOKED, RETURN_MANUAL_ONLY) and self.scope.dry_run:
                self.would("close posting %s: return %s is %s already", posting.message_id, code, known["state"])
                return "would_already_booked" if known["state"] == RETURN_BOOKED else f"would_{RETURN_MANUAL_ONLY}"
            if known["state"] == RETURN_BOOKED:
                ledger.finish_posting(posting.message_id, outcome="booked", batch_id=self.batch_id)
                self.log.info("Return %s is already booked as %s (posting %s)", code, known["erp_return_order_id"], posting.message_id)
                return "already_booked"
            if known["state"] == RETURN_MANUAL_ONLY:
                # Its units were listed for manual settlement when it was first registered.
                ledger.finish_posting(posting.message_id, outcome=RETURN_MANUAL_ONLY, batch_id=self.batch_id)
                return RETURN_MANUAL_ONLY
            if known["state"] == RETURN_REJECTED:
                return self._dead(posting, f"return {code} was rejected by the ERP before; see the earlier dead letter")
            # RETURN_READY: registered, and perhaps booked, by a run that did not finish: resend the stored request.
            return self._book(posting, known)

        order = ledger.get_order(order_code)
        if order is None:
            return self._dead(posting, f"forward order {order_code} is not in the ledger; nothing to return against")
        if not order["erp_invoice_number"]:
            if order["state"] in (ORDER_READY, ORDER_BOOKED):
                # The e-invoice is on its way (F2 records it); a return can only be credited against it.
                reason = f"forward order {order_code} is not e-invoiced yet (state {order['state']}); the return waits for its invoice"
                if self.scope.dry_run:
                    self.would("put posting %s back in the queue: %s", posting.message_id, reason)
                    return f"would_{WAITING_FOR_INVOICE}"
                ledger.release_posting(posting.message_id, error=reason, batch_id=self.batch_id)
                self.log.info("Return %s waits: %s", code, reason)
                return WAITING_FOR_INVOICE
            return self._dead(posting, f"forward order {order_code} was never e-invoiced (state {order['state']}); nothing to credit")
        if order["state"] == ORDER_CANCELLED or order["cancel_route"]:
            # F3 cancelled the IRN or credited the whole invoice: there is nothing left to credit.
            route = order["cancel_route"] or "cancelled"
            return self._dead(posting, f"forward order {order_code} was cancelled ({route}); its invoice has nothing left to credit")
        try:
            plan = plan_return(model, order["lines"])
        except PayloadError as exc:
            return self._dead(posting, str(exc))

        request = self._request(model, order, plan, raise_credit_note=not self._via_rms)
        if self.scope.dry_run:
            return self._dry_run(posting, model, plan, request, manual_rows)
        with ledger.transaction():
            # The return order, its manual-settlement units and (with nothing to book) the posting: all or nothing.
            stored = ledger.register_return_order(
                return_order_code=code,
                order_code=order_code,
                kind=plan.kind,
                state=RETURN_READY if request is not None else RETURN_MANUAL_ONLY,
                lines=plan.credit_lines,
                erp_request=request,
                message_id=posting.message_id,
            )
            registered_here = stored["message_id"] == posting.message_id
            if registered_here:
                for unit in plan.manual:
                    ledger.record_manual_settlement(
                        return_order_code=code,
                        item_code=unit.item_code,
                        order_code=order_code,
                        sku=unit.sku,
                        qc_status=unit.qc_status,
                        qc_reason=unit.qc_reason,
                        reason=unit.reason,
                    )
                if request is None:
                    ledger.finish_posting(posting.message_id, outcome=RETURN_MANUAL_ONLY, batch_id=self.batch_id)
                elif request.get("raiseCreditNote") is False:
                    ledger.register_rms_return(return_order_code=code, order_code=order_code)
        if not registered_here:
            # Another posting registered this return order in the meantime: handle this one as its re-delivery.
            return self._handle(posting, manual_rows)
        manual_rows.extend({"return_order_code": code, "order_code": order_code, **asdict(unit)} for unit in plan.manual)
        if request is None:
            self.log.info("Return %s: no unit passed QC; %d unit(s) for manual settlement, no ERP call", code, len(plan.manual))
            return RETURN_MANUAL_ONLY
        return self._book(posting, stored)

    def _dry_run(
        self,
        posting: ClaimedPosting,
        model: ReturnOrderPosting,
        plan: ReturnPlan,
        request: dict[str, Any] | None,
        manual_rows: list[dict[str, Any]],
    ) -> str:
        """What registering and booking a new return would record and send, logged; nothing is done."""
        code, order_code = model.return_order_code, model.forward_order_code
        state = RETURN_READY if request is not None else RETURN_MANUAL_ONLY
        self.would("register return order %s (%s) of order %s as %s", code, plan.kind, order_code, state)
        for unit in plan.manual:
            self.would("list unit %s (%s, QC %s) of return %s for manual settlement: %s", unit.item_code, unit.sku, unit.qc_status, code, unit.reason)
        manual_rows.extend({"return_order_code": code, "order_code": order_code, **asdict(unit)} for unit in plan.manual)
        if request is None:
            self.handled_earlier(code, posting.message_id, (order_code, RETURN_MANUAL_ONLY))
            self.would("close posting %s: no unit of return %s passed QC, no ERP call", posting.message_id, code)
            return f"would_{RETURN_MANUAL_ONLY}"
        if request.get("raiseCreditNote") is False:
            self.would("register return %s for the RMS credit-note report", code)
        return self._book(posting, {"return_order_code": code, "order_code": order_code, "erp_request": request})

    def _handled_earlier_in_dry_run(
        self, posting: ClaimedPosting, code: str, order_code: str, earlier: str, registered: tuple[str, str]
    ) -> str:
        """A dry run's later posting of a return code: what the real run does once the earlier one registered it."""
        earlier_order, state = registered
        if earlier_order != order_code:
            return self._dead(posting, f"returnOrderCode {code} is already registered for order {earlier_order}, not {order_code}")
        self.would("close posting %s: return %s would be %s already (posting %s of this run)", posting.message_id, code, state, earlier)
        return "would_already_booked" if state == RETURN_BOOKED else f"would_{RETURN_MANUAL_ONLY}"

    @staticmethod
    def _clash(known: dict[str, Any], model: ReturnOrderPosting) -> str | None:
        """Reason why a posting must not reuse a return order code already in the ledger, if any."""
        if known["order_code"] != model.forward_order_code:
            return (
                f"returnOrderCode {model.return_order_code} is already registered for order {known['order_code']}, "
                f"not {model.forward_order_code}"
            )
        if known["kind"] not in (RETURN_CUSTOMER, RETURN_RTO):
            return f"returnOrderCode {model.return_order_code} is already used by a {known['kind']} return order"
        return None

    @staticmethod
    def _request(
        model: ReturnOrderPosting, order: dict[str, Any], plan: ReturnPlan, *, raise_credit_note: bool = True
    ) -> dict[str, Any] | None:
        """The exact ERP body, stored in the ledger and re-sent unchanged on every retry (None: nothing to credit).
        Without ``raise_credit_note`` (the RMS path) it asks the ERP for no e-credit note."""
        from omni_erp.models.erp import ReturnOrderRequest

        if not plan.credit_lines:
            return None
        return ReturnOrderRequest(
            returnOrderCode=model.return_order_code,
            orderCode=model.forward_order_code,
            invoiceNumber=order["erp_invoice_number"],
            reason=plan.kind,
            lines=plan.credit_lines,
            raiseCreditNote=None if raise_credit_note else False,
        ).to_json_dict()

    def _book(self, posting: ClaimedPosting, stored: dict[str, Any]) -> str:
        from omni_erp.models.erp import ReturnOrderRequest

        ledger: Ledger = self.ledger
        code = stored["return_order_code"]
        request = ReturnOrderRequest.model_validate(stored["erp_request"])
        if self.scope.dry_run:
            self.handled_earlier(code, posting.message_id, (stored["order_code"], RETURN_BOOKED))
            erp = self.erp
            self.would_send(lambda: erp.create_return_order(request, idempotency_key=keys.return_order(code)))
            self.would("record return order %s %s and close posting %s", code, RETURN_BOOKED, posting.message_id)
            return "would_booked"
        try:
            booking = self.erp.create_return_order(request, idempotency_key=keys.return_order(code))
        except RemoteRejectedError as exc:
            with ledger.transaction():
                ledger.update_return_order(code, state=RETURN_REJECTED)
                return self._dead(
                    posting, f"ERP rejected the return order: {exc.code + ': ' if exc.code else ''}{exc.message}", outcome="rejected_by_erp"
                )
        with ledger.transaction():
            ledger.update_return_order(code, state=RETURN_BOOKED, erp_return_order_id=booking.document.return_order_id)
            ledger.finish_posting(posting.message_id, outcome="booked", batch_id=self.batch_id)
        via = " without e-credit note (RMS raises it)" if request.raise_credit_note is False else ""
        if booking.replayed:
            self.log.info("Return %s was already booked in the ERP as %s%s", code, booking.document.return_order_id, via)
            return "already_booked"
        self.log.info("Return %s booked in the ERP as %s%s", code, booking.document.return_order_id, via)
        return "booked"

    def _dead(self, posting: ClaimedPosting, reason: str, *, outcome: str = "dead_letter") -> str:
        if self.scope.dry_run:
            self.would("dead-letter return posting %s (%s): %s", posting.message_id, posting.business_key, reason)
            return WOULD_DEAD_LETTER
        self.ledger.dead_letter_posting(
            posting.message_id, stage=STAGE_RETURN, reason=reason, business_key=posting.business_key, outcome=outcome,
            batch_id=self.batch_id,
        )
        self.log.warning("Dead-lettered return posting %s (%s): %s", posting.message_id, posting.business_key, reason)
        return "dead_letter"

    def _log_manual_settlement(self, rows: list[dict[str, Any]]) -> None:
        """The manual-settlement report: units a person settles offline with Ajio (domain.md section 2)."""
        if not rows:
            self.log.info("Manual settlement: no unit of batch %s needs offline settlement", self.batch_id)
            return
        import pandas as pd

        table = pd.DataFrame(rows, columns=["return_order_code", "order_code", "item_code", "sku", "qc_status", "qc_reason", "reason"])
        with pd.option_context("display.max_rows", 1000, "display.width", 250, "display.max_colwidth", 90):
            self.log.info(
                "Manual settlement with Ajio - %d unit(s) not credited automatically:\n%s",
                len(rows),
                table.fillna("-").to_string(index=False),
            )
