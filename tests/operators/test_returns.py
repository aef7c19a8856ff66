"""F5 operator on a real ledger and the ERP sandbox: QC split, routing, idempotency, dead letters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.exceptions import PayloadError
from omni_erp.ledger import Ledger
from omni_erp.models.omni import ReturnOrderPosting
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.operators.returns import ErpSalesReturnOperator
from omni_erp.rules.returns import plan_return
from omni_erp.sandbox.lifecycle import return_posting
from omni_erp.states import DEAD, DONE, ORDER_INVOICED, PENDING, RETURN_BOOKED
from tests.flows import crash_first_finish

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RETURN = "RETURN_ORDER_COMPLETE"
BATCH = "omni_return_credit_note/manual__test"
SKU_A, SKU_B = "460491724004", "460491724011"  # 1120.00 and 3299.00 in the CREATE fixture
ZERO = {
    "booked": 0, "already_booked": 0, "manual_settlement_only": 0, "manual_units": 0, "dead_letter": 0, "deferred": 0,
    "waiting_for_invoice": 0,
}


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


@pytest.fixture()
def any_ledger(ledger_url, monkeypatch) -> Ledger:
    """This test's ledger on SQLite and on PostgreSQL; every operator of the test uses it."""
    ledger = Ledger(ledger_url)
    monkeypatch.setattr(Ledger, "from_conn_id", classmethod(lambda cls, conn_id=None: ledger))
    return ledger


def _create(message_id: int, order_code: str, quantity_a: int = 3) -> dict:
    raw = json.loads((FIXTURES / "outward_order_create.json").read_text())
    raw.update(messageId=message_id, orderCode=order_code, parentOrderCode=order_code)
    raw["orderItems"][0]["orderedQuantity"] = quantity_a
    return raw


def _store(ledger: Ledger, posting: dict) -> None:
    key = posting.get("returnOrderCode") or posting["orderCode"]
    order_code = posting.get("forwardOrderCode") or posting["orderCode"]
    assert ledger.record_posting(
        message_id=str(posting["messageId"]), event_type=posting["eventType"], business_key=key,
        order_code=order_code, payload=posting,
    ) == "stored"


def _book(ledger: Ledger, *creates: dict, invoice: bool = True) -> None:
    """Book orders through the real F1 operators, then record their e-invoices as F2 would."""
    for create in creates:
        _store(ledger, create)
    setup = f"setup/{creates[0]['orderCode']}"
    for op in (OmniInboxClaimOperator(task_id="c", batch_id=setup, event_types=["OUTWARD_ORDER_CREATE"]),
               ErpSalesOrderMapOperator(task_id="m", batch_id=setup),
               ErpSalesOrderCreateOperator(task_id="b", batch_id=setup)):
        op.execute(context={})
    if invoice:
        _record_invoices(ledger, [c["orderCode"] for c in creates])


def _record_invoices(ledger: Ledger, order_codes: list[str]) -> None:
    """Record the orders' e-invoices with the F2 fetch operator (the ERP publishes them a moment after booking)."""
    deadline = time.monotonic() + 10
    while any(ledger.get_order(code)["state"] != ORDER_INVOICED for code in order_codes):
        assert time.monotonic() < deadline, "the ERP sandbox did not e-invoice in time"
        ErpEInvoiceFetchOperator(task_id="f", batch_id="setup/invoices").execute(context={})
        time.sleep(0.05)


def _returns(ledger: Ledger, batch: str = BATCH, **kwargs) -> dict:
    OmniInboxClaimOperator(task_id="claim", batch_id=batch, event_types=[RETURN]).execute(context={})
    return ErpSalesReturnOperator(task_id="t", batch_id=batch, **kwargs).execute(context={})


def _returns_failing(ledger: Ledger, batch: str = BATCH, **kwargs) -> str:
    """Run F5 on a batch that must end failed; returns the task's failure message (it holds the summary)."""
    with pytest.raises(AirflowFailException) as failure:
        _returns(ledger, batch, **kwargs)
    return str(failure.value)


