"""``python -m omni_erp.inbox --log-level`` holds in a real server process, after Airflow configured logging.

Importing Airflow (the connection lookups) used to replace the level ``--log-level`` had set, so every
accepted posting was logged at INFO even at ``--log-level warning``. Refusals are logged at WARNING, so
they stay visible there.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from omni_erp.ledger import Ledger
from omni_erp.ledger.engine import sqlite_url
from omni_erp.sandbox.serve import free_port
from tests.inbox.conftest import API_KEY, FIXTURES

REPO = Path(__file__).resolve().parents[2]


def _serve_and_post(tmp_path: Path, *options: str) -> tuple[str, str]:
    """Run the inbox CLI, post one valid and one malformed posting, stop it; its output and the ledger URL."""
    port, ledger_url = free_port(), sqlite_url(tmp_path / "ledger.sqlite")
    env = {**os.environ, "AIRFLOW_CONN_OMNI_INBOX": json.dumps({"conn_type": "generic", "password": API_KEY})}
    env.pop("AIRFLOW__LOGGING__LOGGING_LEVEL", None)  # Airflow's own default (INFO), as deployed
    command = [sys.executable, "-m", "omni_erp.inbox", "--port", str(port), "--ledger-url", ledger_url, *options]
    server = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}/omni"
        _wait_until_up(f"{base}/health", server)
        headers = {"Content-Type": "application/json", "X-Api-Key": API_KEY}
        accepted = requests.post(f"{base}/postings", data=(FIXTURES / "outward_order_create.json").read_bytes(),
                                 headers=headers, timeout=60)
        refused = requests.post(f"{base}/postings", data=b'{"messageId": ', headers=headers, timeout=60)
        assert (accepted.status_code, refused.status_code) == (200, 400)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    return output, ledger_url


def _wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "the inbox exited"
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def _posting_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "inbox posting messageId=" in line]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_at_warning_accepted_postings_are_not_logged_and_refusals_are(tmp_path, workers):
    output, ledger_url = _serve_and_post(tmp_path, "--log-level", "warning", "--workers", workers)

    [refusal] = _posting_lines(output)
    assert "outcome=rejected status=400" in refusal and "warning" in refusal.lower()
    assert len(Ledger(ledger_url).postings()) == 1  # the accepted posting is in the ledger, not the log


def test_accepted_postings_log_at_info_and_refusals_at_warning(inbox_app, create_posting, caplog):
    caplog.set_level(logging.INFO, logger="omni_erp")

    assert inbox_app.post(create_posting).status_code == 200
    assert inbox_app.post('{"messageId": ').status_code == 400

    levels = {record.levelname: record.getMessage() for record in caplog.records if "inbox posting" in record.getMessage()}
    assert set(levels) == {"INFO", "WARNING"}
    assert "outcome=stored status=200" in levels["INFO"] and "outcome=rejected status=400" in levels["WARNING"]
