"""Issue 6, done when: 20 poison postings among 200 valid ones, through the real inbox and all five DAGs.

Every valid order is booked, invoiced and completed (or cancelled, or returned) in the first round of
runs; every poison posting is refused at the inbox or dead-lettered with a reason; the runs a poison
posting reached end failed and the others succeed. A split shipment with one unit cancelled after
e-invoicing books one return order for that unit only.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import requests

from omni_erp.ledger import Ledger
from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting, return_posting
from omni_erp.sandbox.pusher import PostingPusher, generate_orders
from omni_erp.states import (
    DEAD,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    RETURN_BOOKED,
    RETURN_PARTIAL_CANCEL,
)
from tests.conftest import INBOX_KEY
from tests.flows import wait_for_einvoices

pytestmark = pytest.mark.integration

VALID_POSTINGS = 200
UNICODE_ORDER = "FNपुणे0001"  # valid: any printable Unicode may be an order code


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def _life_cycle() -> tuple[list[dict], dict[str, list[str]]]:
    """200 valid postings of every event type, and which orders should end how."""
    creates = generate_orders(90, seed=606, partially_cancelled_rate=0.2)
    creates[0]["orderCode"] = creates[0]["parentOrderCode"] = UNICODE_ORDER
    postings = list(creates)
    next_id = iter(range(910001, 920000))
    cancelled = creates[80:90]
    postings += [cancel_posting(c, next(next_id)) for c in cancelled]

    with_two_lines = [c for c in creates[:75] if len(c["orderItems"]) >= 2]
    split = with_two_lines[:5]
    split_with_cancel = next(
        c for c in with_two_lines[5:]
        if c["orderItems"][-1]["orderedQuantity"] - c["orderItems"][-1]["cancelledQuantity"] >= 2
    )
    for create in split:
        both = complete_posting(create, 0, split_shipments=True)
        first = copy.deepcopy(both) | {"messageId": next(next_id), "shipments": both["shipments"][:1]}
        postings += [first, both | {"messageId": next(next_id)}]
    # The customer cancels one unit of the second shipment after e-invoicing; the first shipment repeats unchanged.
    sku = split_with_cancel["orderItems"][-1]["channelSkuCode"]
    later = complete_posting(split_with_cancel, next(next_id), cancelled_after_invoice={sku: 1}, split_shipments=True)
    first = complete_posting(split_with_cancel, next(next_id), split_shipments=True)
    first["shipments"] = first["shipments"][:1]
    assert first["shipments"][0] == later["shipments"][0]
    postings += [first, later]

    special = {c["orderCode"] for c in split + [split_with_cancel]}
    singles = [c for c in creates[:75] if c["orderCode"] not in special]
    postings += [complete_posting(c, next(next_id)) for c in singles]
    returned = singles[:15]
    postings += [
        return_posting(c, next(next_id), return_order_code=f"RTN-{n:03d}", units=[(c["orderItems"][0]["channelSkuCode"], "PASS")])
        for n, c in enumerate(returned, start=1)
    ]
    filler = VALID_POSTINGS - len(postings)
    assert filler >= 0, len(postings)
    postings += [
        copy.deepcopy(c) | {"messageId": next(next_id), "eventType": "OUTWARD_ORDER_SHIPMENT_DISPATCH"} for c in singles[:filler]
    ]
    expected = {
        "booked": [c["orderCode"] for c in creates],
        "completed": [c["orderCode"] for c in singles + split],
        "completed_with_return": [split_with_cancel["orderCode"]],
        "cancelled": [c["orderCode"] for c in cancelled],
        "returned": [f"RTN-{n:03d}" for n in range(1, 16)],
        # Booked and invoiced; their completion is poison (the second needs two SKUs, to leave one out).
        "poison_targets": [creates[75]["orderCode"], next(c["orderCode"] for c in creates[76:80] if len(c["orderItems"]) >= 2)],
        "split_with_cancel_sku": [sku],
    }
    return postings, expected


def _poison(targets: list[dict]) -> tuple[list[tuple[str, object, str]], list[dict]]:
    """20 poison postings: (kind, body, content type) the inbox must refuse, and postings only a flow can judge."""
    base = generate_orders(3, seed=707, first_message_id=950001)[0]

    def variant(message_id: int, change) -> dict:
        posting = copy.deepcopy(base) | {"messageId": message_id}
        change(posting)
        return posting

    def item(field, value):
        return lambda p: p["orderItems"][0].__setitem__(field, value)

    complete = complete_posting(base, 950100)
    refused = [
        ("bidi override in orderCode", variant(950010, lambda p: p.__setitem__("orderCode", "FN\u202e0001")), "application/json"),
        ("orderedQuantity 2^63", variant(950011, item("orderedQuantity", 2**63)), "application/json"),
        ("orderedQuantity 10^12", variant(950012, item("orderedQuantity", 10**12)), "application/json"),
        ("orderedQuantity null", variant(950013, item("orderedQuantity", None)), "application/json"),
        ("orderedQuantity true", variant(950014, item("orderedQuantity", True)), "application/json"),
        ("messageId NaN", variant(0, lambda p: p.__setitem__("messageId", "NaN")), "application/json"),
        ("messageId negative", variant(-5, lambda p: None), "application/json"),
        ("messageId 2^64", variant(2**64, lambda p: None), "application/json"),
        ("eventType misspelt", variant(950015, lambda p: p.__setitem__("eventType", "outward_order_create")), "application/json"),
        ("eventType with NUL", variant(950016, lambda p: p.__setitem__("eventType", "OUTWARD_ORDER_CREATE\x00")), "application/json"),
        ("CREATE without orderItems", variant(950017, lambda p: p.pop("orderItems")), "application/json"),
        ("COMPLETE with shipmentItems null",
         copy.deepcopy(complete) | {"messageId": 950018, "shipments": [complete["shipments"][0] | {"shipmentItems": None}]},
         "application/json"),
        ("return without items",
         return_posting(base, 950019, return_order_code="RTN-P-1", units=[(base["orderItems"][0]["channelSkuCode"], "PASS")])
         | {"items": None}, "application/json"),
        ("text/plain body", variant(950020, lambda p: None), "text/plain"),
        ("JSON 40 levels deep", variant(950021, lambda p: p.__setitem__("orderCustomAttributes", _nested(40))), "application/json"),
    ]
    over_shipped = complete_posting(targets[0], 950031)
    over_shipped["shipments"][0]["shipmentItems"][0]["quantity"] += 1
    missing_sku = complete_posting(targets[1], 950032)
    dropped = missing_sku["orderItems"].pop()["channelSkuCode"]
    for shipment in missing_sku["shipments"]:
        shipment["shipmentItems"] = [i for i in shipment["shipmentItems"] if i["channelSkuCode"] != dropped]
    missing_sku["shipments"] = [s for s in missing_sku["shipments"] if s["shipmentItems"]]
    no_po = copy.deepcopy(generate_orders(3, seed=707, first_message_id=950001)[1])
    del no_po["orderCustomAttributes"]["attribute1"]
    unknown_order = complete_posting(generate_orders(3, seed=707, first_message_id=950001)[2], 950033)
    judged_by_flows = [
        no_po | {"messageId": 950030},
        over_shipped,
        missing_sku,
        unknown_order,
        return_posting(base | {"orderCode": "FN0000000404"}, 950034, return_order_code="RTN-P-2",
                       units=[(base["orderItems"][0]["channelSkuCode"], "PASS")]),
    ]
    return refused, judged_by_flows


def test_poison_postings_never_stop_the_valid_ones(erp, omni, inbox, ledger_path, run_dag):
    valid, expected = _life_cycle()
    assert len(valid) == VALID_POSTINGS and {p.get("eventType") for p in valid} >= {
        "OUTWARD_ORDER_CREATE", "OUTWARD_ORDER_CANCEL", "OUTWARD_ORDER_COMPLETE", "RETURN_ORDER_COMPLETE",
        "OUTWARD_ORDER_SHIPMENT_DISPATCH",
    }
    creates = [p for p in valid if p["eventType"] == "OUTWARD_ORDER_CREATE"]
    targets = [next(c for c in creates if c["orderCode"] == code) for code in expected["poison_targets"]]
    refused, judged_by_flows = _poison(targets)
    assert len(refused) + len(judged_by_flows) == 20

    # Omni delivers the poison first, mixed into the valid stream, as a careless client would.
    answers = {}
    for kind, body, content_type in refused:
        response = requests.post(
            f"{inbox}/postings", data=json.dumps(body).encode(), timeout=10,
            headers={"X-Api-Key": INBOX_KEY, "Content-Type": content_type},
        )
        answers[kind] = response.status_code
        assert response.json()["hasError"] is True and response.json()["errorMessage"], kind
    assert all(400 <= status < 500 for status in answers.values()), answers
    pusher = PostingPusher(inbox, INBOX_KEY, backoff_s=0.01)
    report = pusher.push(judged_by_flows[:2] + valid[:100] + judged_by_flows[2:] + valid[100:])
    assert report.accepted == VALID_POSTINGS + len(judged_by_flows) and not report.rejected, report.rejected

    ledger = Ledger.sqlite(ledger_path)
    assert len(ledger.postings()) == VALID_POSTINGS + len(judged_by_flows)  # nothing of the refused ones is stored
    assert len(ledger.dead_letters("inbox")) == len(refused)

    runs = {"omni_order_posting": run_dag("omni_order_posting")()}
    wait_for_einvoices(len(expected["booked"]), timeout_s=20)
    for dag_id in ("erp_invoice_upload", "omni_order_cancellation", "omni_order_completion", "omni_return_credit_note"):
        runs[dag_id] = run_dag(dag_id)()
    states = {dag_id: run.state for dag_id, run in runs.items()}
    # A posting without PO (F1), three bad completions (F4) and a return of an unknown order (F5) turn their runs red.
    assert states == {
        "omni_order_posting": "failed", "erp_invoice_upload": "success", "omni_order_cancellation": "success",
        "omni_order_completion": "failed", "omni_return_credit_note": "failed",
    }

    erp_state, omni_state = erp.state(), omni.state()
    assert Counter(o["orderCode"] for o in erp_state["sales_orders"]) == Counter(expected["booked"])
    invoice_of = {code: ledger.get_order(code)["erp_invoice_number"] for code in expected["booked"]}
    assert None not in invoice_of.values()
    # Every invoice reached Omni once, but those of orders with a cancellation already waiting (F2 holds them back).
    live = {number for code, number in invoice_of.items() if code not in expected["cancelled"]}
    assert {i["body"]["invoiceNumber"] for i in omni_state["invoices"]} == live  # Omni keys them by number
    assert not omni_state["duplicates"]  # and counts every second delivery of one
    for state, codes in (
        (ORDER_COMPLETED, expected["completed"]),
        (ORDER_COMPLETED_WITH_RETURN, expected["completed_with_return"]),
        (ORDER_CANCELLED, expected["cancelled"]),
    ):
        assert {code: ledger.get_order(code)["state"] for code in codes} == dict.fromkeys(codes, state)
    assert {code: ledger.get_return_order(code)["state"] for code in expected["returned"]} == dict.fromkeys(
        expected["returned"], RETURN_BOOKED
    )
    [partial] = ledger.return_orders(order_code=expected["completed_with_return"][0], kind=RETURN_PARTIAL_CANCEL)
    assert [(line["sku"], line["quantity"]) for line in partial["lines"]] == [(expected["split_with_cancel_sku"][0], 1)]
    assert len(ledger.return_orders(kind=RETURN_PARTIAL_CANCEL)) == 1

    poison_ids = {str(p["messageId"]) for p in judged_by_flows}
    rows = {r["message_id"]: r for r in ledger.postings()}
    assert {rows[i]["state"] for i in poison_ids} == {DEAD}
    reasons = {d["message_id"]: d["reason"] for d in ledger.dead_letters() if d["message_id"] in poison_ids}
    assert set(reasons) == poison_ids and all(reasons.values())
    assert {r["state"] for i, r in rows.items() if i not in poison_ids} <= {"done", "ignored"}