def _return_posts(erp) -> int:
    return sum(n for endpoint, n in erp.state()["request_counts"].items() if "return-orders" in endpoint and "POST" in endpoint)


def test_mixed_qc_credits_pass_units_only_and_lists_the_rest_for_manual_settlement(erp, ledger, capsys):
    _book(ledger, _create(1, "FN0000000001"))
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1",
                                  units=[(SKU_A, "PASS"), (SKU_A, "PASS"), (SKU_A, "FAIL"), (SKU_B, None)]))
    summary = _returns(ledger)
    task_log = capsys.readouterr().out

    assert summary == {"batch_id": BATCH, **ZERO, "booked": 1, "manual_units": 2}
    [erp_return] = erp.state()["return_orders"]
    order = ledger.get_order("FN0000000001")
    assert erp_return["returnOrderCode"] == "RTN-1"
    assert erp_return["request"] == {
        "returnOrderCode": "RTN-1", "orderCode": "FN0000000001", "invoiceNumber": order["erp_invoice_number"],
        "reason": "CUSTOMER_RETURN", "lines": [{"lineCode": "FN6018822001-1", "sku": SKU_A, "quantity": 2, "unitPrice": "1120.0"}],
    }
    stored = ledger.get_return_order("RTN-1")
    assert stored["state"] == "booked" and stored["kind"] == "CUSTOMER_RETURN"
    assert stored["erp_return_order_id"] == erp_return["returnOrderId"]
    assert stored["erp_request"] == erp_return["request"]
    assert {c["idempotency_key"] for c in ledger.calls() if c["operation"] == "create_return_order"} == {"return:RTN-1"}
    manual = {(m["item_code"], m["sku"], m["qc_status"], m["reason"]) for m in ledger.manual_settlements("RTN-1")}
    assert manual == {
        ("RTN-1-3", SKU_A, "FAIL", "QC FAIL: STAIN_DAMAGE - settle offline with Ajio"),
        ("RTN-1-4", SKU_B, None, "QC status missing - settle offline with Ajio"),
    }
    assert [p["state"] for p in ledger.postings(RETURN)] == [DONE]
    report = task_log[task_log.index("Manual settlement with Ajio - 2 unit(s)") :]
    assert "RTN-1-3" in report and "STAIN_DAMAGE" in report and "RTN-1-4" in report and "QC status missing" in report


def test_rto_and_self_ship_are_booked_with_their_return_type(erp, ledger):
    _book(ledger, _create(1, "FN0000000001"), _create(2, "FN0000000002"))
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTO-1",
                                  units=[(SKU_A, "PASS")] * 3 + [(SKU_B, "PASS")], return_type="RETURN_TO_ORIGIN"))
    _store(ledger, return_posting(_create(2, "FN0000000002"), 102, return_order_code="RTN-2",
                                  units=[(SKU_B, "PASS")], return_type="SELF_SHIP"))
    assert _returns(ledger) == {"batch_id": BATCH, **ZERO, "booked": 2}
    by_code = {r["returnOrderCode"]: r["request"] for r in erp.state()["return_orders"]}
    assert by_code["RTO-1"]["reason"] == "RETURN_TO_ORIGIN"
    assert [(line["sku"], line["quantity"]) for line in by_code["RTO-1"]["lines"]] == [(SKU_A, 3), (SKU_B, 1)]
    assert by_code["RTN-2"]["reason"] == "CUSTOMER_RETURN"
    assert ledger.get_return_order("RTO-1")["kind"] == "RETURN_TO_ORIGIN"
    assert ledger.get_return_order("RTN-2")["kind"] == "CUSTOMER_RETURN"
    assert ledger.manual_settlements() == []


