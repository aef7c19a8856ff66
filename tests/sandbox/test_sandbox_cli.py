"""serve_in_thread serves and frees its port; ``python -m omni_erp.sandbox`` runs both sandboxes until SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from fastapi import FastAPI

from omni_erp.sandbox.serve import serve_in_thread


def hello_app() -> FastAPI:
    app = FastAPI()
    app.get("/hello")(lambda: {"hello": "world"})
    return app


def test_serve_in_thread_answers_on_the_bound_port_until_stopped() -> None:
    with serve_in_thread(hello_app()) as handle:
        assert handle.url.startswith("http://127.0.0.1:") and not handle.url.endswith(":0")
        assert requests.get(handle.url + "/hello", timeout=5).json() == {"hello": "world"}

    assert not handle.thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(handle.url + "/hello", timeout=2)


def test_serve_in_thread_fails_loudly_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        with pytest.raises(RuntimeError, match="startup"):
            serve_in_thread(hello_app(), port=taken.getsockname()[1])


def test_cli_runs_both_sandboxes_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "omni_erp.sandbox", "--erp-port", "0", "--omni-port", "0", "--erp-token", "cli-token",
         "--omni-user", "u", "--omni-password", "p", "--invoice-delay-s", "0", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "sandboxes did not become ready"
            time.sleep(0.05)
        urls = json.loads(ready.read_text())

        erp = requests.get(
            urls["erp_url"] + "/api/v1/e-invoices", headers={"Authorization": "Bearer cli-token"}, timeout=5
        )
        omni = requests.post(
            urls["omni_url"] + "/ajio-vms/b2bInvoice/posting",
            json={},
            headers={"authUsername": "u", "authPassword": "p"},
            timeout=5,
        )
        assert erp.status_code == 200
        assert omni.status_code == 400  # authenticated, then refused as BAD_DATA

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert not ready.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
