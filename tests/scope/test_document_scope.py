"""Run scope for ERP documents (issue 10.5/10.6): F2/F6 uploads and the RMS report by order codes, by a
backfill window, and as dry runs - on a real ledger (SQLite and PostgreSQL), the ERP and Omni sandboxes, and
``dag.test()`` of erp_invoice_upload."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.hooks.erp import ErpHook
from omni_erp.ledger import Ledger
from omni_erp.ledger import tables as t
from omni_erp.ledger.rms import RMS_REPORTED, RMS_TO_REPORT
from omni_erp.models.erp import DocumentLine, ReturnOrderRequest
from omni_erp.operators.credit_notes import ErpCreditNoteFetchOperator, OmniCreditNoteUploadOperator
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator
from omni_erp.operators.rms import RmsReturnReportOperator
from omni_erp.states import (
    DOC_CREDIT_NOTE,
    DOC_INVALID,
    DOC_INVOICE,
    DOC_KEPT_IN_ERP,
    DOC_MISMATCH,
    DOC_READY,
    DOC_SKIPPED,
    DOC_UNMATCHED,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
    ORDER_INVOICED,
    RETURN_BOOKED,
    RETURN_CUSTOMER,
)
from omni_erp.timeutil import IST
from tests.flows import book, create_posting, wait_for_einvoices
from tests.secret_scan import database_rows

DAG_ID = "erp_invoice_upload"
WOULD_POST = re.compile(r"DRY RUN would POST (\S+) key (\S+) body (\{.*?\})(?:\s*$|\"|\s)", re.M)
INVOICE_ENDPOINT = "/ajio-vms/b2bInvoice/posting"
SKU_A = "460491724004"  # x2 at 1120.00 in the CREATE fixture
ALL_STATES = (
    DOC_READY, DOC_UPLOADED, DOC_UPLOAD_FAILED, DOC_UNMATCHED, DOC_MISMATCH, DOC_SKIPPED, DOC_KEPT_IN_ERP, DOC_INVALID
)


def _logged_posts(text: str) -> dict[str, tuple[str, dict]]:
    """``{key: (endpoint, body)}`` of every ``DRY RUN would POST`` line of the task logs."""
    return {key: (endpoint, json.loads(body)) for endpoint, key, body in WOULD_POST.findall(text)}


def _as_logged(body: dict) -> dict:
    """A body as Airflow's task log shows it: the log masks anything that looks like a JWT (``eyJ...``), which
    the e-invoice's signed QR code is."""
    return {k: re.sub(r"eyJ[\.A-Za-z0-9-_]*", "eyJ***", v) if isinstance(v, str) else v for k, v in body.items()}


def _sent_invoices(omni) -> dict[str, dict]:
    return {d["body"]["invoiceNumber"]: d["body"] for d in omni.state()["invoices"]}


def _invoice_posts(omni) -> int:
    return sum(n for endpoint, n in omni.state()["request_counts"].items() if "b2bInvoice" in endpoint)


def _erp_state_without_counters(erp) -> dict:
    """The ERP sandbox's documents (a dry run may GET its feed and PDFs, which only moves the counters)."""
    return {k: v for k, v in erp.state().items() if k not in ("request_counts", "injected")}


def _ledger_connection(url: str) -> str:
    """``AIRFLOW_CONN_OMNI_ERP_LEDGER`` for a ledger URL (SQLite file or PostgreSQL with trust authentication)."""
    parts = sa.make_url(url)
    if parts.get_backend_name() == "sqlite":
        return json.dumps({"conn_type": "sqlite", "host": parts.database})
    return json.dumps({"conn_type": "postgres", "host": parts.host, "port": parts.port, "login": parts.username,
                       "schema": parts.database})


@pytest.fixture()
def scoped_ledger(ledger_url, monkeypatch) -> Ledger:
    """The test's ledger on both backends, as the operators and DAG runs find it (the omni_erp_ledger connection)."""
    monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_LEDGER", _ledger_connection(ledger_url))
    return Ledger(ledger_url)


