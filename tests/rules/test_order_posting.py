"""F1 mapping rules: quantities, PO number, dead-letter reasons (domain.md decisions 3-4)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path

import pytest

from omni_erp.exceptions import PayloadError
from omni_erp.models.omni import OutwardOrderPosting
from omni_erp.rules.order_posting import plan_sales_order, value_at

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture()
def create_posting() -> dict:
    return json.loads((FIXTURES / "outward_order_create.json").read_text())


def _plan(raw: dict, **kwargs):
    return plan_sales_order(OutwardOrderPosting.model_validate(raw), raw, **kwargs)


def test_sample_posting_maps_to_a_sales_order(create_posting):
    plan = _plan(create_posting)
    assert plan.po_number == "4042640641"
    request = plan.request.to_json_dict()
    assert request["orderCode"] == "FN6018822001"
    assert request["poNumber"] == "4042640641"
    assert [(line["sku"], line["quantity"]) for line in request["lines"]] == [("460491724004", 2), ("460491724011", 1)]
    assert plan.total_amount == Decimal("1120.0") * 2 + Decimal("3299.0")
    assert Decimal(str(request["totalAmount"])) == plan.total_amount


def test_quantity_to_invoice_is_ordered_minus_cancelled_and_empty_lines_are_left_out(create_posting):
    raw = copy.deepcopy(create_posting)
    raw["orderItems"][0]["cancelledQuantity"] = 1
    raw["orderItems"][1]["cancelledQuantity"] = 1
    plan = _plan(raw)
    assert [(line.sku, line.quantity) for line in plan.request.lines] == [("460491724004", 1)]
    assert plan.total_amount == Decimal("1120.0")
    # The ledger keeps every line with its ordered quantity (the PO quantity, needed for partial invoices).
    assert [(line["ordered"], line["quantity"]) for line in plan.lines] == [(2, 1), (1, 0)]


def test_fully_cancelled_order_gets_no_erp_request(create_posting):
    raw = copy.deepcopy(create_posting)
    for item in raw["orderItems"]:
        item["cancelledQuantity"] = item["orderedQuantity"]
    plan = _plan(raw)
    assert plan.request is None and plan.total_amount == 0


@pytest.mark.parametrize("po", [None, "", "   "], ids=["null", "empty", "blank"])
def test_missing_po_number_is_a_clear_payload_error(create_posting, po):
    raw = copy.deepcopy(create_posting)
    raw["orderCustomAttributes"]["attribute1"] = po
    with pytest.raises(PayloadError, match=r"Ajio PO number missing: nothing at 'orderCustomAttributes.attribute1'"):
        _plan(raw)


def test_po_path_is_configurable(create_posting, monkeypatch):
    raw = copy.deepcopy(create_posting)
    raw["orderCustomAttributes"]["attribute5"] = "PO-FROM-ATTR5"
    assert _plan(raw, po_path="orderCustomAttributes.attribute5").po_number == "PO-FROM-ATTR5"
    monkeypatch.setenv("OMNI_ERP_PO_PATH", "parentOrderCode")
    assert _plan(raw).po_number == "FN6018822001"


def test_posting_without_items_is_rejected(create_posting):
    raw = {**create_posting, "orderItems": None}
    # The model refuses it first (issue 6: a CREATE needs orderItems), so the inbox answers 400 before any flow.
    with pytest.raises(ValueError, match="orderItems: at least one entry is required"):
        _plan(raw)


def test_cancelled_more_than_ordered_is_invalid(create_posting):
    raw = copy.deepcopy(create_posting)
    raw["orderItems"][0]["cancelledQuantity"] = 3
    with pytest.raises(ValueError, match="cancelledQuantity 3 exceeds orderedQuantity 2"):
        OutwardOrderPosting.model_validate(raw)


def test_value_at_reads_nested_dicts_and_lists():
    data = {"a": {"b": [{"c": 1}]}}
    assert value_at(data, "a.b.0.c") == 1
    assert value_at(data, "a.b.1.c") is None
    assert value_at(data, "a.x") is None
