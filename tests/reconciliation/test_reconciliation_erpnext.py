"""The reconciliation reads the ERP through the adapter its connection's type chooses: here the ERPNext sandbox."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from omni_erp.hooks.adapters import erp_adapter
from omni_erp.ledger import Ledger
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator
from omni_erp.operators.reconciliation import ReconciliationReportOperator
from omni_erp.rules.reconciliation import MISMATCH
from tests.flows import book, create_posting

pytestmark = pytest.mark.integration

API_KEY, API_SECRET = "erpnext-recon-key", "erpnext-recon-secret-s3cr3t"


@pytest.fixture()
def erpnext(monkeypatch, fast_retries):
    from omni_erp.sandbox.erpnext import create_erpnext_sandbox
    from omni_erp.sandbox.serve import serve_in_thread

    with serve_in_thread(create_erpnext_sandbox(api_key=API_KEY, api_secret=API_SECRET, invoice_delay_s=0.05)) as server:
        conn = {"conn_type": "erpnext", "host": server.url, "login": API_KEY, "password": API_SECRET}
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps(conn))
        yield server


def _reconcile(tmp_path: Path, run: str) -> tuple[dict, dict[str, dict[str, str]], list[dict[str, str]]]:
    result = ReconciliationReportOperator(task_id="reconcile", batch_id=f"recon/{run}", output_folder=str(tmp_path)).execute(
        context={"run_id": run}
    )
    folder = Path(result["folder"])
    figures = {row["measure"]: row for row in csv.DictReader(io.StringIO((folder / "figures.csv").read_text()))}
    differences = list(csv.DictReader(io.StringIO((folder / "differences.csv").read_text())))
    return result, figures, differences


def test_erpnext_e_invoices_not_yet_read_by_f2_are_differences_until_f2_records_them(erpnext, ledger_path, tmp_path):
    ledger = Ledger.sqlite(ledger_path)
    book(ledger, create_posting(1, "FN0000000001"), create_posting(2, "FN0000000002"))  # F1 through the ERPNext adapter
    deadline = time.monotonic() + 20  # generous: on a loaded machine the sandbox e-invoices later
    while len(erp_adapter("erp_default").einvoices_since(0).items) < 2:
        assert time.monotonic() < deadline, "ERPNext did not register both e-invoices"
        time.sleep(0.05)

    before, figures, differences = _reconcile(tmp_path, "before")

    recorded = figures["e-invoices (ledger: recorded; ERP: in its feed)"]
    assert (recorded["ledger"], recorded["erp"], recorded["check"]) == ("0", "2", MISMATCH)
    assert {d["order_code"] for d in differences} == {"FN0000000001", "FN0000000002"}
    assert before["differences"] == 2

    ErpEInvoiceFetchOperator(task_id="f2", batch_id="setup/f2").execute(context={})  # F2 records them (no upload yet)
    after, figures, differences = _reconcile(tmp_path, "after")

    recorded = figures["e-invoices (ledger: recorded; ERP: in its feed)"]
    assert (recorded["ledger"], recorded["erp"], recorded["check"]) == ("2", "2", "")
    assert differences == [] and after["mismatches"] == 0