def _record_invoices_at(monkeypatch, at: datetime, count: int) -> None:
    """Read the ERP's e-invoice feed (the real F2 fetch) with our clock at ``at``: what it records gets ``created_at`` = ``at``."""
    wait_for_einvoices(count)
    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str((at - datetime.now(UTC)).total_seconds()))
    try:
        ErpEInvoiceFetchOperator(task_id="fetch", batch_id=f"setup/fetch-{count}").execute(context={})
    finally:
        monkeypatch.delenv("OMNI_ERP_CLOCK_OFFSET_S")


def _upload(**kwargs) -> dict[str, Any]:
    return OmniInvoiceUploadOperator(task_id="upload_invoices", batch_id="test/upload", **kwargs).execute(context={})


def _invoice_of(ledger: Ledger, order_code: str) -> dict[str, Any]:
    [document] = ledger.documents(DOC_INVOICE, order_code=order_code)
    return document


# --- the selection, over generated documents --------------------------------------------------------------

BASE = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
ORDERS = ("FN1", "FN2", "FN3", "FN4")
RETURNS = ("RET-1", "RET-2")

documents_strategy = st.lists(
    st.tuples(
        st.sampled_from((DOC_INVOICE, DOC_CREDIT_NOTE)),
        st.sampled_from(ORDERS),
        st.sampled_from((*RETURNS, None)),  # a credit note's return order (related_code)
        st.sampled_from(ALL_STATES),
        st.integers(min_value=0, max_value=24 * 60),  # minutes after BASE it was recorded
    ),
    max_size=14,
)
window_strategy = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 24 * 60), st.integers(1, 12 * 60), st.sampled_from((UTC, IST))).map(
        # The window may come in any zone (an IST data interval); the ledger keeps UTC.
        lambda w: ((BASE + timedelta(minutes=w[0])).astimezone(w[2]), (BASE + timedelta(minutes=w[0] + w[1])).astimezone(w[2]))
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    documents=documents_strategy,
    doc_type=st.sampled_from((DOC_INVOICE, DOC_CREDIT_NOTE)),
    states=st.lists(st.sampled_from(ALL_STATES), min_size=1, max_size=3, unique=True),
    order_codes=st.lists(st.sampled_from((*ORDERS, *RETURNS, "FN-NONE")), max_size=3, unique=True),
    window=window_strategy,
)
def test_the_document_selection_is_exactly_the_scope_filter(ledger_url, documents, doc_type, states, order_codes, window):
    ledger = Ledger(ledger_url)
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(t.erp_document))
    expected = []
    for n, (kind, order_code, return_code, state, minutes) in enumerate(documents, start=1):
        number, recorded = f"D-{n}", BASE + timedelta(minutes=minutes)
        related = return_code if kind == DOC_CREDIT_NOTE else f"SO-{n}"
        assert ledger.record_document(doc_type=kind, doc_number=number, order_code=order_code, related_code=related,
                                      seq=len(documents) - n, payload={"n": n}, state=state)
        ledger.update_document(kind, number, created_at=recorded)
        by_order = not order_codes or order_code in order_codes or (kind == DOC_CREDIT_NOTE and related in order_codes)
        in_window = window is None or window[0] <= recorded < window[1]
        if kind == doc_type and state in states and by_order and in_window:
            expected.append((len(documents) - n, number))

    selected = ledger.select_documents(doc_type, states=states, order_codes=order_codes, window=window)

    assert [d["doc_number"] for d in selected] == [number for _, number in sorted(expected)]  # by feed position
    assert all(d["payload"]["n"] == int(d["doc_number"][2:]) and d["created_at"].tzinfo is not None for d in selected)
    if not order_codes and window is None:
        assert selected == ledger.documents(doc_type, states=states)  # no scope: what an unscoped run lists


# --- uploads by order codes and by window, on a real ledger and sandboxes -----------------------------------


