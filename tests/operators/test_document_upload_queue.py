"""The upload queue of F2/F6 (issue 8: CPU per upload): read a page at a time, each document taken for its upload
by a compare-and-set, so nothing is sent twice however the queue and other tries interleave. Real ledgers
(SQLite and PostgreSQL) and both sandboxes."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from omni_erp.ledger import Ledger
from omni_erp.operators import document_upload
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator
from omni_erp.states import DOC_INVOICE, DOC_READY, DOC_UPLOADED
from tests.operators.test_documents import _omni_invoices, _omni_posts, _order, _run, _wait_for


@pytest.fixture()
def any_ledger(ledger_url, monkeypatch) -> Ledger:
    """This test's ledger on SQLite and on PostgreSQL; every operator of the test uses it."""
    ledger = Ledger(ledger_url)
    monkeypatch.setattr(Ledger, "from_conn_id", classmethod(lambda cls, conn_id=None: ledger))
    return ledger


def _ready_invoices(erp, ledger: Ledger, count: int) -> list[str]:
    """``count`` orders booked and e-invoiced in the ERP, their invoices read into the ledger (ready), by feed order."""
    for n in range(1, count + 1):
        _order(ledger, f"FN{n:010d}")
    _wait_for(erp, "invoices", count)
    _run(ErpEInvoiceFetchOperator, batch_id="fetch")
    ready = ledger.documents(DOC_INVOICE, states=[DOC_READY])
    assert len(ready) == count
    return [d["doc_number"] for d in ready]


def test_two_tries_uploading_the_same_queue_side_by_side_send_each_invoice_once(erp, omni, any_ledger):
    ledger = any_ledger
    numbers = _ready_invoices(erp, ledger, 24)
    tries = [OmniInvoiceUploadOperator(task_id="u", batch_id=f"try-{n}", max_in_flight=8) for n in (1, 2)]
    start = threading.Barrier(len(tries))
    summaries: dict[str, dict[str, Any]] = {}

    def run(operator: OmniInvoiceUploadOperator) -> None:
        start.wait()
        summaries[operator.batch_id] = operator.execute(context={})

    threads = [threading.Thread(target=run, args=(operator,)) for operator in tries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Both read the whole queue; each invoice was taken by exactly one of them, the other left it alone.
    assert sum(s.get(DOC_UPLOADED, 0) for s in summaries.values()) == len(numbers)
    assert sorted(_omni_invoices(omni)) == sorted(numbers)
    assert _omni_posts(omni) == len(numbers) and omni.state()["duplicates"] == {}  # not even a duplicate sent
    documents = ledger.documents(DOC_INVOICE)
    assert {(d["state"], d["upload_attempts"]) for d in documents} == {(DOC_UPLOADED, 1)}
    assert {d["batch_id"] for d in documents} <= {"try-1", "try-2"}


def test_the_queue_is_read_page_by_page_in_feed_order_and_what_another_run_uploaded_meanwhile_is_not_sent(
    erp, omni, any_ledger, monkeypatch
):
    ledger = any_ledger
    numbers = _ready_invoices(erp, ledger, 7)
    monkeypatch.setattr(document_upload, "PAGE_SIZE", 3)
    pages: list[list[str]] = []
    read_page = OmniInvoiceUploadOperator.page_context

    def page_context(self, documents):
        pages.append([d["doc_number"] for d in documents])
        if len(pages) == 1:
            # Another run uploads one invoice of this page (already read) and one of the next page (not read yet).
            for number in (numbers[1], numbers[4]):
                ledger.update_document(DOC_INVOICE, number, state=DOC_UPLOADED, batch_id="another-run")
        return read_page(self, documents)

    monkeypatch.setattr(OmniInvoiceUploadOperator, "page_context", page_context)
    summary = _run(OmniInvoiceUploadOperator, batch_id="run-1", max_in_flight=1)

    assert pages == [numbers[0:3], [numbers[3], numbers[5]], [numbers[6]]]  # the next page no longer holds it
    # The one its page held was taken by nobody: the compare-and-set saw it changed and left it alone.
    assert summary == {"batch_id": "run-1", DOC_UPLOADED: 5, "skipped": 1}
    sent = [d["body"]["invoiceNumber"] for d in omni.state()["invoices"]]
    assert sent == [n for n in numbers if n not in (numbers[1], numbers[4])]  # one at a time: in feed order
    assert {d["doc_number"]: d["batch_id"] for d in ledger.documents(DOC_INVOICE)}[numbers[4]] == "another-run"
