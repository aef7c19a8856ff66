"""Connection types that configure themselves (issue 10.2): the provider entry point, the forms, and each
hook's ``test_connection`` against the sandboxes on 127.0.0.1 - called the way Airflow's "Test" button calls it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from omni_erp.sandbox.serve import serve_in_thread
from tests.conftest import ERP_TOKEN, OMNI_PASSWORD, OMNI_USER

OUR_TYPES = {
    "omni": "omni_erp.hooks.omni.OmniHook",
    "erp_rest": "omni_erp.hooks.erp.ErpHook",
    "erpnext": "omni_erp.hooks.erpnext.ErpNextHook",
    "tally": "omni_erp.hooks.tally.TallyHook",
    "omni_inbox": "omni_erp.hooks.inbox.OmniInboxHook",
}
ERPNEXT_KEY, ERPNEXT_SECRET = "erpnext-test-key", "erpnext-test-secret-9f8e7d"


def airflow_test(conn_type: str, **fields: object) -> tuple[bool, str]:
    """What the API server's POST /connections/test does: the connection under a transient id, then
    ``Connection.test_connection()`` (hook looked up by conn_type in the ProvidersManager)."""
    # The API server's own class, as its route uses it.
    from airflow.models import Connection

    conn = Connection(  # noqa: AIR311
        conn_id="ui_test_probe", conn_type=conn_type, **fields)
    os.environ["AIRFLOW_CONN_UI_TEST_PROBE"] = conn.get_uri()
    try:
        return conn.test_connection()
    finally:
        os.environ.pop("AIRFLOW_CONN_UI_TEST_PROBE", None)


def test_installed_package_registers_the_provider_and_its_connection_types():
    """``airflow providers list`` in a fresh process (what a user runs after ``make venv``)."""
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    listed = subprocess.run([airflow, "providers", "list", "-o", "json"], capture_output=True, text=True, timeout=120, check=True)
    providers = {p["package_name"]: p for p in json.loads(listed.stdout)}
    assert "omni-erp" in providers

    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    for conn_type, hook_class in OUR_TYPES.items():
        hook = manager.hooks[conn_type]
        assert hook is not None, conn_type
        assert (hook.hook_class_name, hook.package_name, hook.connection_testable) == (hook_class, "omni-erp", True)
    omni = manager.field_behaviours["omni"]
    assert omni["relabeling"] == {"host": "Base URL", "login": "authUsername", "password": "authPassword"}
    assert "assure-proxy.increff.com" in omni["placeholders"]["host"] and "staging-oltp.increff.com" in omni["placeholders"]["host"]
    assert manager.field_behaviours["erp_rest"]["relabeling"] == {"host": "Base URL", "password": "API token"}
    assert manager.field_behaviours["omni_inbox"]["relabeling"] == {"password": "API key (X-Api-Key)"}
    # the extra is hidden wherever the http provider would turn its keys into request headers
    for conn_type in ("omni", "erp_rest", "erpnext", "tally"):
        assert "extra" in manager.field_behaviours[conn_type]["hidden_fields"], conn_type
    widgets = manager.connection_form_widgets
    assert widgets["extra__omni_inbox__token_secret"].is_sensitive
    assert widgets["extra__omni_inbox__credential_password"].is_sensitive
    assert widgets["extra__tally__pdf_path"].field["schema"]["title"] == "PDF path"
    assert {"omni_erp.notifiers.RunFailedNotifier", "omni_erp.notifiers.DeadlineMissedNotifier"} <= set(manager.notification)


def test_omni_connection_test_accepts_good_credentials_and_names_bad_ones(omni):
    ok, message = airflow_test("omni", host=omni.url, login=OMNI_USER, password=OMNI_PASSWORD)
    assert ok, message
    assert "accepted the credentials" in message
    assert omni.state()["invoices"] == []  # the probe created nothing

    ok, message = airflow_test("omni", host=omni.url, login=OMNI_USER, password="wrong-password-123")
    assert not ok and "refused the credentials (HTTP 401)" in message
    assert "wrong-password-123" not in message


def test_erp_connection_test_for_the_generic_adapter(erp):
    ok, message = airflow_test("erp_rest", host=erp.url, password=ERP_TOKEN)
    assert ok, message
    ok, message = airflow_test("erp_rest", host=erp.url, password="not-the-token-42")
    assert not ok and "HTTP 401" in message and "not-the-token-42" not in message


def test_erp_connection_test_for_erpnext_and_tally():
    from omni_erp.sandbox.erpnext import create_erpnext_sandbox
    from omni_erp.sandbox.tally import create_tally_sandbox

    with serve_in_thread(create_erpnext_sandbox(api_key=ERPNEXT_KEY, api_secret=ERPNEXT_SECRET)) as site:
        assert airflow_test("erpnext", host=site.url, login=ERPNEXT_KEY, password=ERPNEXT_SECRET)[0]
        ok, message = airflow_test("erpnext", host=site.url, login=ERPNEXT_KEY, password="bad-secret-777")
        assert not ok and "401" in message and "bad-secret-777" not in message
    with serve_in_thread(create_tally_sandbox(company="Test Co")) as tally:
        ok, message = airflow_test("tally", host=tally.url, login="Test Co")
        assert ok, message
        ok, message = airflow_test("tally", host=tally.url, login="Another Co")
        assert not ok and "Another Co" in message


def test_an_unreachable_system_fails_fast_with_a_plain_message():
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    ok, message = airflow_test("erp_rest", host=f"http://127.0.0.1:{port}", password="some-token-xyz")
    assert not ok and "unreachable" in message and "some-token-xyz" not in message
    assert time.monotonic() - started < 5  # one attempt, no backoff: a person is waiting


@pytest.mark.parametrize(
    ("extra", "password", "ok", "says"),
    [
        ({}, None, False, "nothing configured"),
        ({"credential_username": "omni"}, None, False, "credential_password, token_secret"),
        ({"credential_username": "omni", "credential_password": "p", "token_secret": "short"}, None, False, "at least 32"),
        ({}, "k" * 40, True, "static API key set (40 characters"),
        ({"credential_username": "omni", "credential_password": "p", "token_secret": "s" * 32, "token_lifetime_s": 600},
         None, True, "dynamic flow on (tokens live 600 s)"),
    ],
)
def test_inbox_connection_test_checks_what_the_inbox_will_apply(extra, password, ok, says):
    status, message = airflow_test("omni_inbox", password=password, extra=json.dumps(extra))
    assert (status, says in message) == (ok, True), message
    for secret in ("k" * 40, "s" * 32):
        assert secret not in message