def test_order_codes_resend_a_rejected_invoice_once_fixed_and_nothing_else(erp, omni, scoped_ledger, capfd):
    ledger = scoped_ledger
    book(ledger, *(create_posting(n, f"FN00000000{n:02d}") for n in (1, 2, 3)))
    wait_for_einvoices(3)
    ErpEInvoiceFetchOperator(task_id="fetch", batch_id="setup/fetch").execute(context={})
    omni.configure(fail_next=[400])  # Omni refuses the first upload
    with pytest.raises(Exception, match="dead-lettered, rejected or failed"):
        _upload(order_codes=["FN0000000001"])
    assert _invoice_of(ledger, "FN0000000001")["state"] == DOC_UPLOAD_FAILED
    assert {_invoice_of(ledger, f"FN00000000{n:02d}")["state"] for n in (2, 3)} == {DOC_READY}  # not in scope
    assert _sent_invoices(omni) == {}

    # The cause is fixed (Omni accepts again): a plain run leaves the rejected invoice alone, ...
    assert set(_upload(order_codes=["FN0000000002"])) == {"batch_id", DOC_UPLOADED}
    assert _invoice_of(ledger, "FN0000000001")["state"] == DOC_UPLOAD_FAILED
    # ... a run for its order sends it again, and only it.
    posts = _invoice_posts(omni)
    assert _upload(order_codes=["FN0000000001"]) == {"batch_id": "test/upload", DOC_UPLOADED: 1}
    assert _invoice_posts(omni) == posts + 1
    assert set(_sent_invoices(omni)) == {_invoice_of(ledger, c)["doc_number"] for c in ("FN0000000001", "FN0000000002")}
    assert _invoice_of(ledger, "FN0000000003")["state"] == DOC_READY
    # Done ones are skipped: the same run again sends nothing.
    assert _upload(order_codes=["FN0000000001", "FN0000000002"]) == {"batch_id": "test/upload"}
    assert _invoice_posts(omni) == posts + 1 and omni.state()["duplicates"] == {}


def test_a_window_run_uploads_only_documents_recorded_in_it_and_a_repeat_uploads_nothing(erp, omni, scoped_ledger, monkeypatch):
    ledger = scoped_ledger
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    for hour, n in enumerate((1, 2, 3)):  # FN1 recorded at start, FN2 an hour later, FN3 two hours later
        book(ledger, create_posting(n, f"FN00000000{n:02d}"))
        _record_invoices_at(monkeypatch, start + timedelta(hours=hour, minutes=1), n)
    omni.configure(fail_next=[400])
    with pytest.raises(Exception, match="dead-lettered, rejected or failed"):
        _upload(order_codes=["FN0000000002"])  # FN2 rejected once: a window retries it
    window = f"{(start + timedelta(hours=1)).isoformat()}/{(start + timedelta(hours=2, minutes=1)).isoformat()}"

    first = _upload(window=window)

    assert first == {"batch_id": "test/upload", DOC_UPLOADED: 1}  # FN2 only: FN3 was recorded at the window's end
    assert set(_sent_invoices(omni)) == {_invoice_of(ledger, "FN0000000002")["doc_number"]}
    assert {c: _invoice_of(ledger, c)["state"] for c in ("FN0000000001", "FN0000000003")} == {
        "FN0000000001": DOC_READY, "FN0000000003": DOC_READY
    }
    posts = _invoice_posts(omni)
    assert _upload(window=window) == {"batch_id": "test/upload"}  # the same backfill again: nothing new
    assert _invoice_posts(omni) == posts
    # The window and order codes together: their intersection.
    wide = f"{start.isoformat()}/{(start + timedelta(hours=3)).isoformat()}"
    assert _upload(window=wide, order_codes=["FN0000000003", "FN0000000002"]) == {"batch_id": "test/upload", DOC_UPLOADED: 1}
    assert _invoice_of(ledger, "FN0000000001")["state"] == DOC_READY
    assert omni.state()["duplicates"] == {}


