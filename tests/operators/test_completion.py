"""F4: the completion rule (pure, property-tested) and the operator on a real ledger and the ERP sandbox."""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections import Counter
from decimal import Decimal

import pytest
from airflow.sdk.exceptions import AirflowFailException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.ledger import Ledger
from omni_erp.models.omni import OutwardOrderPosting
from omni_erp.operators.completion import ErpOrderCompleteOperator
from omni_erp.operators.credit_notes import ErpCreditNoteFetchOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator
from omni_erp.rules.completion import COMPLETED, DEAD_LETTER, PARTIALLY_SHIPPED, decide_completion, plan_shipments
from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting
from omni_erp.states import (
    DEAD,
    DOC_CREDIT_NOTE,
    DOC_KEPT_IN_ERP,
    DONE,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    ORDER_INVOICED,
    ORDER_PARTIALLY_SHIPPED,
    PENDING,
    RETURN_BOOKED,
    RETURN_PARTIAL_CANCEL,
    RETURN_REJECTED,
)
from tests.flows import book, crash_first_finish, create_posting, record_invoices, store

COMPLETE = "OUTWARD_ORDER_COMPLETE"
BATCH = "omni_order_completion/manual__test"
SKU_A, SKU_B = "460491724004", "460491724011"  # x2 at 1120.00 and x1 at 3299.00 in the CREATE fixture
CODE = "FN0000000001"
RETURN_CALL = "POST /api/v1/return-orders"


# --- the rule, without I/O -----------------------------------------------------------------------


def test_units_not_yet_shipped_are_outstanding_not_a_shortfall():
    # Invoiced A x2, B x1; the first shipment carries A x2 only and nothing was cancelled.
    first = decide_completion(invoiced=[(SKU_A, 2), (SKU_B, 1)], live=[(SKU_A, 2), (SKU_B, 1)], shipped=[(SKU_A, 2)], returned_before=[])
    assert (first.verdict, first.to_return, first.outstanding) == (PARTIALLY_SHIPPED, {}, {SKU_B: 1})
    # The second posting repeats shipment 1 and adds B: the ledger counts each shipment once.
    second = decide_completion(
        invoiced=[(SKU_A, 2), (SKU_B, 1)], live=[(SKU_A, 2), (SKU_B, 1)], shipped=[(SKU_A, 2), (SKU_B, 1)], returned_before=[]
    )
    assert (second.verdict, second.to_return, second.outstanding, second.plain) == (COMPLETED, {}, {}, True)


def test_only_units_cancelled_after_invoicing_are_returned_and_only_once():
    invoiced, live = [(SKU_A, 2), (SKU_B, 1)], [(SKU_A, 1), (SKU_B, 1)]  # one A cancelled after e-invoicing
    first = decide_completion(invoiced=invoiced, live=live, shipped=[(SKU_A, 1)], returned_before=[])
    assert (first.verdict, first.to_return, first.outstanding) == (PARTIALLY_SHIPPED, {SKU_A: 1}, {SKU_B: 1})
    second = decide_completion(invoiced=invoiced, live=live, shipped=[(SKU_A, 1), (SKU_B, 1)], returned_before=[(SKU_A, 1)])
    assert (second.verdict, second.to_return) == (COMPLETED, {})
    # An older posting delivered late (nothing cancelled yet in it) adds no return and is not a contradiction.
    late = decide_completion(invoiced=invoiced, live=invoiced, shipped=[(SKU_A, 1), (SKU_B, 1)], returned_before=[(SKU_A, 1)])
    assert (late.verdict, late.to_return) == (COMPLETED, {})


def test_units_cancelled_before_invoicing_or_never_invoiced_are_not_credited():
    # CREATE: A ordered 3, 1 cancelled -> invoiced 2; the COMPLETE still says 1 cancelled: nothing to credit.
    plain = decide_completion(invoiced=[(SKU_A, 2)], live=[(SKU_A, 3 - 1)], shipped=[(SKU_A, 2)], returned_before=[])
    assert (plain.verdict, plain.to_return) == (COMPLETED, {})
    # A partial invoice (1 of 2 units): the uninvoiced unit is cancelled at packing, never credited.
    partial = decide_completion(invoiced=[(SKU_A, 1)], live=[(SKU_A, 2)], shipped=[(SKU_A, 1)], returned_before=[])
    assert (partial.verdict, partial.to_return) == (COMPLETED, {})


