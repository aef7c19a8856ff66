"""``python -m omni_erp.sandbox --erp <kind>``: the ERP port plays the chosen ERP, with the credentials given."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

TALLY_EXPORT = (
    "<ENVELOPE><HEADER><VERSION>1</VERSION><TALLYREQUEST>Export</TALLYREQUEST><TYPE>Collection</TYPE><ID>All</ID></HEADER>"
    "<BODY><DESC><STATICVARIABLES><SVCURRENTCOMPANY>{company}</SVCURRENTCOMPANY></STATICVARIABLES><TDL><TDLMESSAGE>"
    '<COLLECTION NAME="All"><TYPE>Voucher</TYPE></COLLECTION></TDLMESSAGE></TDL></DESC></BODY></ENVELOPE>'
)


def _ask_erp(kind: str, url: str) -> tuple[int, str]:
    if kind == "erpnext":
        right = requests.get(url + "/api/resource/Sales%20Order", headers={"Authorization": "token K:S"}, timeout=5)
        wrong = requests.get(url + "/api/resource/Sales%20Order", headers={"Authorization": "token K:x"}, timeout=5)
        assert wrong.status_code == 401
        return right.status_code, right.text
    right = requests.post(url + "/", data=TALLY_EXPORT.format(company="CLI Co").encode(), timeout=5)
    wrong = requests.post(url + "/", data=TALLY_EXPORT.format(company="Other Co").encode(), timeout=5)
    assert "Could not set 'SVCurrentCompany'" in wrong.text
    return right.status_code, right.text


@pytest.mark.parametrize(("kind", "login", "answer"), [("erpnext", "K", '{"data":[]}'), ("tally", "CLI Co", "<COLLECTION>")])
def test_the_cli_serves_the_chosen_erp(kind: str, login: str, answer: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "omni_erp.sandbox", "--erp", kind, "--erp-login", login, "--erp-token", "S",
         "--erp-port", "0", "--omni-port", "0", "--invoice-delay-s", "0", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "sandboxes did not become ready"
            time.sleep(0.05)
        status, text = _ask_erp(kind, json.loads(ready.read_text())["erp_url"])
        assert status == 200 and answer in text.replace(" ", "")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
