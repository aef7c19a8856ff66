"""RmsReturnReportOperator and the RMS ledger verbs on a real ledger (SQLite and PostgreSQL): one transaction
per file, nothing reported twice, untraceable lines left out, object storage folders."""

from __future__ import annotations

from decimal import Decimal

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.ledger import Ledger
from omni_erp.ledger.rms import RMS_NOT_REPORTABLE, RMS_REPORTED, RMS_TO_REPORT, ConcurrentReportError
from omni_erp.operators.rms import RmsReturnReportOperator
from omni_erp.rules.rms import read_report
from omni_erp.states import ORDER_INVOICED, RETURN_BOOKED, RETURN_CUSTOMER


def _order(ledger: Ledger, code: str, skus: dict[str, int]) -> None:
    ledger.register_order(
        order_code=code, po_number=f"PO-{code}", state=ORDER_INVOICED, create_message_id=None,
        lines=[{"sku": sku, "quantity": n, "unitPrice": "100"} for sku, n in skus.items()],
        total_amount=Decimal(100 * sum(skus.values())), erp_request=None,
    )
    ledger.update_order(code, erp_invoice_number=f"INV-{code}", irn="b" * 64)


def _rms_return(ledger: Ledger, code: str, order_code: str, lines: dict[str, int], state: str = RETURN_BOOKED) -> None:
    with ledger.transaction():
        ledger.register_return_order(
            return_order_code=code, order_code=order_code, kind=RETURN_CUSTOMER, state=state,
            lines=[{"sku": sku, "quantity": n, "unitPrice": "100"} for sku, n in lines.items()],
            erp_request={"raiseCreditNote": False},
        )
        ledger.register_rms_return(return_order_code=code, order_code=order_code)


def _operator(**kwargs) -> RmsReturnReportOperator:
    return RmsReturnReportOperator(task_id="report_to_rms", batch_id="test/run", **kwargs)


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