@pytest.mark.parametrize(
    ("live", "shipped", "returned", "reason"),
    [
        ([(SKU_A, 2)], [(SKU_A, 3)], [], f"{SKU_A}: invoiced 2, shipped 3, cancelled after invoicing 0"),
        ([(SKU_A, 1)], [(SKU_A, 2)], [], f"{SKU_A}: invoiced 2, shipped 2, cancelled after invoicing 1"),
        ([(SKU_A, 2)], [(SKU_A, 2)], [(SKU_A, 1)], f"{SKU_A}: invoiced 2, shipped 2, cancelled after invoicing 1, returned before 1"),
        ([(SKU_A, 2)], [(SKU_A, 1), ("999", 1)], [], "999: invoiced 0, shipped 1"),
        ([], [(SKU_A, 1)], [], f"do not list invoiced SKU(s) {SKU_A}"),
        ([(SKU_A, 0)], [], [], "no shipped units"),
    ],
    ids=["over-shipped", "shipped-a-cancelled-unit", "shipped-a-returned-unit", "sku-not-invoiced", "sku-not-listed", "nothing-shipped"],
)
def test_contradictions_are_dead_lettered_with_the_figures_and_nothing_is_returned(live, shipped, returned, reason):
    decision = decide_completion(invoiced=[(SKU_A, 2)], live=live, shipped=shipped, returned_before=returned)
    assert decision.verdict == DEAD_LETTER and reason in decision.reason
    assert decision.to_return == {}
    assert {row["sku"] for row in json.loads(decision.figures_json())} >= {SKU_A}


@st.composite
def shipping_histories(draw):
    """An order's life after e-invoicing: each invoiced unit ships in one of K shipments or is cancelled at a step.

    Posting j (j = 0..K-1) carries shipments 0..j (Increff repeats earlier ones) and every cancellation up
    to step j; units cancelled before the CREATE are never invoiced. Omni may deliver a posting twice,
    and an earlier one again late.
    """
    skus = draw(st.lists(st.sampled_from(["S1", "S2", "S3", "SKU-ü4"]), min_size=1, max_size=3, unique=True))
    shipments = draw(st.integers(1, 3))
    order = []  # (sku, cancelled before the CREATE, [fate per invoiced unit]) with fate ("ship"|"cancel", step)
    for sku in skus:
        before = draw(st.integers(0, 2))
        invoiced = draw(st.integers(1, 4))
        fates = draw(st.lists(st.tuples(st.sampled_from(["ship", "cancel"]), st.integers(0, shipments - 1)), min_size=invoiced, max_size=invoiced))
        order.append((sku, before, fates))
    # Shipment 0 must carry a unit: a COMPLETE is sent when something shipped.
    sku, before, fates = order[0]
    order[0] = (sku, before, [("ship", 0), *fates[1:]])
    deliveries = list(range(shipments))
    for _ in range(draw(st.integers(0, 3))):  # repeats and late re-deliveries of earlier postings
        j = draw(st.integers(0, shipments - 1))
        at = draw(st.integers(j + 1, len(deliveries)))
        deliveries.insert(at, j)
    return order, deliveries