def test_a_dry_run_with_pdfs_logs_each_pdf_by_size_and_hash_never_its_content(erp, omni, scoped_ledger, ledger_url, capfd):
    ledger = scoped_ledger
    book(ledger, create_posting(1, "FN0000000001"))
    wait_for_einvoices(1)
    ErpEInvoiceFetchOperator(task_id="fetch", batch_id="setup/fetch").execute(context={})
    before, omni_before = database_rows(ledger_url), omni.state()
    capfd.readouterr()

    summary = _upload(document="pdf", dry_run=True)

    out = capfd.readouterr().out
    assert summary == {"batch_id": "test/upload", "dry_run": True, "selected": 1, "would_upload": 1}
    assert database_rows(ledger_url) == before and omni.state() == omni_before  # no outbound_call row either
    [(endpoint, logged)] = _logged_posts(out).values()
    assert endpoint == INVOICE_ENDPOINT and "invoicePdf" not in logged and "invoiceURL" not in logged
    [size, digest] = re.findall(r"invoicePdf would carry the PDF, (\d+) bytes, sha256 ([0-9a-f]{64})", out)[0]

    assert _upload(document="pdf") == {"batch_id": "test/upload", DOC_UPLOADED: 1}

    [sent] = _sent_invoices(omni).values()
    pdf = base64.b64decode(sent.pop("invoicePdf"))
    assert _as_logged(sent) == logged and (len(pdf), hashlib.sha256(pdf).hexdigest()) == (int(size), digest)
    assert base64.b64encode(pdf).decode()[:40] not in out


def _erp_return(ledger: Ledger, invoice: dict, code: str, *, known: bool) -> None:
    """One unit of ``invoice`` returned in the ERP (which raises its credit note); ``known``: F5 registered it."""
    request = ReturnOrderRequest(
        returnOrderCode=code, orderCode=invoice["orderCode"], invoiceNumber=invoice["invoiceNumber"], reason="SIZE_ISSUE",
        lines=[DocumentLine(sku=SKU_A, quantity=1, unitPrice=Decimal("1120.00"))],
    )
    ErpHook().create_return_order(request, idempotency_key=f"return:{code}")
    if known:
        ledger.register_return_order(
            return_order_code=code, order_code=invoice["orderCode"], kind=RETURN_CUSTOMER, state=RETURN_BOOKED,
            lines=[{"sku": SKU_A, "quantity": 1}], erp_request=request.to_json_dict(),
        )


def _wait_for_credit_notes(count: int) -> list:
    deadline = time.monotonic() + 30
    while len(notes := ErpHook().credit_notes_since(0, limit=500).items) < count:
        assert time.monotonic() < deadline, f"the ERP did not publish {count} credit note(s)"
        time.sleep(0.05)
    return notes


def test_f6_dry_runs_predict_the_feed_and_the_upload_of_one_return(erp, omni, scoped_ledger, ledger_url, capfd):
    ledger = scoped_ledger
    book(ledger, create_posting(1, "FN0000000001"), create_posting(2, "FN0000000002"))
    wait_for_einvoices(2)
    ErpEInvoiceFetchOperator(task_id="fetch", batch_id="setup/fetch").execute(context={})
    invoices = {i["orderCode"]: i for i in erp.state()["invoices"]}
    _erp_return(ledger, invoices["FN0000000001"], "RTN-1", known=True)
    _erp_return(ledger, invoices["FN0000000001"], "RTN-2", known=False)  # not in the ledger: unmatched
    _erp_return(ledger, invoices["FN0000000002"], "RTN-3", known=True)
    _wait_for_credit_notes(3)
    before = database_rows(ledger_url)
    fetch = ErpCreditNoteFetchOperator(task_id="fetch_credit_notes", batch_id="test/f6")
    capfd.readouterr()

    dry = ErpCreditNoteFetchOperator(task_id="fetch_credit_notes", batch_id="test/f6", dry_run=True).execute(context={})

    out = capfd.readouterr().out
    assert database_rows(ledger_url) == before
    assert (dry["dry_run"], dry["would_record"], dry["would_dead_letter"], dry["cursor"]) == (True, 3, 1, 0)
    assert "return order RTN-1 would get credit note" in out and "DRY RUN would dead-letter credit note" in out
    with pytest.raises(Exception, match="no return order RTN-2 in the ledger"):
        fetch.execute(context={})  # the real run records what the dry run said, and is red for the unmatched one
    recorded = Counter(d["state"] for d in ledger.documents(DOC_CREDIT_NOTE))
    assert recorded == {k: dry[k] for k in (DOC_READY, DOC_UNMATCHED)} == {DOC_READY: 2, DOC_UNMATCHED: 1}

    before, omni_before = database_rows(ledger_url), omni.state()
    upload = {"task_id": "upload_credit_notes", "batch_id": "test/f6", "order_codes": ["RTN-1"]}
    capfd.readouterr()
    assert OmniCreditNoteUploadOperator(dry_run=True, **upload).execute(context={})["would_upload"] == 1
    logged = _logged_posts(capfd.readouterr().out)
    assert database_rows(ledger_url) == before and omni.state() == omni_before

    assert OmniCreditNoteUploadOperator(**upload).execute(context={})[DOC_UPLOADED] == 1

    [sent] = omni.state()["credit_notes"]
    assert logged == {f"credit_note:{sent['body']['creditNoteNumber']}": ("/ajio-vms/creditNote/posting", _as_logged(sent["body"]))}
    assert sent["body"]["returnOrderId"] == "RTN-1"
    assert ledger.documents(DOC_CREDIT_NOTE, order_code="FN0000000002")[0]["state"] == DOC_READY  # RTN-3: not in scope


