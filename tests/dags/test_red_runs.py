"""A run is red whenever any task of it failed, even though its last task (the report) always runs (issue 6.8)."""

from __future__ import annotations

import pytest

from omni_erp.ledger import Ledger
from omni_erp.states import DOC_INVOICE, DOC_READY, DOC_UPLOADED
from tests.flows import book, create_posting, wait_for_einvoices

pytestmark = pytest.mark.integration


def test_f2_run_is_red_while_omni_is_down_and_the_next_run_uploads_each_invoice_once(
    erp, omni, ledger_path, run_dag, capfd
):
    ledger = Ledger.sqlite(ledger_path)
    book(ledger, *[create_posting(n, f"FN000000000{n}") for n in range(1, 4)])
    wait_for_einvoices(3)
    omni.configure(error_rate=1.0)  # Omni answers 503 to everything for the whole run
    dag = run_dag("erp_invoice_upload")

    down = dag()

    assert down.state == "failed"
    states = {t: down.get_task_instance(t).state for t in ("fetch_einvoices", "upload_invoices", "report_outcome")}
    assert states == {"fetch_einvoices": "success", "upload_invoices": "failed", "report_outcome": "failed"}
    # Nothing of the batch itself is in a failed state: the report failed because upload_invoices did.
    assert {d["state"] for d in ledger.documents(DOC_INVOICE)} == {DOC_READY}
    assert "Task(s) of this run failed: upload_invoices" in capfd.readouterr().out
    assert omni.state()["invoices"] == []

    omni.configure(error_rate=0.0)
    recovered = dag()

    assert recovered.state == "success"
    assert {d["state"] for d in ledger.documents(DOC_INVOICE)} == {DOC_UPLOADED}
    received = [d["body"]["invoiceNumber"] for d in omni.state()["invoices"]]
    assert sorted(received) == sorted(d["doc_number"] for d in ledger.documents(DOC_INVOICE))  # each once
    assert omni.state()["duplicates"] == {}
