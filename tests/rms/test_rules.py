"""The RMS report rules (issue 12): rows per returned SKU, untraceable lines left out, CSV text, file names,
RMS credit-note imports."""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.rules import rms

SKUS = ("SKU-A", "SKU-B", "SKU-C")
ORDER = {
    "order_code": "FN1", "po_number": "PO-1", "erp_invoice_number": "INV/1", "irn": "a" * 64,
    "lines": [{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-A", "quantity": 1}, {"sku": "SKU-B", "quantity": 1},
              {"sku": "SKU-C", "quantity": 0}],  # SKU-C was cancelled before invoicing: not on the invoice
}
RETURN = {"channelName": "AJIO", "returnCreationTime": "2026-11-24T10:00:00.000+05:30", "eventTime": "2026-11-24T11:00:00Z"}
CREATE = {"channelName": "AJIO-B2B", "orderItems": [{"channelSkuCode": "SKU-A", "hsnCode": "6109", "mrp": 999, "size": "M"}]}


def facts(lines, *, order=ORDER, create=CREATE, invoice=None) -> rms.ReturnFacts:
    return rms.ReturnFacts("RET-1", "FN1", lines, RETURN, order, create, invoice)


def test_one_row_per_returned_sku_with_the_forward_references():
    result = rms.return_rows(facts(
        [{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-A", "quantity": 1}, {"sku": "SKU-B", "quantity": 1}],
        invoice={"invoiceDate": "2026-11-20T09:00:00+05:30", "lines": [{"sku": "SKU-B", "hsnCode": "6203"}]},
    ))
    assert not result.excluded and result.units == 4
    by_sku = {row["clientSku"]: row for row in result.rows}
    assert set(by_sku) == {"SKU-A", "SKU-B"} and by_sku["SKU-A"]["quantity"] == "3"
    a = by_sku["SKU-A"]
    assert (a["purchaseOrderNumber"], a["returnOrderId"], a["forwardChannelOrderId"]) == ("PO-1", "RET-1", "FN1")
    assert (a["forwardInvoiceNumber"], a["forwardIrn"]) == ("INV/1", "a" * 64)
    assert a["forwardInvoiceDate"] == "2026-11-20T09:00:00.000+05:30"
    assert a["returnOrderTime"] == "2026-11-24T10:00:00.000+05:30"  # returnCreationTime, not eventTime
    assert (a["channelName"], a["timeZone"]) == ("AJIO", "Asia/Kolkata")
    # Item-master columns come from the forward posting's line or the ERP's invoice line, else stay empty.
    assert (a["hsnCode"], a["mrp"], a["size"], a["skuDesc"]) == ("6109", "999", "M", "")
    assert by_sku["SKU-B"]["hsnCode"] == "6203"
    assert list(a) == list(rms.REPORT_COLUMNS)


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (None, "forward order FN1 is not in the ledger"),
        ({**ORDER, "erp_invoice_number": None}, "forward order FN1 has no e-invoice"),
    ],
)
def test_a_return_without_a_traceable_forward_invoice_has_no_row(order, reason):
    result = rms.return_rows(facts([{"sku": "SKU-A", "quantity": 1}], order=order))
    assert result.rows == [] and [(e.sku, e.quantity, e.reason) for e in result.excluded] == [("SKU-A", 1, reason)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from((*SKUS, "SKU-X")), st.integers(1, 5)), min_size=1, max_size=8))
def test_every_credited_unit_is_reported_or_excluded_once(lines):
    credited = [{"sku": sku, "quantity": n} for sku, n in lines]
    result = rms.return_rows(facts(credited))
    wanted = Counter()
    for sku, n in lines:
        wanted[sku] += n
    reported = Counter({row["clientSku"]: int(row["quantity"]) for row in result.rows})
    excluded = Counter({line.sku: line.quantity for line in result.excluded})
    assert reported + excluded == wanted
    assert len(result.rows) == len(reported)  # one row per SKU
    assert set(reported) <= {"SKU-A", "SKU-B"}  # only SKUs on the forward invoice
    assert all("not on the forward invoice" in line.reason for line in result.excluded)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(rms.REPORT_COLUMNS), st.text(max_size=20)), max_size=5))
def test_csv_round_trips_and_never_starts_a_cell_with_a_formula(rows):
    text = rms.render_csv(rows)
    back = rms.read_report(text)
    assert len(back) == len(rows)
    for sent, got in zip(rows, back, strict=True):
        for column in rms.REPORT_COLUMNS:
            value = sent.get(column, "")
            assert got[column] == (f"'{value}" if value[:1] in "=+-@" and value else value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.dates(date(2020, 1, 1), date(2040, 1, 1)), st.integers(1, 999)), min_size=2, max_size=6))
def test_file_names_sort_by_date_then_sequence(keys):
    names = {key: rms.report_file_name(*key) for key in keys}
    assert sorted(keys) == sorted(keys, key=names.__getitem__)
    assert all(rms.is_report_file_name(name) for name in names.values())


def test_report_sequence_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        rms.report_file_name(date(2026, 12, 3), 0)


def test_settlements_from_a_csv_or_inline_pairs():
    csv_text = "\ufeffreturnOrderId,creditNoteNumber,amount\r\nRET-1,CN/1,10\r\n,,\r\nRET-2, CN/2 ,5\r\nRET-1,CN/1,10\r\n"
    assert rms.parse_settlements(csv_text) == [("RET-1", "CN/1"), ("RET-2", "CN/2")]
    assert rms.parse_settlements("RET-1=CN/1, RET-2 = CN/2;\nRET-3=CN=3") == [("RET-1", "CN/1"), ("RET-2", "CN/2"), ("RET-3", "CN=3")]
    assert rms.parse_settlements("  ") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RET-1", "is not RETURN_ORDER_ID=CREDIT_NOTE_NUMBER"),
        ("RET-1=", "is not RETURN_ORDER_ID=CREDIT_NOTE_NUMBER"),
        ("returnOrderId,creditNoteNumber\nRET-1,\n", "line 2: both returnOrderId and creditNoteNumber"),
        ("RET-1=CN/1, RET-1=CN/2", "given two credit notes"),
    ],
)
def test_bad_settlements_are_refused_naming_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        rms.parse_settlements(text)


def test_an_erp_credit_note_of_an_rms_return_is_never_uploaded():
    state, reason = rms.erp_credit_note_on_rms_path("CN/9", "RET-1")
    assert state == "mismatch" and "RET-1" in reason and "CN/9" in reason


def test_the_reconciliation_lists_returns_waiting_for_their_rms_credit_note_with_their_age():
    from datetime import UTC, datetime, timedelta

    from omni_erp.rules.reconciliation import LedgerSnapshot, reconcile

    at = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    empty = dict(
        posting_counts={}, order_counts={}, return_counts={}, documents=[], open_orders=[], open_postings=[],
        open_documents=[], open_returns=[], manual_settlements=[], dead_letters=[], omni_acknowledged={}, erp_answered={},
    )
    waiting = {"return_order_code": "RET-1", "order_code": "FN1", "state": "reported_to_rms", "reason": None,
               "registered_at": at - timedelta(hours=30), "reported_at": at - timedelta(hours=26)}
    report = reconcile(LedgerSnapshot(**empty, rms_open=[waiting]), at=at, erp=None)
    [item] = [i for i in report.open_items if i["key"] == "RET-1"]
    assert item["age_hours"] == 26.0 and item["state"] == "reported_to_rms" and "RMS credit note" in item["reason"]
    assert not [i for i in reconcile(LedgerSnapshot(**empty), at=at, erp=None).open_items if i["key"] == "RET-1"]