def _posting(order, j: int, message_id: int) -> OutwardOrderPosting:
    """Posting ``j`` of the history, through the real model (as the operator reads it)."""
    items, shipments = [], {}
    for n, (sku, before, fates) in enumerate(order):
        cancelled = before + sum(1 for fate, step in fates if fate == "cancel" and step <= j)
        items.append({"orderItemCode": f"L{n}", "channelSkuCode": sku, "orderedQuantity": before + len(fates), "cancelledQuantity": cancelled})
        for fate, step in fates:
            if fate == "ship" and step <= j:
                shipments.setdefault(step, Counter())[sku] += 1
    return OutwardOrderPosting.model_validate({
        "messageId": message_id, "eventType": COMPLETE, "orderCode": "FN1", "orderItems": items,
        "shipments": [
            {"shipmentCode": f"SHP-{k}", "shipmentStatus": "DISPATCHED",
             "shipmentItems": [{"channelSkuCode": sku, "quantity": q} for sku, q in sorted(units.items())]}
            for k, units in sorted(shipments.items())
        ],
    })


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shipping_histories())
def test_property_split_shipments_return_exactly_the_cancelled_units_and_complete_when_all_is_settled(history):
    order, deliveries = history
    recorded: dict[str, dict] = {}  # the ledger's shipments
    returned: Counter[str] = Counter()  # units on partial-cancel return orders
    return_orders = 0
    for message_id, j in enumerate(deliveries, start=1):
        posting = _posting(order, j, message_id)
        plan = plan_shipments(posting.shipments, recorded, str(message_id))
        assert plan.conflict is None
        decision = decide_completion(
            invoiced=[(sku, len(fates)) for sku, _, fates in order],
            live=[(i.channel_sku_code, i.quantity_to_invoice) for i in posting.order_items],
            shipped=[(it["sku"], it["quantity"]) for s in [*recorded.values(), *({"items": v} for v in plan.new.values())] for it in s["items"]],
            returned_before=returned.items(),
        )
        assert decision.verdict != DEAD_LETTER, decision.reason
        for code, items in plan.new.items():
            recorded[code] = {"items": items, "message_id": str(message_id)}
        if decision.to_return:
            returned.update(decision.to_return)
            return_orders += 1
        # What the ledger knows by now: the latest posting delivered so far.
        latest = max(deliveries[:message_id])
        settled = all(step <= latest for _, _, fates in order for _, step in fates)
        assert decision.verdict == (COMPLETED if settled else PARTIALLY_SHIPPED)
        cancelled_so_far = Counter({sku: sum(1 for f, s in fates if f == "cancel" and s <= latest) for sku, _, fates in order})
        assert +returned == +cancelled_so_far  # exactly the cancelled units, each once
    assert decision.verdict == COMPLETED
    assert return_orders <= len(set(deliveries))  # at most one return order per posting that brought news


# --- the operator, on a real ledger and the ERP sandbox --------------------------------------------


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


@pytest.fixture()
def any_ledger(ledger_url, monkeypatch) -> Ledger:
    """This test's ledger on SQLite and on PostgreSQL; every operator of the test uses it."""
    ledger = Ledger(ledger_url)
    monkeypatch.setattr(Ledger, "from_conn_id", classmethod(lambda cls, conn_id=None: ledger))
    return ledger


def _booked_and_invoiced(ledger: Ledger) -> dict:
    """Order CODE booked by F1 and its e-invoice recorded by F2; returns its CREATE posting."""
    posting = create_posting(1, CODE)
    book(ledger, posting)
    record_invoices(1)
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
    return posting


@pytest.fixture()
def create(erp, ledger) -> dict:
    return _booked_and_invoiced(ledger)


def _complete(ledger: Ledger, *postings: dict, batch: str = BATCH) -> dict:
    store(ledger, *postings)
    OmniInboxClaimOperator(task_id="c", batch_id=batch, event_types=[COMPLETE]).execute(context={})
    return ErpOrderCompleteOperator(task_id="t", batch_id=batch).execute(context={})


def _complete_failing(ledger: Ledger, *postings: dict, batch: str = BATCH) -> str:
    """Run F4 on a batch that must end failed; returns the task's failure message (it holds the summary)."""
    with pytest.raises(AirflowFailException) as failure:
        _complete(ledger, *postings, batch=batch)
    return str(failure.value)


def _return_posts(erp) -> int:
    return erp.state()["request_counts"].get(RETURN_CALL, 0)


def _first_shipment_only(posting: dict, message_id: int) -> dict:
    """The same COMPLETE as Increff posts it when only the first shipment has left so far."""
    first = copy.deepcopy(posting)
    first["messageId"] = message_id
    first["shipments"] = first["shipments"][:1]
    return first


def test_shipped_equal_to_invoiced_closes_the_order_without_an_erp_call(erp, ledger, create):
    summary = _complete(ledger, complete_posting(create, 2, split_shipments=True))
    assert summary == {"batch_id": BATCH, "completed": 1, "new_shipments": 2}
    order = ledger.get_order(CODE)
    assert order["state"] == ORDER_COMPLETED and order["closed_at"] is not None
    assert [s["shipment_code"] for s in ledger.order_shipments(CODE)] == [f"SHP-{CODE}-1", f"SHP-{CODE}-2"]
    assert _return_posts(erp) == 0 and ledger.return_orders(order_code=CODE) == []


