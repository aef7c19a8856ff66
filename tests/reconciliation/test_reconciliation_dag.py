"""omni_erp_reconciliation with dag.test() against the sandboxes: the CSV files and the HTML page hold the right rows."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.hooks.erp import ErpHook
from omni_erp.ledger import Ledger
from omni_erp.operators.invoice_upload import OmniInvoiceUploadOperator
from omni_erp.operators.reconciliation import ReconciliationReportOperator
from omni_erp.rules.reconciliation import MISMATCH
from tests.flows import book, create_posting, record_invoices

pytestmark = pytest.mark.integration

UPLOADED = ("FN0000000001", "FN0000000002")
LATE_INVOICE = "FN0000000003"  # e-invoiced by the ERP after F2 last read the feed
NOT_INVOICED = "FN0000000004"  # the ERP holds its e-invoice
NO_PO = "FN0000000005"


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _wait_for_einvoices(count: int) -> list:
    deadline = time.monotonic() + 20  # generous: on a loaded machine the sandbox e-invoices later
    while len(items := ErpHook().einvoices_since(0, limit=500).items) < count:
        assert time.monotonic() < deadline, f"the ERP published {len(items)} of {count} e-invoices"
        time.sleep(0.05)
    return items


def test_the_report_lists_every_difference_open_item_dead_letter_and_duplicate_in_csv_and_html(
    erp, omni, ledger_path, run_dag, tmp_path
):
    ledger = Ledger.sqlite(ledger_path)
    erp.configure(invoice_hold=[LATE_INVOICE, NOT_INVOICED])
    book(ledger, *(create_posting(n, f"FN000000000{n}") for n in range(1, 5)))
    no_po = create_posting(5, NO_PO)
    del no_po["orderCustomAttributes"]["attribute1"]
    duplicate = {**create_posting(6, UPLOADED[0]), "messageId": 6}  # the same order posted again under another id
    with pytest.raises(AirflowFailException):
        book(ledger, no_po, duplicate)
    _wait_for_einvoices(2)
    record_invoices(2)  # the real F2 operators record the two e-invoices and upload them to Omni
    assert OmniInvoiceUploadOperator(task_id="u", batch_id="setup/f2-upload").execute(context={})["uploaded"] == 2
    erp.configure(invoice_hold=[NOT_INVOICED])
    late_number = next(i.invoice_number for i in _wait_for_einvoices(3) if i.order_code == LATE_INVOICE)

    dag = run_dag("omni_erp_reconciliation")
    run = dag(output_folder=str(tmp_path / "recon"), omni_state_url=f"{omni.url}/_sandbox/state")

    assert run.state == "success"
    result = dag.xcom(run, "reconcile")
    folder = Path(result["folder"])
    assert folder.parent == tmp_path / "recon" and result["html"] == str(folder / "reconciliation.html")
    assert sorted(p.name for p in folder.iterdir()) == [
        "dead_letters.csv", "differences.csv", "duplicates.csv", "figures.csv", "manual_settlements.csv",
        "open_items.csv", "reconciliation.html",
    ]
    assert (result["mismatches"], result["differences"], result["dead_letters"], result["duplicates_suppressed"]) == (1, 1, 1, 1)

    figures = {row["measure"]: row for row in _read_csv((folder / "figures.csv").read_text())}
    recorded = figures["e-invoices (ledger: recorded; ERP: in its feed)"]
    assert (recorded["ledger"], recorded["erp"], recorded["check"]) == ("2", "3", MISMATCH)
    uploaded = figures["e-invoices uploaded (ledger: marked uploaded; Omni: acknowledged / held)"]
    assert (uploaded["ledger"], uploaded["omni"], uploaded["check"]) == ("2", "2", "")  # Omni holds exactly those two
    assert figures["OUTWARD_ORDER_CREATE postings dead-lettered"]["ledger"] == "1"

    [difference] = _read_csv((folder / "differences.csv").read_text())
    assert (difference["doc_number"], difference["order_code"]) == (late_number, LATE_INVOICE)
    assert "in the ERP's feed, not in the ledger" in difference["difference"]

    open_orders = {row["key"]: row for row in _read_csv((folder / "open_items.csv").read_text()) if row["kind"] == "order"}
    assert set(open_orders) == {*UPLOADED, LATE_INVOICE, NOT_INVOICED}
    assert open_orders[NOT_INVOICED]["state"] == "booked" and "waiting for its e-invoice" in open_orders[NOT_INVOICED]["reason"]
    assert "waiting for OUTWARD_ORDER_COMPLETE" in open_orders[UPLOADED[0]]["reason"]
    assert all(float(row["age_hours"]) >= 0 for row in open_orders.values())

    [dead] = _read_csv((folder / "dead_letters.csv").read_text())
    assert dead["business_key"] == NO_PO and "PO" in dead["reason"]
    [repeat] = _read_csv((folder / "duplicates.csv").read_text())
    assert (repeat["flow"], repeat["count"]) == ("F1", "1") and "already received" in repeat["what"]

    page = (folder / "reconciliation.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.split("<body>")[0]
    assert late_number in page and NOT_INVOICED in page and MISMATCH in page


def test_with_the_erp_down_the_report_is_still_written_to_object_storage_and_the_task_fails(erp, ledger_path, tmp_path):
    ledger = Ledger.sqlite(ledger_path)
    book(ledger, create_posting(1, "FN0000000001"))
    erp.configure(error_rate=1.0)  # every ERP call answers 503, retries included

    operator = ReconciliationReportOperator(task_id="reconcile", batch_id="recon/test", output_folder=f"file://{tmp_path}/store")
    with pytest.raises(AirflowFailException, match="ERP feeds not read"):
        operator.execute(context={"run_id": "manual__2026-12-03"})

    [folder] = (tmp_path / "store").iterdir()
    assert folder.name.endswith("_manual__2026-12-03")
    figures = _read_csv((folder / "figures.csv").read_text())
    assert all(row["erp"] == "" for row in figures)  # the ERP's side is empty, not made up
    [order] = [row for row in _read_csv((folder / "open_items.csv").read_text()) if row["kind"] == "order"]
    assert order["key"] == "FN0000000001"
    assert "could not be read" in (folder / "reconciliation.html").read_text()
    assert not list(folder.glob(".*partial"))