def test_no_unit_passed_qc_means_no_erp_call(erp, ledger):
    _book(ledger, _create(1, "FN0000000001"))
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1",
                                  units=[(SKU_A, "FAIL"), (SKU_B, None)]))
    assert _returns(ledger) == {"batch_id": BATCH, **ZERO, "manual_settlement_only": 1, "manual_units": 2}
    assert _return_posts(erp) == 0 and erp.state()["return_orders"] == []
    stored = ledger.get_return_order("RTN-1")
    assert stored["state"] == "manual_settlement_only" and stored["erp_request"] is None
    assert len(ledger.manual_settlements("RTN-1")) == 2
    assert ledger.postings(RETURN)[0]["outcome"] == "manual_settlement_only"


def test_unknown_order_is_dead_lettered(erp, ledger):
    _store(ledger, return_posting(_create(1, "FN0000000009"), 101, return_order_code="RTN-9", units=[(SKU_A, "PASS")]))
    assert "1 item(s) dead-lettered" in _returns_failing(ledger)
    [dead] = ledger.dead_letters("return_posting")
    assert dead["message_id"] == "101" and dead["business_key"] == "RTN-9"
    assert "forward order FN0000000009 is not in the ledger" in dead["reason"]
    assert ledger.postings(RETURN)[0]["state"] == DEAD
    assert _return_posts(erp) == 0


def test_order_not_yet_invoiced_is_deferred_until_its_invoice_is_recorded(erp, ledger):
    _book(ledger, _create(1, "FN0000000001"), invoice=False)
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1", units=[(SKU_A, "PASS")]))
    # No task failure (nothing is wrong with the ERP); the pending posting turns the run report red.
    assert _returns(ledger) == {"batch_id": BATCH, **ZERO, "waiting_for_invoice": 1}
    [row] = ledger.postings(RETURN)
    assert row["state"] == PENDING and "not e-invoiced yet" in row["last_error"]
    assert ledger.get_return_order("RTN-1") is None and _return_posts(erp) == 0

    _record_invoices(ledger, ["FN0000000001"])
    assert _returns(ledger, batch=f"{BATCH}-2") == {"batch_id": f"{BATCH}-2", **ZERO, "booked": 1}
    assert len(erp.state()["return_orders"]) == 1


def test_redelivered_posting_and_rerun_task_book_one_return_order(erp, ledger):
    create = _create(1, "FN0000000001")
    _book(ledger, create)
    units = [(SKU_A, "PASS"), (SKU_B, "FAIL")]
    _store(ledger, return_posting(create, 101, return_order_code="RTN-1", units=units))
    assert _returns(ledger)["booked"] == 1
    # Airflow retrying the task after it finished: the batch holds nothing any more.
    assert ErpSalesReturnOperator(task_id="t", batch_id=BATCH).execute(context={}) == {"batch_id": BATCH, **ZERO}
    # Omni re-delivers the same return under a new messageId.
    _store(ledger, return_posting(create, 102, return_order_code="RTN-1", units=units))
    assert _returns(ledger, batch=f"{BATCH}-2") == {"batch_id": f"{BATCH}-2", **ZERO, "already_booked": 1}
    assert len(erp.state()["return_orders"]) == 1 and _return_posts(erp) == 1
    assert len(ledger.manual_settlements()) == 1
    assert {p["state"] for p in ledger.postings(RETURN)} == {DONE}


def test_return_booked_before_a_crash_is_recorded_not_booked_again(erp, ledger, monkeypatch):
    """The ERP books the return but every answer comes too late: the run fails, the next one records the replay."""
    _book(ledger, _create(1, "FN0000000001"))
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1", units=[(SKU_A, "PASS")]))
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "0.3")
    erp.configure(fail_next=["timeout"] * 4, timeout_s=0.6)
    with pytest.raises(AirflowFailException, match="1 item\\(s\\) deferred"):
        _returns(ledger)
    assert len(erp.state()["return_orders"]) == 1  # booked in the ERP ...
    assert ledger.get_return_order("RTN-1")["state"] == "ready_to_book"  # ... but the ledger never heard
    assert ledger.postings(RETURN)[0]["state"] == PENDING

    assert _returns(ledger, batch=f"{BATCH}-2") == {"batch_id": f"{BATCH}-2", **ZERO, "already_booked": 1}
    [erp_return] = erp.state()["return_orders"]
    stored = ledger.get_return_order("RTN-1")
    assert stored["state"] == "booked" and stored["erp_return_order_id"] == erp_return["returnOrderId"]