# --- erp_invoice_upload with dag.test(): dry run, then the real run ------------------------------------------


@pytest.mark.integration
def test_dag_dry_run_changes_nothing_and_logs_what_the_real_runs_then_send(erp, omni, scoped_ledger, ledger_url, run_dag, capfd):
    ledger = scoped_ledger
    codes = [f"FN00000000{n:02d}" for n in (1, 2, 3)]
    book(ledger, *(create_posting(n, code) for n, code in enumerate(codes, start=1)))
    wait_for_einvoices(3)
    ErpEInvoiceFetchOperator(task_id="fetch", batch_id="setup/fetch").execute(context={})
    omni.configure(fail_next=[400])
    with pytest.raises(Exception, match="dead-lettered, rejected or failed"):
        _upload(order_codes=[codes[0]])  # Omni refuses FN1's invoice
    assert [_invoice_of(ledger, c)["state"] for c in codes] == [DOC_UPLOAD_FAILED, DOC_READY, DOC_READY]
    numbers = {c: _invoice_of(ledger, c)["doc_number"] for c in codes}
    # A new e-invoice the feed has not been read for yet: the dry run's fetch would record it.
    book(ledger, create_posting(4, "FN0000000004"))
    wait_for_einvoices(4)
    before, omni_before, erp_before = database_rows(ledger_url), omni.state(), _erp_state_without_counters(erp)
    capfd.readouterr()
    dag = run_dag(DAG_ID)

    dry = dag(dry_run=True, order_codes=[codes[0]])

    out = capfd.readouterr().out
    assert dry.state == "success"
    assert database_rows(ledger_url) == before  # every table, every column: no cursor move, no outbound_call
    assert omni.state() == omni_before  # not one request reached Omni
    assert _erp_state_without_counters(erp) == erp_before
    fetched, uploaded = dag.xcom(dry, "fetch_einvoices"), dag.xcom(dry, "upload_invoices")
    assert (fetched["dry_run"], fetched["read"], fetched["would_record"], fetched[DOC_READY]) == (True, 4, 1, 1)
    assert fetched["cursor"] == 3 and fetched["would_move_cursor_to"] == 4
    assert uploaded == {"batch_id": uploaded["batch_id"], "dry_run": True, "selected": 1, "would_upload": 1}
    assert "DRY RUN would record e-invoice" in out and "order FN0000000004 would become invoiced" in out
    report = dag.xcom(dry, "report_outcome")
    assert report["tasks"] == {"fetch_einvoices": fetched, "upload_invoices": uploaded}
    assert "dry run: nothing was sent or recorded" in out
    logged = _logged_posts(out)
    assert set(logged) == {f"invoice:{numbers[codes[0]]}"} and logged[f"invoice:{numbers[codes[0]]}"][0] == INVOICE_ENDPOINT

    real = dag(order_codes=[codes[0]])  # the cause is fixed: Omni takes it now

    assert real.state == "success"
    sent = {n: _as_logged(body) for n, body in _sent_invoices(omni).items()}
    assert sent == {numbers[codes[0]]: logged[f"invoice:{numbers[codes[0]]}"][1]}  # exactly the logged body
    assert [_invoice_of(ledger, c)["state"] for c in codes] == [DOC_UPLOADED, DOC_READY, DOC_READY]
    assert ledger.get_order("FN0000000004")["state"] == ORDER_INVOICED  # the real fetch recorded it

    # A dry run of everything due logs the bodies of the other three; the real run sends exactly those.
    capfd.readouterr()
    assert dag(dry_run=True).state == "success"
    logged = {key: body for key, (_, body) in _logged_posts(capfd.readouterr().out).items()}
    assert set(logged) == {f"invoice:{_invoice_of(ledger, c)['doc_number']}" for c in (*codes[1:], "FN0000000004")}
    assert dag().state == "success"
    sent = _sent_invoices(omni)
    assert {f"invoice:{n}": _as_logged(body) for n, body in sent.items() if n != numbers[codes[0]]} == logged
    assert omni.state()["duplicates"] == {}


