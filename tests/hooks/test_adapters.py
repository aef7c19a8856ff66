"""The ERP connection's type picks the adapter; operators never name one (issue 11, "chosen by connection")."""

from __future__ import annotations

import json

import pytest

from omni_erp.hooks.adapters import ADAPTERS, erp_adapter
from omni_erp.hooks.base import ConnectionConfigError
from omni_erp.hooks.erp import ErpHook
from omni_erp.hooks.erpnext import ErpNextHook
from omni_erp.hooks.tally import TallyHook
from omni_erp.ledger import Ledger
from omni_erp.states import ORDER_BOOKED
from tests.conftest import Sandbox
from tests.flows import book, create_posting

API_KEY, API_SECRET = "erpnext-test-key", "erpnext-test-secret-s3cr3t"


def _connection(monkeypatch, conn_type: str, host: str = "http://127.0.0.1:9") -> None:
    conn = {"conn_type": conn_type, "host": host, "login": API_KEY, "password": API_SECRET}
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps(conn))


@pytest.mark.parametrize(
    ("conn_type", "adapter"),
    [("http", ErpHook), ("erp_rest", ErpHook), ("erpnext", ErpNextHook), ("ERPNext", ErpNextHook), ("tally", TallyHook)],
    ids=["http", "erp_rest", "erpnext", "erpnext-any-case", "tally"],
)
def test_the_connection_type_picks_the_adapter(monkeypatch, conn_type, adapter):
    _connection(monkeypatch, conn_type)
    assert type(erp_adapter("erp_default")) is adapter


def test_an_unknown_connection_type_is_a_configuration_error_naming_the_known_ones(monkeypatch):
    _connection(monkeypatch, "sap")
    with pytest.raises(ConnectionConfigError, match="no ERP adapter for connection type 'sap'") as error:
        erp_adapter("erp_default")
    assert all(name in str(error.value) for name in ADAPTERS)


def test_an_undefined_connection_keeps_the_generic_adapter_so_its_first_call_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_ERP_DEFAULT", raising=False)
    assert type(erp_adapter("erp_default")) is ErpHook


@pytest.fixture()
def erpnext_site(monkeypatch, fast_retries):
    from omni_erp.sandbox.erpnext import create_erpnext_sandbox
    from omni_erp.sandbox.serve import serve_in_thread

    with serve_in_thread(create_erpnext_sandbox(api_key=API_KEY, api_secret=API_SECRET, invoice_delay_s=0.05)) as server:
        _connection(monkeypatch, "erpnext", server.url)
        yield Sandbox(server.url)


def test_the_f1_operators_book_through_erpnext_when_the_connection_says_so(erpnext_site, ledger_path):
    ledger = Ledger.sqlite(ledger_path)
    book(ledger, create_posting(1, "FN0000000001"), create_posting(2, "FN0000000002"))
    orders = erpnext_site.state()["sales_orders"]
    assert sorted(o["omni_order_code"] for o in orders) == ["FN0000000001", "FN0000000002"]
    for code in ("FN0000000001", "FN0000000002"):
        order = ledger.get_order(code)
        assert order["state"] == ORDER_BOOKED and order["erp_sales_order_id"].startswith("SAL-ORD-")


def test_the_f1_operators_book_through_tally_when_the_connection_says_so(monkeypatch, fast_retries, ledger_path):
    from omni_erp.sandbox.serve import serve_in_thread
    from omni_erp.sandbox.tally import create_tally_sandbox

    with serve_in_thread(create_tally_sandbox(company="Omni Demo Co", invoice_delay_s=3600)) as server:
        conn = {"conn_type": "tally", "host": server.url, "login": "Omni Demo Co"}
        monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps(conn))
        ledger = Ledger.sqlite(ledger_path)
        book(ledger, create_posting(1, "FN0000000001"))
        vouchers = Sandbox(server.url).state()["vouchers"]
    assert [(v["voucherType"], v["orderCode"]) for v in vouchers] == [("Sales Order", "FN0000000001")]
    assert ledger.get_order("FN0000000001")["state"] == ORDER_BOOKED
