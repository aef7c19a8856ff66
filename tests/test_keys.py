"""Idempotency keys fit any HTTP header, whatever the business value, and never change for a value."""

from __future__ import annotations

import string
from decimal import Decimal

import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from omni_erp import keys
from omni_erp.hooks.base import is_header_safe
from omni_erp.hooks.erp import ErpHook
from omni_erp.ledger import Ledger
from omni_erp.models.erp import DocumentLine, SalesOrderRequest
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.states import ORDER_BOOKED
from tests.flows import CREATE, create_posting, store

KEY_FUNCTIONS = [
    keys.create_sales_order,
    keys.cancel_sales_order,
    keys.cancel_irn,
    keys.credit_note_for_invoice,
    keys.return_order,
    keys.omni_invoice,
    keys.omni_credit_note,
    keys.pdf,
]
# Any code point, lone surrogates included (JSON's "\ud800" escape gives one), long enough to need the hashed form.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)
RTL_OVERRIDE_CODE = "FN\u202e6018822001"  # the real incident: U+202E in an orderCode


def _fits_a_header(key: str) -> bool:
    try:
        requests.utils.check_header_validity(("Idempotency-Key", key))
    except requests.exceptions.InvalidHeader:
        return False
    key.encode("latin-1")
    return is_header_safe(key)


@settings(max_examples=400, deadline=None)
@given(value=ANY_TEXT, make_key=st.sampled_from(KEY_FUNCTIONS))
@example(value=RTL_OVERRIDE_CODE, make_key=keys.create_sales_order)
@example(value="FN1\r\nX-Injected: 1", make_key=keys.create_sales_order)
@example(value=" FN1 ", make_key=keys.create_sales_order)
@example(value="€" * 255, make_key=keys.create_sales_order)
def test_any_value_gives_a_header_safe_deterministic_key_within_the_contract_length(value, make_key):
    key = make_key(value)
    assert _fits_a_header(key)
    assert all(33 <= ord(c) <= 126 for c in key)  # visible ASCII only: no space, CR, LF or control characters
    assert len(key) <= keys.MAX_KEY_LENGTH
    assert make_key(value) == key  # a retry repeats the key exactly
    assert key.startswith(make_key("").rstrip(":") + ":")


@settings(max_examples=400, deadline=None)
@given(first=ANY_TEXT, second=ANY_TEXT)
@example(first="%41", second="A")
@example(first="a b", second="a%20b")
@example(first="x" * 300, second="x" * 301)
def test_different_values_never_share_a_key(first, second):
    if first != second:
        assert keys.create_sales_order(first) != keys.create_sales_order(second)


@settings(max_examples=200, deadline=None)
@given(code=st.text(st.sampled_from(sorted(set(string.printable[:94]) - {"%"})), min_size=1, max_size=200))
@example(code="FN1234567890")
def test_visible_ascii_codes_keep_the_keys_earlier_versions_sent(code):
    # Orders booked before the encoding existed must be found again by their key.
    assert keys.create_sales_order(code) == f"create:{code}"
    assert keys.return_order(code) == f"return:{code}"


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("FN1234567890", "create:FN1234567890"),
        (RTL_OVERRIDE_CODE, "create:FN%E2%80%AE6018822001"),
        ("50%", "create:50%25"),
        ("FN 1", "create:FN%201"),
        ("खरीद", "create:%E0%A4%96%E0%A4%B0%E0%A5%80%E0%A4%A6"),
    ],
    ids=["plain", "rtl-override", "percent", "space", "devanagari"],
)
def test_encoding_examples_from_the_contract(value, key):
    assert keys.create_sales_order(value) == key


def test_a_long_value_keeps_a_readable_head_and_ends_in_its_digest():
    key = keys.create_sales_order("€" * 100)
    assert len(key) <= keys.MAX_KEY_LENGTH
    head, _, digest = key.partition("%~")
    assert head.startswith("create:%E2%82%AC") and head.endswith("%AC")  # never an escape cut in half
    assert len(digest) == 64


def test_order_codes_outside_latin_1_are_booked_and_the_incidents_posting_no_longer_blocks(erp, ledger_path):
    """The incident: a posting whose orderCode held U+202E made every run fail before any ERP call. Now
    non-Latin-1 codes are booked like any other, and the bidi override itself is dead-lettered with its reason."""
    ledger = Ledger.sqlite(ledger_path)
    codes = ["FN0000000001", "FN-खरीद-🙂-002", "注文-0003", "FN0000000004"]
    store(ledger, create_posting(1, RTL_OVERRIDE_CODE), *[create_posting(n, code) for n, code in enumerate(codes, start=2)])
    OmniInboxClaimOperator(task_id="c", batch_id="run-1", event_types=[CREATE]).execute(context={})
    with pytest.raises(AirflowFailException, match=r"1 item\(s\) dead-lettered"):
        ErpSalesOrderMapOperator(task_id="m", batch_id="run-1").execute(context={})
    assert ErpSalesOrderCreateOperator(task_id="b", batch_id="run-1").execute(context={}) == {"batch_id": "run-1", "booked": 4}

    booked = {o["orderCode"]: o["salesOrderId"] for o in erp.state()["sales_orders"]}
    assert set(booked) == set(codes)  # the ERP holds the real codes; only the header is encoded
    for code in codes:
        order = ledger.get_order(code)
        assert (order["state"], order["erp_sales_order_id"]) == (ORDER_BOOKED, booked[code])
        [call] = [c for c in ledger.calls() if c["idempotency_key"] == keys.create_sales_order(code)]
        assert (call["operation"], call["status_code"]) == ("create_sales_order", 201)
    [dead] = ledger.dead_letters("order_posting")
    assert dead["message_id"] == "1" and dead["reason"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=40).filter(str.strip))
@example(code=RTL_OVERRIDE_CODE)
def test_any_order_code_is_booked_by_the_erp_and_a_replay_returns_the_same_order(erp, code):
    hook = ErpHook()
    request = SalesOrderRequest(
        orderCode=code,
        poNumber="4042640641",
        buyerCode="AJIO-RRL",
        lines=[DocumentLine(lineCode="1", sku="460491724004", quantity=1, unitPrice=Decimal("1120.00"))],
        totalAmount=Decimal("1120.00"),
    )
    key = keys.create_sales_order(code)
    first = hook.create_sales_order(request, idempotency_key=key)
    replay = hook.create_sales_order(request, idempotency_key=keys.create_sales_order(code))
    assert replay.replayed and replay.document.sales_order_id == first.document.sales_order_id
    assert first.document.order_code == code
