"""The connection form's "Test" through a real API server (issue 10.2): ``POST /api/v2/connections/test`` imports
this package's hooks by connection type and shows their verdict. Only the API server runs (``AirflowStack``).

Slow (the API server takes 30-170 s to start on a busy 2-core machine): marked ``slow``.
"""

from __future__ import annotations

import pytest
import requests

from omni_erp.devtools.airflow_stack import AirflowStack
from omni_erp.sandbox.erp import create_erp_sandbox
from omni_erp.sandbox.omni import create_omni_sandbox
from omni_erp.sandbox.serve import serve_in_thread

pytestmark = pytest.mark.slow


def test_the_api_servers_test_button_runs_our_hooks(tmp_path):
    with serve_in_thread(create_omni_sandbox(username="omni-user", password="omni-pass-1")) as omni, \
            serve_in_thread(create_erp_sandbox(token="erp-token-1")) as erp:
        stored = {
            "omni_default": {"conn_type": "omni", "host": omni.url, "login": "omni-user", "password": "omni-pass-1"},
            "erp_default": {"conn_type": "erp_rest", "host": erp.url, "password": "erp-token-1"},
        }
        config = {"core": {"test_connection": "Enabled", "simple_auth_manager_all_admins": "True"}}
        with AirflowStack(tmp_path / "home", components=(), connections=stored, config=config, start_timeout_s=600) as stack:

            def test(body: dict) -> dict:
                response = requests.post(f"{stack.api_url}/api/v2/connections/test", json=body, timeout=120)
                response.raise_for_status()
                return response.json()

            # A stored connection: the form sends no secret back, the API server merges the stored one.
            omni_ok = test({"connection_id": "omni_default", "conn_type": "omni", "host": omni.url})
            erp_ok = test({"connection_id": "erp_default", "conn_type": "erp_rest", "host": erp.url})
            # A new connection typed into the form with a wrong password.
            omni_bad = test({"connection_id": "new", "conn_type": "omni", "host": omni.url, "login": "omni-user",
                             "password": "typo-in-the-password"})
        invoices = requests.get(f"{omni.url}/_sandbox/state", timeout=10).json()["invoices"]

    assert omni_ok == {"status": True,
                       "message": "Increff Omni accepted the credentials (the empty probe document was refused, as expected)"}
    assert erp_ok == {"status": True, "message": "the ERP accepted the token and answered the e-invoice feed"}
    assert omni_bad["status"] is False and "refused the credentials (HTTP 401)" in omni_bad["message"]
    assert "typo-in-the-password" not in omni_bad["message"]
    assert invoices == []  # the probes created nothing in Omni