def test_erp_rejection_is_dead_lettered_with_the_erps_message(erp, ledger):
    _book(ledger, _create(1, "FN0000000001"))
    # Two units of a SKU that was invoiced once.
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1",
                                  units=[(SKU_B, "PASS"), (SKU_B, "PASS")]))
    assert "1 item(s) dead-lettered, rejected or failed" in _returns_failing(ledger)
    [dead] = ledger.dead_letters("return_posting")
    assert dead["reason"].startswith("ERP rejected the return order: VALIDATION_FAILED: return lines exceed the invoiced quantity")
    assert f"{SKU_B}: 2 asked, 1 open" in dead["reason"]
    assert ledger.get_return_order("RTN-1")["state"] == "rejected_by_erp"
    [row] = ledger.postings(RETURN)
    assert row["state"] == DEAD and row["outcome"] == "rejected_by_erp"


def test_return_code_reused_for_another_order_is_dead_lettered(erp, ledger):
    _book(ledger, _create(1, "FN0000000001"), _create(2, "FN0000000002"))
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1", units=[(SKU_A, "PASS")]))
    _store(ledger, return_posting(_create(2, "FN0000000002"), 102, return_order_code="RTN-1", units=[(SKU_A, "PASS")]))
    failure = _returns_failing(ledger)
    assert "'booked': 1" in failure and "'dead_letter': 1" in failure
    [dead] = ledger.dead_letters("return_posting")
    assert dead["message_id"] == "102"
    assert "RTN-1 is already registered for order FN0000000001, not FN0000000002" in dead["reason"]
    assert len(erp.state()["return_orders"]) == 1


def test_erp_outage_defers_returns_and_fails_the_task(erp, ledger):
    _book(ledger, _create(1, "FN0000000001"))
    for n in range(3):
        _store(ledger, return_posting(_create(1, "FN0000000001"), 101 + n, return_order_code=f"RTN-{n}", units=[(SKU_A, "PASS")]))
    erp.configure(error_rate=1.0)
    with pytest.raises(AirflowFailException, match="3 item\\(s\\) deferred"):
        _returns(ledger, max_consecutive_unavailable=2)
    tried = {c["idempotency_key"] for c in ledger.calls() if c["operation"] == "create_return_order"}
    assert tried == {"return:RTN-0", "return:RTN-1"}  # the third was not attempted
    assert {p["state"] for p in ledger.postings(RETURN)} == {PENDING}

    erp.configure(error_rate=0.0)
    assert _returns(ledger, batch=f"{BATCH}-2")["booked"] == 3
    assert sorted(r["returnOrderCode"] for r in erp.state()["return_orders"]) == ["RTN-0", "RTN-1", "RTN-2"]


# --- the planning rules, without I/O ----------------------------------------------------------


def _posting(units: list[tuple[str, str | None]], return_type: str | None = "CUSTOMER_RETURN", **item_changes) -> ReturnOrderPosting:
    raw = return_posting(_create(1, "FN1"), 1, return_order_code="R", units=units, return_type=return_type or "X")
    raw["returnOrderType"] = return_type
    for item in raw["items"]:
        item.update(item_changes)
    return ReturnOrderPosting.model_validate(raw)


ORDER_LINES = [
    {"lineCode": "L1", "sku": "S", "quantity": 1, "unitPrice": "100"},
    {"lineCode": "L2", "sku": "S", "quantity": 2, "unitPrice": "90"},
    {"lineCode": "L3", "sku": "T", "quantity": 0, "unitPrice": "50"},
]