# --- the RMS report --------------------------------------------------------------------------------------


def _rms_return(ledger: Ledger, code: str, order_code: str, sku: str) -> None:
    ledger.register_order(
        order_code=order_code, po_number=f"PO-{order_code}", state=ORDER_INVOICED, create_message_id=None,
        lines=[{"sku": sku, "quantity": 1, "unitPrice": "100"}], total_amount=Decimal(100), erp_request=None,
    )
    ledger.update_order(order_code, erp_invoice_number=f"INV-{order_code}", irn="b" * 64)
    with ledger.transaction():
        ledger.register_return_order(
            return_order_code=code, order_code=order_code, kind=RETURN_CUSTOMER, state=RETURN_BOOKED,
            lines=[{"sku": sku, "quantity": 1, "unitPrice": "100"}], erp_request={"raiseCreditNote": False},
        )
        ledger.register_rms_return(return_order_code=code, order_code=order_code)


def _rms(**kwargs) -> dict[str, Any]:
    return RmsReturnReportOperator(task_id="report_to_rms", batch_id="test/rms", **kwargs).execute(context={})


def test_rms_dry_run_logs_the_rows_and_order_codes_restrict_the_report(scoped_ledger, ledger_url, tmp_path, monkeypatch, capfd):
    ledger = scoped_ledger
    folder = tmp_path / "rms"
    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", str(folder))
    _rms_return(ledger, "RET-1", "FN1", "SKU-A")
    _rms_return(ledger, "RET-2", "FN2", "SKU-B")
    _rms_return(ledger, "RET-3", "FN3", "SKU-C")
    before = database_rows(ledger_url)
    capfd.readouterr()

    dry = _rms(dry_run=True, order_codes=["FN1", "RET-2"])  # a forward order and a return order code

    out = capfd.readouterr().out
    assert dry["dry_run"] is True and (dry["returns"], dry["rows"], dry["file"]) == (2, 2, None)
    assert not folder.exists() and database_rows(ledger_url) == before
    assert f"DRY RUN would write RMS report {dry['would_write']}" in out
    logged_rows = [line for line in out.splitlines() if line.startswith(("PO-FN", '"PO-FN'))]
    assert {row.split(",")[0].strip('"') for row in logged_rows} == {"PO-FN1", "PO-FN2"}

    real = _rms(order_codes=["FN1", "RET-2"])

    assert real["file"] == dry["would_write"]
    assert (folder / real["file"]).read_text().strip().splitlines()[1:] == [r.strip() for r in logged_rows]
    states = {r["return_order_code"]: r["state"] for r in ledger.rms_returns()}
    assert states == {"RET-1": RMS_REPORTED, "RET-2": RMS_REPORTED, "RET-3": RMS_TO_REPORT}
    # A window that holds none of the waiting returns reports nothing; one that holds RET-3 reports it.
    registered = ledger.get_rms_return("RET-3")["registered_at"]
    assert _rms(window=f"{(registered - timedelta(hours=2)).isoformat()}/{(registered - timedelta(hours=1)).isoformat()}")["returns"] == 0
    assert _rms(window=f"{registered.isoformat()}/{(registered + timedelta(seconds=1)).isoformat()}")["returns"] == 1