def test_split_shipment_posted_in_two_completes_is_not_a_short_shipment(erp, ledger, create):
    """Issue 6.9: the first COMPLETE carries shipment 1 only; the second repeats it and adds shipment 2."""
    both = complete_posting(create, 3, split_shipments=True)
    first = _first_shipment_only(both, 2)
    assert _complete(ledger, first) == {"batch_id": BATCH, PARTIALLY_SHIPPED: 1, "new_shipments": 1}
    order = ledger.get_order(CODE)
    assert order["state"] == ORDER_PARTIALLY_SHIPPED and order["closed_at"] is None
    assert ledger.postings(COMPLETE)[0]["state"] == DONE

    assert _complete(ledger, both, batch="f4/second") == {
        "batch_id": "f4/second", COMPLETED: 1, "new_shipments": 1, "duplicate_shipments": 1,
    }
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED
    assert _return_posts(erp) == 0 and ledger.return_orders(order_code=CODE) == []
    assert ledger.dead_letters("order_completion") == []


def test_split_shipment_with_a_cancellation_books_one_return_order_for_the_cancelled_units_only(erp, any_ledger):
    """One A cancelled after e-invoicing, one A in shipment 1, B in shipment 2 posted later: one return order, A x1."""
    ledger = any_ledger
    create = _booked_and_invoiced(ledger)
    both = complete_posting(create, 3, split_shipments=True, cancelled_after_invoice={SKU_A: 1})
    assert [[(i["channelSkuCode"], i["quantity"]) for i in s["shipmentItems"]] for s in both["shipments"]] == [[(SKU_A, 1)], [(SKU_B, 1)]]
    first = _first_shipment_only(both, 2)
    assert _complete(ledger, first) == {"batch_id": BATCH, PARTIALLY_SHIPPED: 1, "new_shipments": 1}
    [ret] = erp.state()["return_orders"]
    assert [(line["sku"], line["quantity"]) for line in ret["request"]["lines"]] == [(SKU_A, 1)]
    assert ledger.get_order(CODE)["state"] == ORDER_PARTIALLY_SHIPPED

    assert _complete(ledger, both, batch="f4/second") == {
        "batch_id": "f4/second", COMPLETED: 1, "new_shipments": 1, "duplicate_shipments": 1,
    }
    redelivered = copy.deepcopy(both)
    redelivered["messageId"] = 4
    assert _complete(ledger, redelivered, batch="f4/third") == {"batch_id": "f4/third", "already_completed": 1, "duplicate_shipments": 2}

    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED_WITH_RETURN
    [stored] = ledger.return_orders(order_code=CODE)
    assert (stored["return_order_code"], stored["state"]) == (f"PC-{CODE}-1", RETURN_BOOKED)
    assert [(line["sku"], line["quantity"]) for line in stored["lines"]] == [(SKU_A, 1)]
    assert _return_posts(erp) == 1 and len(erp.state()["return_orders"]) == 1
    assert ledger.dead_letters("order_completion") == []


def test_a_cancellation_posted_after_the_first_shipment_is_returned_by_the_later_complete(erp, ledger, create):
    shipped_a = complete_posting(create, 2, split_shipments=True)
    shipped_a["shipments"] = shipped_a["shipments"][:1]  # A x2 shipped, B not yet
    assert _complete(ledger, shipped_a)[PARTIALLY_SHIPPED] == 1

    b_cancelled = complete_posting(create, 3, split_shipments=True, cancelled_after_invoice={SKU_B: 1})
    assert len(b_cancelled["shipments"]) == 1  # shipment 1 repeated, B never ships
    assert _complete(ledger, b_cancelled, batch="f4/second") == {
        "batch_id": "f4/second", "return_order_created": 1, "duplicate_shipments": 1,
    }
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED_WITH_RETURN
    [ret] = erp.state()["return_orders"]
    assert [(line["sku"], line["quantity"], Decimal(line["unitPrice"])) for line in ret["request"]["lines"]] == [(SKU_B, 1, Decimal("3299"))]