def test_pass_units_are_spread_over_the_invoiced_lines_of_their_sku():
    create = _create(1, "FN1")
    create["orderItems"][0]["channelSkuCode"] = "S"
    raw = return_posting(create, 1, return_order_code="R", units=[("S", "PASS")] * 4 + [("S", "pass")])
    plan = plan_return(ReturnOrderPosting.model_validate(raw), ORDER_LINES)
    # 5 units: 1 on L1, the rest on L2 (beyond its 2 units: the ERP, which knows earlier returns, decides).
    assert [(line["lineCode"], line["quantity"], line["unitPrice"]) for line in plan.credit_lines] == [("L1", 1, "100"), ("L2", 4, "90")]
    assert plan.manual == []


def test_units_that_cannot_be_credited_automatically_go_to_manual_settlement():
    create = _create(1, "FN1")
    create["orderItems"][0]["channelSkuCode"] = "S"
    create["orderItems"][1]["channelSkuCode"] = "T"
    raw = return_posting(create, 1, return_order_code="R", units=[("S", "HOLD"), ("T", "PASS"), ("S", "PASS")])
    raw["items"][2]["isExcess"] = True
    plan = plan_return(ReturnOrderPosting.model_validate(raw), ORDER_LINES)
    assert plan.credit_lines == []
    assert [unit.reason for unit in plan.manual] == [
        "QC status HOLD is not PASS - settle offline with Ajio",
        "QC PASS but the SKU is not on the order's invoice - settle offline with Ajio",
        "QC PASS but an excess unit (not in the return expectation) - settle offline with Ajio",
    ]


