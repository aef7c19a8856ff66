"""``make airflow`` end to end (issue 10.1): start it, see the API answer, the connections test green through the
real API server, orders from the trickle booked by real runs, then stop it and find nothing left running.

Slow (``airflow standalone`` needs about a minute to be healthy on two cores): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from omni_erp.sandbox.serve import free_port

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 700
RUNS_TIMEOUT_S = 400


def processes_using(home: Path) -> list[str]:
    """Command lines of the processes whose AIRFLOW_HOME is ``home`` (started by make airflow)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            if f"AIRFLOW_HOME={home.resolve()}".encode() in environ:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_make_airflow_starts_a_working_ui_with_live_runs_and_stops_cleanly(tmp_path):
    home = tmp_path / "airflow"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OMNI_ERP_LEDGER"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "omni_erp.devtools.standalone", "--home", str(home), "--port", str(port), "--tick-s", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()  # type: ignore[union-attr]

    def wait_for(pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert process.poll() is None, "make airflow exited early:\n" + "".join(output)
                continue
            output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "".join(output))

    try:
        ui = wait_for(r"UI: (http://127\.0\.0\.1:\d+)  user: admin  password: (\S+)", READY_TIMEOUT_S)
        base_url, password = ui.group(1), ui.group(2)
        assert base_url == f"http://127.0.0.1:{port}"
        assert requests.get(f"{base_url}/api/v2/monitor/health", timeout=10).json()["scheduler"]["status"] == "healthy"
        token = requests.post(f"{base_url}/auth/token", json={"username": "admin", "password": password}, timeout=10).json()
        auth = {"Authorization": f"Bearer {token['access_token']}"}

        # The connection form's "Test", through the API server, on the connections make airflow created.
        for conn_id in ("omni_default", "erp_default", "omni_inbox"):
            stored = requests.get(f"{base_url}/api/v2/connections/{conn_id}", headers=auth, timeout=10).json()
            body = {"connection_id": conn_id, "conn_type": stored["conn_type"], "host": stored.get("host")}
            tested = requests.post(f"{base_url}/api/v2/connections/test", json=body, headers=auth, timeout=30).json()
            assert tested["status"] is True, (conn_id, tested)

        # Orders from the trickle are booked by real runs of the order flow, and such a run ends green.
        ledger = home / "omni_erp_ledger.sqlite"
        deadline = time.monotonic() + RUNS_TIMEOUT_S
        booked = green = 0
        while time.monotonic() < deadline and not (booked and green):
            time.sleep(3)
            if ledger.exists():
                with sqlite3.connect(ledger) as db:
                    booked = db.execute("SELECT count(*) FROM ajio_order WHERE erp_sales_order_id IS NOT NULL").fetchone()[0]
            green = requests.get(f"{base_url}/api/v2/dags/omni_order_posting/dagRuns", params={"state": "success"},
                                 headers=auth, timeout=60).json()["total_entries"]
        assert booked and green, f"booked {booked}, successful runs {green}:\n" + "".join(output)
        paused = requests.get(f"{base_url}/api/v2/dags", params={"paused": True}, headers=auth, timeout=10).json()
        assert paused["total_entries"] == 0, [d["dag_id"] for d in paused["dags"]]
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, "".join(output)
    time.sleep(1)
    assert processes_using(home) == []
    assert json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"] == password
