"""The reconciliation's pure part (omni_erp.rules.reconciliation): comparisons, and files that keep any text intact."""

from __future__ import annotations

import csv
import html
import io
from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from omni_erp.rules.reconciliation import (
    MISMATCH,
    ErpFeeds,
    LedgerSnapshot,
    OmniState,
    csv_files,
    html_page,
    reconcile,
)

AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def _snapshot(**changes) -> LedgerSnapshot:
    base = dict(
        posting_counts={}, order_counts={}, return_counts={}, documents=[], open_orders=[], open_postings=[],
        open_documents=[], open_returns=[], manual_settlements=[], dead_letters=[], omni_acknowledged={}, erp_answered={},
    )
    return LedgerSnapshot(**{**base, **changes})


def _invoice(number: str, order: str, state: str, seq: int) -> dict:
    return {"doc_type": "invoice", "doc_number": number, "order_code": order, "related_code": None, "seq": seq, "state": state}


def test_every_disagreement_between_ledger_erp_and_omni_is_named_once():
    snapshot = _snapshot(
        documents=[
            _invoice("INV1", "FN1", "uploaded", 5),            # agrees everywhere
            _invoice("INV2", "FN2", "uploaded", 2),            # marked uploaded, Omni never answered 200, Omni lacks it
            _invoice("INV3", "FN3", "ready_to_upload", 3),     # Omni answered 200 (lost before the ledger write)
            _invoice("INV4", "FN4", "uploaded", 4),            # the ERP names another order
            _invoice("INV0", "FN0", "uploaded", 1),            # not after from_seq: not compared with the ERP
        ],
        omni_acknowledged={"invoice:INV1": 1, "invoice:INV3": 1, "invoice:INV4": 2, "invoice:INV0": 1},
    )
    erp = ErpFeeds(documents={"invoice": {"INV1": {"order_code": "FN1"}, "INV3": {"order_code": "FN3"},
                                          "INV4": {"order_code": "FN9"}, "INV5": {"order_code": "FN5"}},
                              "credit_note": {}}, from_seq=1)
    omni = OmniState(documents={"invoice": {"INV0", "INV1", "INV3", "INV4"}, "credit_note": set()})

    report = reconcile(snapshot, at=AT, erp=erp, omni=omni)

    found: dict[str, list[str]] = {}
    for d in report.differences:
        found.setdefault(d["doc_number"], []).append(d["difference"])
    assert sorted(found) == ["INV2", "INV3", "INV4", "INV5"]  # INV0 (before from_seq) and INV1 agree
    assert [t.split(" (")[0] for t in found["INV5"]] == ["in the ERP's feed, not in the ledger"]
    assert found["INV2"] == ["in the ledger, no longer in the ERP's feed", "marked uploaded, but no 200 from Omni is recorded",
                             "marked uploaded, but Omni does not hold it"]
    assert found["INV3"] == ["Omni answered 200, but the ledger says ready_to_upload",
                             "Omni holds it, but the ledger has not marked it uploaded"]
    assert found["INV4"] == ["the ERP's feed names order 'FN9', the ledger 'FN4'"]
    duplicates = {row["what"]: row for row in report.duplicates}
    [resend] = [row for what, row in duplicates.items() if "more than once" in what]
    assert (resend["flow"], resend["count"], resend["extra_calls"]) == ("F2", 1, 1)
    assert [f["check"] for f in report.figures if f["measure"].startswith("e-invoices")] == [MISMATCH, MISMATCH]


def test_without_the_erp_its_column_stays_empty_and_the_note_says_why():
    snapshot = _snapshot(documents=[_invoice("INV1", "FN1", "uploaded", 1)], omni_acknowledged={"invoice:INV1": 1})
    report = reconcile(snapshot, at=AT, erp=None, erp_problem="503")

    assert all(f["erp"] is None for f in report.figures)
    assert any("could not be read (503)" in note for note in report.notes)
    assert report.differences == []


def _as_text(value: str) -> str:
    return "'" + value if value.startswith(("=", "+", "-", "@", "\t", "\r")) else value


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80) | st.sampled_from(
    ['<script>alert("x")</script>', 'a,"b"\nc', "=HYPERLINK(\"x\")", "\u202eevil", ""]
)


@settings(max_examples=60, deadline=None)
@example(reasons=[""], codes=["\r"])  # a lone carriage return once broke a row when lines ended in \n only
@given(reasons=st.lists(texts, min_size=1, max_size=5), codes=st.lists(texts, min_size=1, max_size=5))
def test_any_text_survives_the_csv_files_whole_and_is_escaped_in_the_html(reasons, codes):
    orders = [
        {"order_code": code or "FN", "state": "ready_to_book", "created_at": AT - timedelta(hours=n), "last_error": reason}
        for n, (code, reason) in enumerate(zip(codes, reasons, strict=False))
    ]
    report = reconcile(_snapshot(open_orders=orders), at=AT, erp=None)

    rows = list(csv.DictReader(io.StringIO(csv_files(report)["open_items.csv"])))
    assert [r["key"] for r in rows] == [_as_text(i["key"]) for i in report.open_items]
    # whole, commas and line breaks too; what a spreadsheet would run as a formula is marked as text
    assert [r["reason"] for r in rows] == [_as_text(i["reason"]) for i in report.open_items]
    page = html_page(report)
    assert "<script>" not in page
    for item in report.open_items:
        assert html.escape(item["reason"]) in page


def test_credit_notes_are_reconciled_like_invoices_and_open_orders_name_the_flow_they_wait_on():
    snapshot = _snapshot(
        documents=[
            {"doc_type": "credit_note", "doc_number": "CN1", "order_code": "FN1", "seq": 1, "state": "uploaded"},
            {"doc_type": "credit_note", "doc_number": "CN2", "order_code": "FN2", "seq": 2, "state": "kept_in_erp"},
        ],
        omni_acknowledged={"credit_note:CN1": 1},
        open_orders=[
            {"order_code": "FN3", "state": "booked", "created_at": AT - timedelta(hours=2)},
            {"order_code": "FN4", "state": "invoiced", "created_at": AT - timedelta(hours=30), "invoice_state": "uploaded"},
            {"order_code": "FN5", "state": "ready_to_book", "created_at": AT, "last_error": "ERP unavailable: 503"},
        ],
    )
    erp = ErpFeeds(documents={"invoice": {}, "credit_note": {"CN1": {"order_code": "FN1"}, "CN2": {"order_code": "FN2"}}})

    report = reconcile(snapshot, at=AT, erp=erp)

    f6 = {f["measure"]: f for f in report.figures if f["flow"] == "F6"}
    assert (f6["credit notes (ledger: recorded; ERP: in its feed)"]["ledger"], f6["credit notes (ledger: recorded; ERP: in its feed)"]["erp"]) == (2, 2)
    assert f6["credit notes uploaded (ledger: marked uploaded; Omni: acknowledged / held)"]["omni"] == 1
    assert f6["credit notes kept in the ERP (F3 after 24 h, F4 partial cancel)"]["ledger"] == 1
    assert report.differences == [] and all(f["check"] == "" for f in report.figures)
    assert [f["flow"] for f in report.figures] == sorted(f["flow"] for f in report.figures)
    open_items = {i["key"]: i for i in report.open_items}
    assert [i["key"] for i in report.open_items] == ["FN4", "FN3", "FN5"]  # oldest first
    assert {k: i["flow"] for k, i in open_items.items()} == {"FN3": "F2", "FN4": "F4", "FN5": "F1"}
    assert open_items["FN4"]["age_hours"] == 30.0 and "ERP unavailable: 503" in open_items["FN5"]["reason"]