def test_units_cancelled_after_invoicing_go_on_one_return_order_at_the_invoice_prices(erp, ledger, create, capfd):
    invoice_number = ledger.get_order(CODE)["erp_invoice_number"]
    capfd.readouterr()
    summary = _complete(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_A: 1}))
    assert summary == {"batch_id": BATCH, "return_order_created": 1, "new_shipments": 1}
    logged = capfd.readouterr().out
    assert "invoiced  live  cancelled_after_invoice  shipped  returned_before  to_return  outstanding" in logged  # the per-SKU table

    [ret] = erp.state()["return_orders"]
    assert ret["returnOrderCode"] == f"PC-{CODE}-1"
    [line] = ret["request"].pop("lines")
    assert ret["request"] == {
        "returnOrderCode": f"PC-{CODE}-1", "orderCode": CODE, "invoiceNumber": invoice_number, "reason": RETURN_PARTIAL_CANCEL,
    }
    assert (line["lineCode"], line["sku"], line["quantity"], Decimal(line["unitPrice"])) == (f"{CODE}-1", SKU_A, 1, Decimal("1120"))
    [stored] = ledger.return_orders(order_code=CODE)
    assert (stored["kind"], stored["state"], stored["erp_return_order_id"]) == (RETURN_PARTIAL_CANCEL, RETURN_BOOKED, ret["returnOrderId"])
    assert [c["idempotency_key"] for c in ledger.calls() if c["operation"] == "create_return_order"] == [f"return:PC-{CODE}-1"]
    order = ledger.get_order(CODE)
    assert order["state"] == ORDER_COMPLETED_WITH_RETURN and order["closed_at"] is not None

    # The ERP raises the credit note; F6 keeps it in the ERP (domain.md decision 6).
    deadline = time.monotonic() + 5
    while not erp.state()["credit_notes"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ErpCreditNoteFetchOperator(task_id="f6", batch_id="setup/f6").execute(context={})
    [note] = ledger.documents(DOC_CREDIT_NOTE, order_code=CODE)
    assert note["state"] == DOC_KEPT_IN_ERP and note["related_code"] == f"PC-{CODE}-1"

    # A retried task and a re-delivered posting (same shipment) change nothing.
    assert ErpOrderCompleteOperator(task_id="t", batch_id=BATCH).execute(context={}) == {"batch_id": BATCH}
    again = _complete(ledger, complete_posting(create, 3, cancelled_after_invoice={SKU_A: 1}), batch="f4/again")
    assert again == {"batch_id": "f4/again", "already_completed": 1, "duplicate_shipments": 1}
    assert _return_posts(erp) == 1 and len(ledger.return_orders(order_code=CODE)) == 1


def test_crash_after_the_erp_booked_the_return_order_replays_the_same_code(erp, ledger, create, monkeypatch):
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "0.3")
    erp.configure(fail_next=["timeout"] * 4, timeout_s=0.6)  # booked in the ERP, the answer never arrives
    assert "1 item(s) deferred" in _complete_failing(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_B: 1}))
    [stored] = ledger.return_orders(order_code=CODE)
    assert stored["return_order_code"] == f"PC-{CODE}-1" and stored["erp_return_order_id"] is None
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
    assert ledger.postings(COMPLETE)[0]["state"] == PENDING

    later = "f4/replay"
    OmniInboxClaimOperator(task_id="c", batch_id=later, event_types=[COMPLETE]).execute(context={})
    summary = ErpOrderCompleteOperator(task_id="t", batch_id=later).execute(context={})
    assert summary == {"batch_id": later, "return_order_created": 1}  # its shipment was recorded by the first attempt
    [ret] = erp.state()["return_orders"]  # still one return order in the ERP
    assert ret["returnOrderCode"] == f"PC-{CODE}-1"
    assert erp.state()["duplicates"]["return_order"] >= 1
    [stored] = ledger.return_orders(order_code=CODE)
    assert stored["state"] == RETURN_BOOKED and stored["erp_return_order_id"] == ret["returnOrderId"]
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED_WITH_RETURN