def test_untraceable_lines_are_left_out_and_listed(ledger, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", str(tmp_path / "out"))
    _order(ledger, "FN1", {"A": 2, "B": 1})
    _rms_return(ledger, "RET-OK", "FN1", {"A": 2, "Z": 1})   # Z is not on FN1's invoice
    _rms_return(ledger, "RET-LOST", "FN-GONE", {"A": 1})    # its forward order is not in the ledger
    _rms_return(ledger, "RET-LATER", "FN1", {"B": 1}, state="ready_to_book")  # not booked in the ERP yet

    summary = _operator().execute(context={})
    assert (summary["returns"], summary["rows"], summary["units"]) == (1, 1, 2)
    assert (summary["excluded_lines"], summary["excluded_units"], summary["not_reportable"]) == (2, 2, 1)
    [file] = (tmp_path / "out").glob("*.csv")
    assert [(r["returnOrderId"], r["clientSku"], r["quantity"]) for r in read_report(file.read_text())] == [("RET-OK", "A", "2")]
    log = capsys.readouterr().out  # the task log
    assert "SKU Z is not on the forward invoice INV-FN1" in log and "forward order FN-GONE is not in the ledger" in log
    states = {r["return_order_code"]: r["state"] for r in ledger.rms_returns()}
    assert states == {"RET-OK": RMS_REPORTED, "RET-LOST": RMS_NOT_REPORTABLE, "RET-LATER": RMS_TO_REPORT}
    assert "not in the ledger" in ledger.get_rms_return("RET-LOST")["reason"]
    assert summary["waiting"] == 1


def test_a_failed_write_reports_nothing_and_the_next_run_reports_it(ledger, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", str(blocker))
    _order(ledger, "FN1", {"A": 1})
    _rms_return(ledger, "RET-1", "FN1", {"A": 1})
    with pytest.raises(OSError):
        _operator().execute(context={})
    assert ledger.get_rms_return("RET-1")["state"] == RMS_TO_REPORT and ledger.rms_reports() == []

    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", str(tmp_path / "ok"))
    summary = _operator().execute(context={})
    assert summary["file"].endswith("_001.csv") and ledger.get_rms_return("RET-1")["state"] == RMS_REPORTED


def test_reports_go_to_object_storage_and_a_lost_one_is_regenerated(ledger, tmp_path, monkeypatch):
    folder = tmp_path / "bucket" / "rms"
    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", f"file://{folder}")
    _order(ledger, "FN1", {"A": 1})
    _rms_return(ledger, "RET-1", "FN1", {"A": 1})
    first = _operator().execute(context={})
    written = (folder / first["file"]).read_bytes()
    assert first["location"].startswith("file://") and read_report(written.decode())[0]["returnOrderId"] == "RET-1"

    _order(ledger, "FN2", {"A": 1})
    _rms_return(ledger, "RET-2", "FN2", {"A": 1})
    second = _operator().execute(context={})
    assert second["file"].endswith("_002.csv") and [r["returnOrderId"] for r in read_report((folder / second["file"]).read_text())] == ["RET-2"]

    (folder / first["file"]).unlink()
    again = _operator(regenerate=first["file"]).execute(context={})
    assert (folder / first["file"]).read_bytes() == written and again["file"] is None
    with pytest.raises(AirflowFailException, match="no report named 'nope.csv'"):
        _operator(regenerate="nope.csv").execute(context={})


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_return_is_never_in_two_reports(backend, request):
    url = request.getfixturevalue("sqlite_ledger_url" if backend == "sqlite" else "pg_ledger_url")
    ledger = Ledger(url)
    for code in ("RET-1", "RET-2"):
        ledger.register_rms_return(return_order_code=code, order_code="FN1")
    common = {"report_date": "2026-12-03", "location": "-", "row_count": 1, "unit_count": 1, "content": "x"}
    ledger.record_rms_report(file_name="r1.csv", sequence=1, return_order_codes=["RET-1"], **common)
    # A second report carrying RET-1 again (a run that read the same returns) is refused whole.
    with pytest.raises(ConcurrentReportError, match="1 of the 2 returns"):
        with ledger.transaction():
            ledger.record_rms_report(file_name="r2.csv", sequence=2, return_order_codes=["RET-1", "RET-2"], **common)
    assert ledger.get_rms_report("r2.csv") is None and ledger.get_rms_return("RET-2")["state"] == RMS_TO_REPORT
    with pytest.raises(ConcurrentReportError, match="exists already"):
        ledger.record_rms_report(file_name="r3.csv", sequence=1, return_order_codes=["RET-2"], **common)
    assert ledger.next_rms_sequence("2026-12-03") == 2
    # Settling: only reported returns, the same number again is harmless, another number is a conflict.
    assert ledger.settle_rms_return("RET-2", "CN/2") == "not_reported"
    assert ledger.settle_rms_return("RET-1", "CN/1") == "settled"
    assert ledger.settle_rms_return("RET-1", "CN/1") == "already_settled"
    assert ledger.settle_rms_return("RET-1", "CN/X") == "conflict"
    assert ledger.settle_rms_return("RET-9", "CN/9") == "unknown"


def test_refused_settlements_fail_the_task_after_recording_the_good_ones(ledger, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_ERP_RMS_REPORT_DIR", str(tmp_path / "out"))
    for code in ("FN1", "FN2", "FN3"):
        _order(ledger, code, {"A": 1})
        _rms_return(ledger, f"RET-{code}", code, {"A": 1})
    _operator().execute(context={})
    assert _operator(settle="RET-FN1=CN/1").execute(context={})["settled"] == 1
    # Another number for a settled return, an unknown return, an unreadable CSV path: refused, named, run red;
    # the good pair of the same import is still recorded.
    with pytest.raises(AirflowFailException) as refused:
        _operator(settle="RET-FN1=CN/9, RET-NOPE=CN/7, RET-FN2=CN/2").execute(context={})
    assert "RET-FN1=CN/9: it is settled with credit note CN/1 already" in str(refused.value)
    assert "RET-NOPE=CN/7: no return on the RMS path has this code" in str(refused.value)
    assert ledger.get_rms_return("RET-FN2")["rms_credit_note_number"] == "CN/2"
    assert ledger.get_rms_return("RET-FN1")["rms_credit_note_number"] == "CN/1"
    with pytest.raises(AirflowFailException, match="settle: .*No such file"):
        _operator(settle=str(tmp_path / "missing.csv")).execute(context={})
    assert [r["return_order_code"] for r in ledger.rms_returns(state=RMS_REPORTED)] == ["RET-FN3"]