@pytest.mark.parametrize("return_type", [None, "EXCHANGE"])
def test_unknown_return_type_is_not_guessed(return_type):
    with pytest.raises(PayloadError, match="returnOrderType"):
        plan_return(_posting([(SKU_A, "PASS")], return_type=return_type), ORDER_LINES)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["S", "T", "U"]), st.integers(0, 3), st.decimals(0, 5000, places=2)), min_size=1, max_size=4
    ),
    items=st.lists(
        st.tuples(
            st.sampled_from(["S", "T", "U", "V"]),
            st.one_of(st.none(), st.sampled_from(["PASS", " pass", "FAIL", "HOLD", ""]), st.text(st.characters(categories=["L", "N"]), max_size=8)),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_property_every_returned_unit_is_either_credited_once_or_listed_for_manual_settlement(lines, items):
    order_lines = [{"lineCode": f"L{n}", "sku": sku, "quantity": q, "unitPrice": str(price)} for n, (sku, q, price) in enumerate(lines)]
    raw = return_posting(_create(1, "FN1"), 1, return_order_code="R", units=[(SKU_A, "PASS")] * len(items))
    for item, (sku, qc, excess) in zip(raw["items"], items, strict=True):
        item.update(channelSkuCode=sku, qcStatus=qc, isExcess=excess)
    posting = ReturnOrderPosting.model_validate(raw)
    plan = plan_return(posting, order_lines)

    invoiced_skus = {sku for sku, q, _ in lines if q > 0}
    creditable = [i for i in posting.items if (i.qc_status or "").strip().upper() == "PASS" and not i.is_excess and i.channel_sku_code in invoiced_skus]
    credited = {}
    for line in plan.credit_lines:
        credited[line["sku"]] = credited.get(line["sku"], 0) + line["quantity"]
        assert line["quantity"] > 0 and line["lineCode"] in {ol["lineCode"] for ol in order_lines if ol["sku"] == line["sku"]}
    assert credited == {sku: sum(1 for i in creditable if i.channel_sku_code == sku) for sku in {i.channel_sku_code for i in creditable}}
    assert sorted(u.item_code for u in plan.manual) == sorted(i.item_code for i in posting.items if i not in creditable)
    assert all(u.reason.endswith("settle offline with Ajio") for u in plan.manual)


# --- one bad posting never stops the batch; each state change is one transaction --------------------


def test_poison_returns_among_good_ones_are_isolated_and_the_task_fails(erp, ledger, monkeypatch):
    """A return the rule refuses is dead-lettered at once; one whose handling raises is deferred, then dead-lettered."""
    monkeypatch.setenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", "3")
    creates = [_create(n, f"FN000000000{n}") for n in (1, 2, 3)]
    _book(ledger, *creates)
    # Order 3's ledger lines were written by hand with a price the rule cannot read.
    lines = ledger.get_order("FN0000000003")["lines"]
    ledger.update_order("FN0000000003", lines=json.dumps([{**line, "unitPrice": "1,120.00"} for line in lines]))
    exchange = return_posting(creates[1], 102, return_order_code="RTN-2", units=[(SKU_A, "PASS")])
    exchange["returnOrderType"] = "EXCHANGE"
    for posting in (
        return_posting(creates[0], 101, return_order_code="RTN-1", units=[(SKU_A, "PASS"), (SKU_B, "FAIL")]),
        exchange,
        return_posting(creates[2], 103, return_order_code="RTN-3", units=[(SKU_A, "PASS")]),
        return_posting(creates[1], 104, return_order_code="RTN-4", units=[(SKU_B, "PASS")]),
    ):
        _store(ledger, posting)

    failure = _returns_failing(ledger, f"{BATCH}-1")
    assert "1 item(s) deferred" in failure and "1 item(s) dead-lettered" in failure and "InvalidOperation" in failure
    assert {r["returnOrderCode"] for r in erp.state()["return_orders"]} == {"RTN-1", "RTN-4"}  # the good ones, in the same run
    assert ledger.get_return_order("RTN-1")["state"] == ledger.get_return_order("RTN-4")["state"] == RETURN_BOOKED
    assert [m["item_code"] for m in ledger.manual_settlements()] == ["RTN-1-2"]
    by_id = {p["message_id"]: p for p in ledger.postings(RETURN)}
    assert by_id["102"]["state"] == DEAD and "returnOrderType 'EXCHANGE'" in by_id["102"]["last_error"]
    assert by_id["103"]["state"] == PENDING and by_id["103"]["attempts"] == 1

    for run in (2, 3):
        failure = _returns_failing(ledger, f"{BATCH}-{run}")
    assert "1 item(s) dead-lettered" in failure
    [dead] = [d for d in ledger.dead_letters("return_posting") if d["message_id"] == "103"]
    assert dead["business_key"] == "RTN-3" and dead["reason"].startswith("gave up after 3 attempts: unexpected error: InvalidOperation")
    assert ledger.get_return_order("RTN-3") is None and len(erp.state()["return_orders"]) == 2


def test_a_crash_while_recording_a_manual_only_return_leaves_nothing_half_recorded(erp, any_ledger, monkeypatch):
    ledger = any_ledger
    """Return order, manual-settlement units and the finished posting are one transaction."""
    _book(ledger, _create(1, "FN0000000001"))
    _store(ledger, return_posting(_create(1, "FN0000000001"), 101, return_order_code="RTN-1", units=[(SKU_A, "FAIL"), (SKU_B, None)]))
    crash_first_finish(monkeypatch)
    assert "1 item(s) deferred" in _returns_failing(ledger)
    assert ledger.get_return_order("RTN-1") is None and ledger.manual_settlements() == []
    assert ledger.postings(RETURN)[0]["state"] == PENDING

    assert _returns(ledger, batch=f"{BATCH}-2") == {"batch_id": f"{BATCH}-2", **ZERO, "manual_settlement_only": 1, "manual_units": 2}
    assert ledger.get_return_order("RTN-1")["state"] == "manual_settlement_only" and len(ledger.manual_settlements("RTN-1")) == 2