def test_repeated_shipments_count_once_and_an_extra_one_is_dead_lettered_with_the_figures(erp, ledger, create):
    first = complete_posting(create, 2, split_shipments=True)
    assert _complete(ledger, first)["completed"] == 1

    resent = copy.deepcopy(first)
    resent["messageId"] = 3
    extra = copy.deepcopy(resent["shipments"][0])
    extra["shipmentCode"] = f"SHP-{CODE}-3"
    extra["shipmentItems"] = [dict(extra["shipmentItems"][0], quantity=1)]  # one more unit of SKU A
    resent["shipments"].append(extra)
    failure = _complete_failing(ledger, resent, batch="f4/resent")
    assert "1 item(s) dead-lettered" in failure and "'duplicate_shipments'" not in failure

    [dead] = ledger.dead_letters("order_completion")
    # Counted once per shipment: 2 + 1 units of A, not 2 + 2 + 1.
    assert f"{SKU_A}: invoiced 2, shipped 3, cancelled after invoicing 0" in dead["reason"]
    assert SKU_B not in dead["reason"]
    figures = {row["sku"]: row for row in json.loads(dead["payload"])}
    assert figures[SKU_A]["outstanding"] == -1 and figures[SKU_B]["outstanding"] == 0
    assert ledger.postings(COMPLETE)[1]["state"] == DEAD
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED
    # Nothing of a dead-lettered posting is recorded: the extra shipment is not in the ledger.
    assert [s["shipment_code"] for s in ledger.order_shipments(CODE)] == [f"SHP-{CODE}-1", f"SHP-{CODE}-2"]
    assert _return_posts(erp) == 0


def test_more_shipped_than_invoiced_is_never_guessed(erp, ledger, create):
    posting = complete_posting(create, 2)
    posting["shipments"][0]["shipmentItems"][1]["quantity"] = 2  # SKU B: 1 invoiced, 2 shipped
    assert "1 item(s) dead-lettered" in _complete_failing(ledger, posting)
    [dead] = ledger.dead_letters("order_completion")
    assert f"{SKU_B}: invoiced 1, shipped 2" in dead["reason"]
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
    assert ledger.order_shipments(CODE) == [] and _return_posts(erp) == 0


def test_a_cancelled_shipment_ships_nothing_and_a_shipped_one_cannot_be_cancelled_later(erp, ledger, create):
    both = complete_posting(create, 2, split_shipments=True)
    both["shipments"][1]["shipmentStatus"] = "CANCELLED"  # B's shipment never left
    assert _complete(ledger, both)[PARTIALLY_SHIPPED] == 1
    assert [s["shipment_code"] for s in ledger.order_shipments(CODE)] == [f"SHP-{CODE}-1"]

    undone = copy.deepcopy(both)
    undone["messageId"] = 3
    undone["shipments"][0]["shipmentStatus"] = "CANCELLED"
    assert "1 item(s) dead-lettered" in _complete_failing(ledger, undone, batch="f4/undone")
    [dead] = ledger.dead_letters("order_completion")
    assert f"shipment SHP-{CODE}-1 was recorded as shipped" in dead["reason"]
    assert ledger.get_order(CODE)["state"] == ORDER_PARTIALLY_SHIPPED


def test_unknown_and_cancelled_orders_are_dead_lettered(erp, ledger):
    unknown = create_posting(1, "FN0000000009")
    cancelled = create_posting(2, "FN0000000002")
    store(ledger, cancel_posting(cancelled, 3))
    OmniInboxClaimOperator(task_id="c", batch_id="f3", event_types=["OUTWARD_ORDER_CANCEL"]).execute(context={})
    from omni_erp.operators.cancellation import ErpOrderCancelOperator

    ErpOrderCancelOperator(task_id="f3", batch_id="f3").execute(context={})

    assert "2 item(s) dead-lettered" in _complete_failing(ledger, complete_posting(unknown, 4), complete_posting(cancelled, 5))
    reasons = {d["business_key"]: d["reason"] for d in ledger.dead_letters("order_completion")}
    assert "unknown" in reasons["FN0000000009"] and "cancelled" in reasons["FN0000000002"]
    assert ledger.order_shipments("FN0000000009") == []
    assert erp.state()["request_counts"] == {}


