"""Operators that book Omni postings in the seller's ERP (F1: OUTWARD_ORDER_CREATE -> sales order)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omni_erp import keys, settings
from omni_erp.exceptions import LedgerConflictError, PayloadError, RemoteRejectedError
from omni_erp.operators.base import ErpOperator, LedgerOperator
from omni_erp.states import (
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_NOTHING_TO_INVOICE,
    ORDER_READY,
    ORDER_REJECTED,
    STAGE_ORDER_POSTING,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from omni_erp.ledger.repo import ClaimedPosting


class ErpSalesOrderMapOperator(LedgerOperator):
    """Validate the batch's CREATE postings and map each to an ERP sales order in the ledger.

    A posting that cannot be booked (no Ajio PO, no items, bad shape) is dead-lettered with the
    reason; an order with nothing left to invoice is recorded and closed without an ERP call; a
    second CREATE for an order we already have (re-delivery under a new messageId) is closed as a
    duplicate.

    :param po_path: dotted path of the Ajio PO number in the posting (templated); defaults to
        ``$OMNI_ERP_PO_PATH`` or ``orderCustomAttributes.attribute1``.
    """

    template_fields = (*LedgerOperator.template_fields, "po_path")

    def __init__(self, *, po_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.po_path = po_path

    def execute(self, context: Context) -> dict[str, Any]:
        return self.process_each(
            self.ledger.iter_claimed_postings(self.batch_id, [settings.EVENT_CREATE]),
            self._map_one,
            defer=self.defer_posting,
            give_up=self.dead_letter_posting,
        )

    def _map_one(self, posting: ClaimedPosting) -> str:
        from omni_erp.models.omni import OutwardOrderPosting
        from omni_erp.rules.order_posting import plan_sales_order

        ledger, batch = self.ledger, self.batch_id
        try:
            model = OutwardOrderPosting.model_validate(posting.payload)
            plan = plan_sales_order(model, posting.payload, po_path=self.po_path)
        except (PayloadError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, PayloadError) else f"invalid posting: {exc}"
            ledger.dead_letter_posting(
                posting.message_id, stage=STAGE_ORDER_POSTING, reason=reason, business_key=posting.order_code, batch_id=batch
            )
            self.log.warning("Dead-lettered posting %s (order %r): %s", posting.message_id, posting.order_code, reason)
            return "dead_letter"

        known = ledger.get_order(plan.order_code)
        if known is not None and known["state"] == ORDER_CANCELLED and known["create_message_id"] is None:
            # The cancellation arrived first (F3 recorded it); this order must never be booked.
            ledger.finish_posting(posting.message_id, outcome="cancelled_before_booking", batch_id=batch)
            return "cancelled_before_booking"
        if known is not None and known["create_message_id"] != posting.message_id:
            ledger.finish_posting(posting.message_id, outcome="duplicate_order", batch_id=batch)
            self.log.info(
                "Order %r was already received in posting %s; posting %s closed as a duplicate",
                plan.order_code,
                known["create_message_id"],
                posting.message_id,
            )
            return "duplicate_order"

        state = ORDER_READY if plan.request is not None else ORDER_NOTHING_TO_INVOICE
        with ledger.transaction():  # the order and its closed posting land together
            order = ledger.register_order(
                order_code=plan.order_code,
                po_number=plan.po_number,
                state=state,
                create_message_id=posting.message_id,
                lines=plan.lines,
                total_amount=plan.total_amount,
                erp_request=plan.request.to_json_dict() if plan.request else None,
            )
            if order["state"] == ORDER_NOTHING_TO_INVOICE:
                ledger.finish_posting(posting.message_id, outcome=ORDER_NOTHING_TO_INVOICE, batch_id=batch)
                return ORDER_NOTHING_TO_INVOICE
        return "mapped"


class ErpSalesOrderCreateOperator(ErpOperator):
    """Book the batch's mapped orders in the ERP, idempotently, and record the ERP ids.

    Each order is sent with the key ``create:<orderCode>`` (``keys.create_sales_order``) and the body
    stored at mapping time, so a retried task or a re-run returns the existing ERP order instead of
    booking a second one. The booking is recorded with a compare-and-set on the order; when that
    fails, the order is read again and routed on what it is now: booked with the same ERP order by
    another try working the same batch (done, no warning), cancelled by F3 meanwhile (the
    cancellation goes back to F3), anything else deferred with the reason. An order the ERP rejects
    (4xx) is dead-lettered with the ERP's message. When the ERP stays unavailable after the hook's
    retries, the remaining postings go back to the queue for the next run (nothing is lost) and the
    task fails so the outage is visible; so does any posting that failed unexpectedly (see
    ``LedgerOperator.process_each``).

    Sharded (issue 9.1), the task is mapped over the run's shard ids (``ShardIdsOperator``) and each mapped task
    books only its shard's part of the batch (postings with ``id % shards == shard``), so Celery spreads
    the run's bookings over its workers; a retried shard works the same part again.

    :param erp_conn_id: connection of the ERP.
    :param max_consecutive_unavailable: stop calling an ERP that failed this many orders in a row.
    :param shard: the shard this task books (0-based; given by ``expand``).
    :param shards: how many shards the batch is split into (templated; 1 = the whole batch).
    """

    template_fields = (*ErpOperator.template_fields, "shards")

    def __init__(self, *, shard: int = 0, shards: int | str = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.shards = shards

    def execute(self, context: Context) -> dict[str, Any]:
        from omni_erp.operators.shards import parse_shards

        shards = parse_shards(self.shards)
        return self.process_each(
            self.ledger.iter_claimed_postings(self.batch_id, [settings.EVENT_CREATE], shard=int(self.shard), shards=shards),
            self._book_one,
            defer=self.defer_posting,
            give_up=self.dead_letter_posting,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )

    def _book_one(self, posting: ClaimedPosting) -> str:
        from omni_erp.models.erp import SalesOrderRequest

        ledger, batch = self.ledger, self.batch_id
        order = ledger.get_order(posting.order_code)
        if order is None or order["create_message_id"] != posting.message_id:
            # Mapping closed or dead-lettered it; nothing to book for this posting.
            return "skipped"
        if order["erp_sales_order_id"]:
            # Booked earlier (this task retried, another try of it finished first, or the ERP's answer was
            # lost and F2 already matched the invoice).
            ledger.finish_posting(posting.message_id, outcome="booked", batch_id=batch)
            return "already_booked"
        if order["state"] != ORDER_READY:
            # Cancelled between mapping and booking (F3 ran in between): do not book.
            ledger.finish_posting(posting.message_id, outcome=f"not_booked_{order['state']}", batch_id=batch)
            return f"not_booked_{order['state']}"
        request = SalesOrderRequest.model_validate(order["erp_request"])
        try:
            booking = self.erp.create_sales_order(request, idempotency_key=keys.create_sales_order(order["order_code"]))
        except RemoteRejectedError as exc:
            reason = f"ERP rejected the sales order: {exc.code + ': ' if exc.code else ''}{exc.message}"
            with ledger.transaction():
                ledger.update_order_if(order["order_code"], expected_state=ORDER_READY, state=ORDER_REJECTED)
                ledger.dead_letter_posting(
                    posting.message_id,
                    stage=STAGE_ORDER_POSTING,
                    reason=reason,
                    business_key=posting.order_code,
                    outcome="rejected_by_erp",
                    batch_id=batch,
                )
            self.log.error("Order %r: %s", posting.order_code, reason)
            return "rejected_by_erp"
        sales_order_id = booking.document.sales_order_id
        with ledger.transaction():  # the order booked and its posting closed, both or neither
            recorded = ledger.update_order_if(
                order["order_code"], expected_state=ORDER_READY, state=ORDER_BOOKED, erp_sales_order_id=sales_order_id
            )
            if recorded:
                ledger.finish_posting(posting.message_id, outcome="booked", batch_id=batch)
        if not recorded:
            return self._order_changed_while_booking(posting, sales_order_id)
        if booking.replayed:
            self.log.info("Order %r was already booked in the ERP as %s", order["order_code"], sales_order_id)
            return "already_booked"
        return "booked"

    def _order_changed_while_booking(self, posting: ClaimedPosting, sales_order_id: str) -> str:
        """The order left ``ready_to_book`` while our ERP call was in flight: route on what it is now.

        - it carries this very ERP order: another try of this task working the same batch (or F2 matching
          the invoice) recorded the same booking first - the posting is simply booked;
        - F3 closed it as cancelled before anything was booked: the ERP now holds it, so the cancellation
          goes back to F3 (``_cancelled_while_booking``);
        - anything else is not understood: raise, so ``process_each`` defers the posting with the reason
          (and dead-letters it if it keeps happening).
        """
        current = self.ledger.get_order(posting.order_code)
        assert current is not None  # orders are never deleted
        if current["erp_sales_order_id"] == sales_order_id:
            self.ledger.finish_posting(posting.message_id, outcome="booked", batch_id=self.batch_id)
            self.log.info("Order %r was recorded as ERP order %s by another worker first", posting.order_code, sales_order_id)
            return "already_booked"
        if current["state"] == ORDER_CANCELLED and not current["erp_sales_order_id"]:
            return self._cancelled_while_booking(posting, sales_order_id)
        raise LedgerConflictError(
            f"order {posting.order_code!r} is {current['state']} with ERP order {current['erp_sales_order_id']} "
            f"after the ERP booked it as {sales_order_id}; a person must reconcile the two"
        )

    def _cancelled_while_booking(self, posting: ClaimedPosting, sales_order_id: str) -> str:
        """F3 closed the order as "not booked" while our booking was in flight: the ERP now has it.

        Record the booking and give the cancellation back to F3, which routes it like any other
        (cancel the sales order, or the IRN, or raise a credit note - whatever the ERP has done by then).
        All three changes are one transaction.
        """
        ledger = self.ledger
        with ledger.transaction():
            if not ledger.update_order_if(
                posting.order_code,
                expected_state=ORDER_CANCELLED,
                state=ORDER_BOOKED,
                erp_sales_order_id=sales_order_id,
                cancel_route=None,
            ):
                raise LedgerConflictError(f"order {posting.order_code!r} changed again while recording ERP order {sales_order_id}")
            reopened = ledger.reopen_postings(
                posting.order_code,
                settings.EVENT_CANCEL,
                reason=f"order was booked in the ERP as {sales_order_id} while being cancelled",
            )
            ledger.finish_posting(posting.message_id, outcome="booked", batch_id=self.batch_id)
        self.log.warning(
            "Order %r was cancelled while being booked (ERP order %s); %d cancellation(s) handed back to F3",
            posting.order_code, sales_order_id, reopened,
        )
        return "booked_while_cancelled"
