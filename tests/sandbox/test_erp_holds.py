"""The ERP sandbox's hold knobs: orders booked but not yet invoiced, and documents published out of ``seq`` order."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.sandbox.erp import ErpSandboxConfig, ErpState
from tests.sandbox.test_erp_sandbox import CREDIT_NOTES, INVOICES, book, return_body


def _numbers_by_order(items: list[dict[str, Any]]) -> dict[str, int]:
    return {item["orderCode"]: item["seq"] for item in items}


def _status(erp: Any, sales_order_id: str) -> str:
    return erp.get(f"/api/v1/sales-orders/{sales_order_id}").json()["status"]


def test_invoice_hold_keeps_the_order_booked_until_released_then_invoices_after_the_delay(erp: Any) -> None:
    erp.configure(invoice_hold=["FN0000000001"])
    held_id = book(erp, "FN0000000001").json()["salesOrderId"]
    book(erp, "FN0000000002")
    erp.feed(INVOICES, at_least=1)
    time.sleep(0.3)  # three times the invoice delay: the held order would have been invoiced by now

    assert [i["orderCode"] for i in erp.get(INVOICES).json()["items"]] == ["FN0000000002"]
    assert _status(erp, held_id) == "BOOKED"
    assert erp.state()["held_invoices"] == ["FN0000000001"]

    erp.configure(invoice_delay_s=0.5, invoice_hold=[])
    released_at = time.monotonic()
    assert [i["orderCode"] for i in erp.get(INVOICES).json()["items"]] == ["FN0000000002"]
    items = erp.feed(INVOICES, at_least=2)

    assert time.monotonic() - released_at >= 0.4  # not before invoice_delay_s after the release
    assert _numbers_by_order(items) == {"FN0000000002": 1, "FN0000000001": 2}
    assert _status(erp, held_id) == "INVOICED"
    assert erp.state()["held_invoices"] == []


def test_order_cancelled_while_its_invoice_is_held_is_never_invoiced(erp: Any) -> None:
    erp.configure(invoice_hold=["FN0000000001"])
    sales_order_id = book(erp, "FN0000000001").json()["salesOrderId"]
    time.sleep(0.2)

    cancelled = erp.post(f"/api/v1/sales-orders/{sales_order_id}/cancel", key="cancel:FN0000000001")
    erp.configure(invoice_hold=[])

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert erp.feed(INVOICES, at_least=1, timeout_s=0.5) == []
    assert erp.state()["pending_documents"] == 0


def test_feed_hold_publishes_a_document_after_higher_sequence_numbers(erp: Any) -> None:
    erp.configure(feed_hold=["FN0000000001"])
    book(erp, "FN0000000001")
    assert erp.feed(INVOICES, at_least=1, timeout_s=0.3) == []  # generated meanwhile, but invisible
    book(erp, "FN0000000002")
    [visible] = erp.feed(INVOICES, at_least=1)

    generated = _numbers_by_order(erp.state()["invoices"])
    assert generated == {"FN0000000001": 1, "FN0000000002": 2}
    assert visible["orderCode"] == "FN0000000002"
    assert erp.get(INVOICES).json()["nextCursor"] == 2

    erp.configure(feed_hold=[])

    # A client that only reads after its cursor never sees the late document; a re-read of older numbers does.
    assert erp.get(INVOICES, params={"since": 2}).json() == {"items": [], "nextCursor": 2}
    assert _numbers_by_order(erp.get(INVOICES, params={"since": 0}).json()["items"]) == generated


def test_feed_hold_applies_to_credit_notes_too(erp: Any) -> None:
    book(erp, "FN0000000001")
    [invoice] = erp.feed(INVOICES, at_least=1)
    erp.configure(feed_hold=["FN0000000001"])

    assert erp.get(INVOICES).json()["items"] == []
    assert erp.post("/api/v1/return-orders", return_body(invoice, 1), key="return:RTN-1").status_code == 201
    time.sleep(0.3)
    assert erp.get(CREDIT_NOTES).json()["items"] == []
    assert len(erp.state()["credit_notes"]) == 1

    erp.configure(feed_hold=[])
    [note] = erp.get(CREDIT_NOTES).json()["items"]
    assert (note["returnOrderCode"], note["seq"]) == ("RTN-1", 2)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("invoice_hold", "FN0000000001"),
        ("invoice_hold", [""]),
        ("feed_hold", ["FN 1"]),
        ("feed_hold", [1]),
        ("feed_hold", None),
    ],
    ids=["not-a-list", "empty-code", "code-with-space", "not-a-string", "null"],
)
def test_invalid_holds_are_refused_and_the_config_is_unchanged(erp: Any, knob: str, value: Any) -> None:
    erp.configure(**{knob: ["FN0000000009"]})

    response = requests.post(erp.url + "/_sandbox/config", json={knob: value}, timeout=5)

    assert response.status_code == 422
    assert knob in response.json()["error"]["message"]
    assert erp.state()["config"][knob] == ["FN0000000009"]


def test_reset_with_config_releases_every_hold(erp: Any) -> None:
    erp.configure(invoice_hold=["FN0000000001"], feed_hold=["FN0000000002"])
    book(erp, "FN0000000001")

    requests.post(erp.url + "/_sandbox/reset", json={"reset_config": True}, timeout=5).raise_for_status()

    state = erp.state()
    assert (state["config"]["invoice_hold"], state["config"]["feed_hold"]) == ([], [])
    assert (state["held_invoices"], state["pending_documents"], state["sales_orders"]) == ([], 0, [])


# --- the hold rules on ErpState itself, against a model of what they promise ------------------------------

HOLD_CODES = [f"FN00000001{n:02d}" for n in range(6)]
Step = tuple[str, Any]


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(
    st.one_of(
        st.tuples(st.just("book"), st.sampled_from(HOLD_CODES)),
        st.tuples(st.just("hold"), st.sets(st.sampled_from(HOLD_CODES))),
        st.tuples(st.just("tick"), st.none()),
    ),
    max_size=30,
))
def test_held_invoices_wait_and_the_others_are_invoiced_in_due_order(steps: list[Step]) -> None:
    """With no delay, a tick invoices every waiting order not on the hold list, ordered by when it became due:
    its booking, or for an order held at an earlier tick, the tick that found it released."""
    config = [ErpSandboxConfig(invoice_delay_s=0)]
    state = ErpState(lambda: config[0], supplier_gstin="29ABCDE1234F1Z5", buyer_gstin="27AABCR1718E1ZY", seed=0)
    due: dict[str, int] = {}  # the model: order code -> step at which its invoice fell due
    held: set[str] = set()
    invoiced: list[str] = []
    hold: set[str] = set()
    for step, (action, arg) in enumerate(steps):
        if action == "book" and arg not in due:
            state.book_sales_order(f"create:{arg}", _order(arg), "http://erp.test")
            due[arg] = step
        elif action == "hold":
            hold = set(arg)
            config[0] = config[0].model_copy(update={"invoice_hold": sorted(hold)})
        elif action == "tick":
            time.sleep(0.001)  # due times come from the monotonic clock: keep the steps apart
            state.tick()
            waiting = [code for code in due if code not in invoiced]
            due.update({code: step for code in held - hold})
            held = {code for code in waiting if code in hold}
            invoiced += sorted((code for code in waiting if code not in held), key=lambda code: due[code])
            assert [i["orderCode"] for i in state.invoices.values()] == invoiced
            assert state.documents()["held_invoices"] == sorted(held)
            assert state.documents()["pending_documents"] == len(held)


def _order(code: str) -> dict[str, Any]:
    return {
        "orderCode": code, "poNumber": "4042640641", "buyerCode": "AJIO-RRL",
        "lines": [{"sku": "460491724004", "quantity": 1, "unitPrice": 1120}], "totalAmount": 1120,
    }