def test_completion_waits_for_the_e_invoice_to_be_recorded(erp, ledger):
    erp.configure(invoice_hold=[CODE])
    posting = create_posting(1, CODE)
    book(ledger, posting)
    assert _complete(ledger, complete_posting(posting, 2)) == {"batch_id": BATCH, "waiting_for_einvoice": 1}
    [row] = ledger.postings(COMPLETE)
    assert row["state"] == PENDING and row["last_error"] == "no e-invoice recorded yet"

    erp.configure(invoice_hold=[])
    record_invoices(1)
    later = "f4/later"
    OmniInboxClaimOperator(task_id="c", batch_id=later, event_types=[COMPLETE]).execute(context={})
    assert ErpOrderCompleteOperator(task_id="t", batch_id=later).execute(context={}) == {"batch_id": later, "completed": 1, "new_shipments": 1}
    assert ledger.postings(COMPLETE)[0]["state"] == DONE


def test_erp_rejecting_the_return_order_is_dead_lettered(erp, ledger, create):
    erp.configure(fail_next=[400])
    assert "1 item(s) dead-lettered" in _complete_failing(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_A: 2}))
    [stored] = ledger.return_orders(order_code=CODE)
    assert stored["state"] == RETURN_REJECTED
    [dead] = ledger.dead_letters("order_completion")
    assert dead["reason"].startswith(f"ERP rejected return order PC-{CODE}-1:")
    assert ledger.postings(COMPLETE)[0]["outcome"] == "rejected_by_erp"
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED


# --- one bad posting never stops the batch --------------------------------------------------------


def test_poison_postings_among_good_ones_are_isolated_and_the_task_fails(erp, ledger, monkeypatch):
    """An unreadable posting is dead-lettered at once; one that makes handling raise is deferred, then dead-lettered."""
    monkeypatch.setenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", "3")
    good = [create_posting(n, f"FN000000000{n}") for n in (1, 2, 3)]
    stuck = create_posting(4, "FN0000000004")
    book(ledger, *good, stuck)
    record_invoices(4)
    # The stuck order has a return order row an older release wrote and this one cannot read.
    _complete(ledger, _first_shipment_only(complete_posting(stuck, 40, split_shipments=True, cancelled_after_invoice={SKU_A: 1}), 40))
    ledger.update_return_order(f"PC-{stuck['orderCode']}-1", lines="[{not json")

    unreadable = complete_posting(good[0], 50)
    unreadable.update(messageId=50, orderCode="FN0000000005", shipments=[{"shipmentCode": "X", "shipmentItems": "three"}])
    batch = [complete_posting(good[0], 11), unreadable, complete_posting(stuck, 41, split_shipments=True, cancelled_after_invoice={SKU_A: 1}), complete_posting(good[1], 12),
             complete_posting(good[2], 13, cancelled_after_invoice={SKU_B: 1})]
    failure = _complete_failing(ledger, *batch, batch="f4/run-1")
    assert "1 item(s) deferred" in failure and "1 item(s) dead-lettered" in failure
    assert {c["orderCode"]: ledger.get_order(c["orderCode"])["state"] for c in good} == {
        "FN0000000001": ORDER_COMPLETED, "FN0000000002": ORDER_COMPLETED, "FN0000000003": ORDER_COMPLETED_WITH_RETURN,
    }
    by_id = {p["message_id"]: p for p in ledger.postings(COMPLETE)}
    assert by_id["50"]["state"] == DEAD and "invalid posting" in by_id["50"]["last_error"]
    assert by_id["41"]["state"] == PENDING and "unexpected error: JSONDecodeError" in by_id["41"]["last_error"]

    for run in (2, 3):  # the poison posting is tried again, never holding the queue, until the bound
        failure = _complete_failing(ledger, batch=f"f4/run-{run}")
    assert "1 item(s) dead-lettered" in failure
    [dead] = [d for d in ledger.dead_letters("order_completion") if d["message_id"] == "41"]
    assert dead["reason"].startswith("gave up after 3 attempts: unexpected error: JSONDecodeError")
    assert {p["message_id"]: p["state"] for p in ledger.postings(COMPLETE)}["41"] == DEAD
    assert ledger.get_order(stuck["orderCode"])["state"] == ORDER_PARTIALLY_SHIPPED
    assert {p["state"] for p in ledger.postings(COMPLETE)} == {DONE, DEAD}


