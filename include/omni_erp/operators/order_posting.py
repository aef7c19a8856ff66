"""Operators that book Omni postings in the seller's ERP (F1: OUTWARD_ORDER_CREATE -> sales order).

Both work on the postings of their run (``postings_of_this_run``): the batch the claim took or, in a dry run,
what a claim would take now. A dry run goes through the same rules and logs, per posting, what would be
recorded and the exact ERP request that would be sent (``plan_posting``); it writes and sends nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from typing import TYPE_CHECKING, Any

from omni_erp import keys, settings
from omni_erp.exceptions import LedgerConflictError, PayloadError, RemoteRejectedError
from omni_erp.operators.base import GroupCommit, LedgerOperator
from omni_erp.operators.dry_run import DRY_RUN, WOULD_DEAD_LETTER, DryRunErpOperator
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

    from omni_erp.ledger import Ledger
    from omni_erp.ledger.repo import ClaimedPosting
    from omni_erp.rules.order_posting import PlannedSalesOrder

WOULD_BOOK = "would_book"
# Postings whose orders the booking reads in one query (_with_orders): about the pool's read-ahead at 32 in flight,
# so an order is read shortly before it is booked.
ORDERS_READ_AHEAD = 64
_NOT_READ = object()


@dataclass(frozen=True)
class PostingPlan:
    """What F1 would do now with one CREATE posting (a dry run's reading of the rules both tasks apply).

    :param outcome: ``would_book``, ``would_dead_letter`` or ``would_close_<outcome>`` (the posting closed
        without an ERP call, with the outcome a real run records).
    :param detail: the reason or the state, for the log.
    :param request: the ERP sales-order request that would be sent (``would_book`` only).
    :param action: what mapping would do with the order: ``register`` it, ``keep`` the one registered earlier
        (its stored request is sent as is) or ``map again`` one the ERP rejected.
    """

    outcome: str
    detail: str
    request: dict[str, Any] | None = None
    action: str = "register"


def plan_posting(ledger: Ledger, posting: ClaimedPosting, *, po_path: str | None) -> PostingPlan:
    """What mapping and booking would do with ``posting`` now, read only: the same rules in the same order.

    The request of an order registered earlier (``ready_to_book``) is the one stored then - it is what a retry
    re-sends under the same key; an order the ERP rejected is mapped again from the posting, as a replay does.
    """
    from omni_erp.models.omni import OutwardOrderPosting
    from omni_erp.rules.order_posting import plan_sales_order

    try:
        plan = plan_sales_order(OutwardOrderPosting.model_validate(posting.payload), posting.payload, po_path=po_path)
    except (PayloadError, ValueError) as exc:
        return PostingPlan(WOULD_DEAD_LETTER, _mapping_problem(exc))
    known = ledger.get_order(plan.order_code)
    if known is None:
        if plan.request is None:
            return PostingPlan(f"would_close_{ORDER_NOTHING_TO_INVOICE}", "every unit was cancelled before posting")
        return PostingPlan(WOULD_BOOK, f"new order, PO {plan.po_number}", plan.request.to_json_dict())
    if known["state"] == ORDER_CANCELLED and known["create_message_id"] is None:
        return PostingPlan("would_close_cancelled_before_booking", "the cancellation arrived first")
    if known["create_message_id"] != posting.message_id:
        return PostingPlan("would_close_duplicate_order", f"order received before in posting {known['create_message_id']}")
    if known["state"] == ORDER_REJECTED:
        if plan.request is None:
            return PostingPlan(f"would_close_{ORDER_NOTHING_TO_INVOICE}", "rejected by the ERP before; now nothing to invoice")
        return PostingPlan(WOULD_BOOK, f"rejected by the ERP before, PO {plan.po_number}", plan.request.to_json_dict(), "map again")
    if known["erp_sales_order_id"]:
        return PostingPlan("would_close_already_booked", f"booked as ERP order {known['erp_sales_order_id']}")
    if known["state"] == ORDER_READY:
        return PostingPlan(WOULD_BOOK, f"registered before, PO {known['po_number']}", known["erp_request"], "keep")
    if known["state"] == ORDER_NOTHING_TO_INVOICE:
        return PostingPlan(f"would_close_{ORDER_NOTHING_TO_INVOICE}", "registered before with nothing to invoice")
    return PostingPlan(f"would_close_not_booked_{known['state']}", f"order is {known['state']}")


def _mapping_problem(exc: Exception) -> str:
    """The dead-letter reason of a posting that cannot be mapped (the same text in a real and a dry run)."""
    return str(exc) if isinstance(exc, PayloadError) else f"invalid posting: {exc}"


def _json(body: Any) -> str:
    """A request body for the log, as the HTTP client serialises it."""
    return json.dumps(body, allow_nan=False)


class ErpSalesOrderMapOperator(LedgerOperator):
    """Validate the batch's CREATE postings and map each to an ERP sales order in the ledger.

    A posting that cannot be booked (no Ajio PO, no items, bad shape) is dead-lettered with the
    reason; an order with nothing left to invoice is recorded and closed without an ERP call; a
    second CREATE for an order we already have (re-delivery under a new messageId) is closed as a
    duplicate.

    A replayed posting (``order_codes`` or a backfill took it from the dead letters) goes through the same
    rules; if the ERP had rejected its order, the order is mapped again from the posting (the cause may have
    been the mapping) and booked again under the same key - the ERP booked nothing for a rejected request.
    An order booked already is never booked again.

    In a dry run each posting's outcome is logged (``DRY RUN would ...``), with the exact ERP request of
    each order it would book; nothing is recorded.

    :param po_path: dotted path of the Ajio PO number in the posting (templated); defaults to
        ``$OMNI_ERP_PO_PATH`` or ``orderCustomAttributes.attribute1``.
    """

    template_fields = (*LedgerOperator.template_fields, "po_path")

    def __init__(self, *, po_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.po_path = po_path

    def execute(self, context: Context) -> dict[str, Any]:
        postings = self.postings_of_this_run([settings.EVENT_CREATE])
        if self.scope.dry_run:
            summary = self.process_each(postings, self._map_dry, defer=self._would_defer, give_up=self._would_dead_letter)
            return _dry_run_summary(self, summary)
        return self.process_each(postings, self._map_one, defer=self.defer_posting, give_up=self.dead_letter_posting)

    def _map_dry(self, posting: ClaimedPosting) -> str:
        plan = plan_posting(self.ledger, posting, po_path=self.po_path)
        replay = " (replaying the dead-lettered posting)" if posting.replayed else ""
        if plan.outcome == WOULD_DEAD_LETTER:
            self.log.info("%s would dead-letter posting %s (order %r)%s: %s", DRY_RUN, posting.message_id,
                          posting.order_code, replay, plan.detail)
        elif plan.outcome == WOULD_BOOK:
            self.log.info("%s would %s order %r from posting %s%s (%s) and book it with ERP sales-order request %s",
                          DRY_RUN, plan.action, posting.order_code, posting.message_id,
                          replay, plan.detail, _json(plan.request))
        else:
            self.log.info("%s would close posting %s (order %r)%s without booking: %s (%s)", DRY_RUN, posting.message_id,
                          posting.order_code, replay, plan.outcome.removeprefix("would_close_"), plan.detail)
        return plan.outcome

    def _would_defer(self, posting: ClaimedPosting, reason: str) -> None:
        self.log.info("%s would put posting %s (order %r) back in the queue: %s", DRY_RUN, posting.message_id,
                      posting.order_code, reason)

    def _would_dead_letter(self, posting: ClaimedPosting, reason: str) -> None:
        self.log.info("%s would dead-letter posting %s (order %r): %s", DRY_RUN, posting.message_id, posting.order_code, reason)

    def _map_one(self, posting: ClaimedPosting) -> str:
        from omni_erp.models.omni import OutwardOrderPosting
        from omni_erp.rules.order_posting import plan_sales_order

        ledger, batch = self.ledger, self.batch_id
        try:
            model = OutwardOrderPosting.model_validate(posting.payload)
            plan = plan_sales_order(model, posting.payload, po_path=self.po_path)
        except (PayloadError, ValueError) as exc:
            reason = _mapping_problem(exc)
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
        if known is not None and known["state"] == ORDER_REJECTED:
            return self._map_again(posting, plan)

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

    def _map_again(self, posting: ClaimedPosting, plan: PlannedSalesOrder) -> str:
        """A replayed posting whose order the ERP rejected: record the order as mapped now, ready to book again.

        The ERP booked nothing for a rejected request, so the order may go again under its key with the
        request the rules give today (the rejection's cause may have been the mapping, e.g. the PO path). A
        compare-and-set on ``rejected_by_erp``: if the order changed meanwhile, nothing is written and the
        posting is deferred with the reason.
        """
        ledger, batch = self.ledger, self.batch_id
        state = ORDER_READY if plan.request is not None else ORDER_NOTHING_TO_INVOICE
        with ledger.transaction():
            if not ledger.update_order_if(
                plan.order_code,
                expected_state=ORDER_REJECTED,
                state=state,
                po_number=plan.po_number,
                lines=json.dumps(plan.lines, default=str),
                total_amount=plan.total_amount,
                erp_request=json.dumps(plan.request.to_json_dict(), default=str) if plan.request else None,
            ):
                raise LedgerConflictError(f"order {plan.order_code!r} changed while being mapped again")
            if state == ORDER_NOTHING_TO_INVOICE:
                ledger.finish_posting(posting.message_id, outcome=ORDER_NOTHING_TO_INVOICE, batch_id=batch)
        self.log.warning(
            "Order %r was rejected by the ERP before; posting %s mapped again (%s)", plan.order_code, posting.message_id, state
        )
        return ORDER_NOTHING_TO_INVOICE if state == ORDER_NOTHING_TO_INVOICE else "mapped_again"


class ErpSalesOrderCreateOperator(DryRunErpOperator):
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

    In a dry run each order it would book is logged with the exact request the ERP adapter would send and its
    idempotency key (``DRY RUN would POST <endpoint> key create:<orderCode> body {...}``): the stored request
    for an order mapped earlier, else the one the rules give now (``plan_posting``). Nothing is sent or recorded.

    :param erp_conn_id: connection of the ERP.
    :param max_consecutive_unavailable: stop calling an ERP that failed this many orders in a row.
    :param shard: the shard this task books (0-based; given by ``expand``).
    :param shards: how many shards the batch is split into (templated; 1 = the whole batch).
    """

    template_fields = (*DryRunErpOperator.template_fields, "shards")

    def __init__(self, *, shard: int = 0, shards: int | str = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard
        self.shards = shards
        self._orders_read: dict[str, Any] = {}  # message id -> its order as _with_orders read it (None: no order)

    def execute(self, context: Context) -> dict[str, Any]:
        from omni_erp.operators.shards import parse_shards

        shards = parse_shards(self.shards)
        postings = self.postings_of_this_run([settings.EVENT_CREATE], shard=int(self.shard), shards=shards)
        summary = self.process_each(
            postings if self.scope.dry_run else self._with_orders(postings),
            self._book_dry if self.scope.dry_run else self._book_one,
            defer=self.defer_posting,
            give_up=self.dead_letter_posting,
            max_consecutive_unavailable=self.max_consecutive_unavailable,
        )
        return self.dry_run_summary(summary) if self.scope.dry_run else summary

    def _book_dry(self, posting: ClaimedPosting) -> str:
        from omni_erp.models.erp import SalesOrderRequest

        plan = plan_posting(self.ledger, posting, po_path=None)
        if plan.outcome == "would_close_already_booked":
            return "already_booked"
        if plan.outcome != WOULD_BOOK:
            return "skipped"  # mapping would close or dead-letter it (its log says so): nothing to book
        request = SalesOrderRequest.model_validate(plan.request)
        key = keys.create_sales_order(request.order_code)
        self.would_send(lambda: self.erp.create_sales_order(request, idempotency_key=key))
        return WOULD_BOOK

    @cached_property
    def _bookings(self) -> GroupCommit:
        """Records the ERP's answers several bookings to a transaction (``GroupCommit``; ``_record_booking`` each).

        Safe because the ERP call carries the key ``create:<orderCode>``: a task killed after the ERP answered and
        before the group committed recorded nothing of it, and the re-run's call returns the same ERP order.
        """
        return GroupCommit(self.ledger, self._record_booking)

    def _record_booking(self, booked: tuple[str, str, str]) -> bool:
        """The order booked and its posting closed, both or neither (in ``_bookings``' transaction); True when
        the order was still ``ready_to_book`` (compare-and-set), False when it changed and nothing was written."""
        order_code, message_id, sales_order_id = booked
        ledger = self.ledger
        recorded = ledger.update_order_if(
            order_code, expected_state=ORDER_READY, state=ORDER_BOOKED, erp_sales_order_id=sales_order_id
        )
        if recorded:
            ledger.finish_posting(message_id, outcome="booked", batch_id=self.batch_id)
        return recorded

    def _with_orders(self, postings: Iterable[ClaimedPosting]) -> Iterator[ClaimedPosting]:
        """``postings``, with the orders of each ``ORDERS_READ_AHEAD`` of them read in one query (``orders_to_book``)
        (one SELECT per order was 13 % of the booking's CPU).

        An order read here may change before its posting is booked (F3 cancels it, another try books it): the
        booking's compare-and-set on ``ready_to_book`` catches that and routes on the order as it is then, as it
        does for a change while the ERP call is in flight; the ERP key makes a second send return the same order.
        """
        pending = iter(postings)
        while chunk := list(islice(pending, ORDERS_READ_AHEAD)):
            orders = self.ledger.orders_to_book([p.order_code for p in chunk])
            for posting in chunk:
                self._orders_read[posting.message_id] = orders.get(posting.order_code)
                yield posting

    def _book_one(self, posting: ClaimedPosting) -> str:
        from omni_erp.models.erp import SalesOrderRequest

        ledger, batch = self.ledger, self.batch_id
        order = self._orders_read.pop(posting.message_id, _NOT_READ)
        if order is _NOT_READ:
            order = ledger.get_order(posting.order_code)
        if order is None or order["create_message_id"] != posting.message_id:
            # Mapping closed or dead-lettered it; nothing to book for this posting.
            return "skipped"
        if order["erp_sales_order_id"]:
            # Booked earlier (this task retried, another try of it finished first, or the ERP's answer was
            # lost and F2 already matched the invoice).
            ledger.finish_posting(posting.message_id, outcome="booked", batch_id=batch)
            return "already_booked"
        if order["state"] == ORDER_REJECTED:
            # A replayed posting mapping did not get to (its task failed): still claimed, the report gives it back.
            return "skipped"
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
        recorded = self._bookings.submit((order["order_code"], posting.message_id, sales_order_id))
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


def _dry_run_summary(operator: LedgerOperator, summary: dict[str, Any]) -> dict[str, Any]:
    """A dry run's XCom summary: ``dry_run: true`` with the counts, logged with a reminder."""
    summary = {**summary, "dry_run": True}
    operator.log.info("%s of %s: nothing was sent or recorded. Summary: %s", DRY_RUN, operator.task_id, summary)
    return summary