def test_a_crash_before_the_posting_is_finished_rolls_back_the_order_state_and_the_booking_record(erp, any_ledger, monkeypatch):
    """After the ERP booked the return order: its record, the order's state and the finished posting are one transaction."""
    ledger = any_ledger
    create = _booked_and_invoiced(ledger)
    crash_first_finish(monkeypatch)
    assert "1 item(s) deferred" in _complete_failing(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_A: 1}))
    [stored] = ledger.return_orders(order_code=CODE)  # registered with the shipment before the ERP call ...
    assert stored["erp_return_order_id"] is None and stored["state"] != RETURN_BOOKED  # ... its booking not recorded
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED and len(ledger.order_shipments(CODE)) == 1

    later = "f4/after-crash"
    OmniInboxClaimOperator(task_id="c", batch_id=later, event_types=[COMPLETE]).execute(context={})
    assert ErpOrderCompleteOperator(task_id="t", batch_id=later).execute(context={}) == {"batch_id": later, "return_order_created": 1}
    [ret] = erp.state()["return_orders"]
    assert ledger.return_orders(order_code=CODE)[0]["erp_return_order_id"] == ret["returnOrderId"]
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED_WITH_RETURN


_property_orders = itertools.count(1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    fates=st.lists(st.tuples(st.sampled_from(["ship", "cancel"]), st.integers(0, 2)), min_size=3, max_size=3),
    repeats=st.lists(st.integers(0, 2), max_size=2),
)
def test_property_the_real_operators_return_exactly_the_cancelled_units_across_split_postings(erp, ledger, fates, repeats):
    """The rule end to end: F1 books, F2 records the e-invoice, F4 handles each COMPLETE as Increff would post it."""
    n = next(_property_orders)
    code = f"FN77{n:08d}"
    create = create_posting(1000 * n, code)
    book(ledger, create)
    deadline = time.monotonic() + 10
    while ledger.get_order(code)["state"] != ORDER_INVOICED:
        assert time.monotonic() < deadline, "the ERP sandbox did not e-invoice in time"
        ErpEInvoiceFetchOperator(task_id="f2", batch_id=f"setup/f2-{n}").execute(context={})
        time.sleep(0.05)
    units = [SKU_A, SKU_A, SKU_B]  # the invoiced units of the CREATE fixture, each shipped in shipment k or cancelled at step k
    fates = [("ship", 0), *fates[1:]]  # a COMPLETE is sent once something shipped
    steps = max(step for _, step in fates) + 1
    deliveries = list(range(steps))
    for j in repeats:
        deliveries.append(min(j, steps - 1))  # Omni posts an earlier posting again, late

    def posting(j: int, message_id: int) -> dict:
        body = complete_posting(create, message_id)
        for item in body["orderItems"]:
            item["cancelledQuantity"] = sum(1 for sku, (f, s) in zip(units, fates, strict=True) if sku == item["channelSkuCode"] and f == "cancel" and s <= j)
        shipped = [Counter(sku for sku, (f, s) in zip(units, fates, strict=True) if f == "ship" and s == k) for k in range(j + 1)]
        template = body["shipments"][0]
        body["shipments"] = [
            {**template, "shipmentCode": f"SHP-{code}-{k}", "shipmentItems": [
                {**next(i for i in template["shipmentItems"] if i["channelSkuCode"] == sku), "quantity": q} for sku, q in sorted(c.items())
            ]}
            for k, c in enumerate(shipped) if c
        ]
        return body

    for m, j in enumerate(deliveries, start=1):
        _complete(ledger, posting(j, 1000 * n + m), batch=f"f4/{code}/{m}")  # never fails: nothing deferred or dead-lettered
        latest = max(deliveries[:m])
        settled = all(s <= latest for _, s in fates)
        state = ledger.get_order(code)["state"]
        assert state in ((ORDER_COMPLETED, ORDER_COMPLETED_WITH_RETURN) if settled else (ORDER_PARTIALLY_SHIPPED,))

    returned = Counter()
    for r in ledger.return_orders(order_code=code):
        assert r["state"] == RETURN_BOOKED
        returned.update({line["sku"]: line["quantity"] for line in r["lines"]})
    assert returned == Counter(sku for sku, (f, _) in zip(units, fates, strict=True) if f == "cancel")
    in_erp = [r for r in erp.state()["return_orders"] if r["request"]["orderCode"] == code]
    assert len(in_erp) == len(ledger.return_orders(order_code=code)) <= steps
    assert ledger.dead_letters("order_completion") == []
