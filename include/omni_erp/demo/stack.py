"""The demo's processes and settings: sandboxes and inbox on 127.0.0.1, Airflow home and ledger under var/demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omni_erp.sandbox.serve import free_port

INBOX_KEY = "demo-inbox-key"
ERP_TOKEN = "demo-erp-token"
OMNI_USER, OMNI_PASSWORD = "demo-omni-user", "demo-omni-pass"



class Stack:
    """Starts the sandboxes and the standalone inbox as processes and gives the demo their controls.

    Must be entered before airflow is imported: it sets AIRFLOW_HOME and the connections.
    """

    def __init__(self, work: Path, dags: Path, seed: int) -> None:
        self.work, self.dags, self.seed = work, dags, seed
        self.erp_port, self.omni_port, self.inbox_port = free_port(), free_port(), free_port()
        self.erp_url = f"http://127.0.0.1:{self.erp_port}"
        self.omni_url = f"http://127.0.0.1:{self.omni_port}"
        self.inbox_url = f"http://127.0.0.1:{self.inbox_port}/omni"
        self._stack = ExitStack()

    def __enter__(self) -> Stack:
        self._environment()
        ready = self.work / "sandboxes.json"
        self._start(
            "sandboxes",
            ["-m", "omni_erp.sandbox", "--erp-port", str(self.erp_port), "--omni-port", str(self.omni_port),
             "--erp-token", ERP_TOKEN, "--omni-user", OMNI_USER, "--omni-password", OMNI_PASSWORD,
             "--invoice-delay-s", "0.1", "--seed", str(self.seed), "--ready-file", str(ready)],
        )
        ledger_url = f"sqlite:///{self.work / 'ledger.sqlite'}"
        self._start("inbox", ["-m", "omni_erp.inbox", "--port", str(self.inbox_port), "--ledger-url", ledger_url])
        self._wait_until(ready.exists, "the sandboxes")
        self._wait_until(lambda: self._get(f"{self.inbox_url}/health").status_code == 200, "the inbox")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # --- controls ---------------------------------------------------------------------------

    def erp_config(self, **knobs: Any) -> None:
        self._post(f"{self.erp_url}/_sandbox/config", knobs)

    def omni_config(self, **knobs: Any) -> None:
        self._post(f"{self.omni_url}/_sandbox/config", knobs)

    def erp_state(self) -> dict[str, Any]:
        return self._get(f"{self.erp_url}/_sandbox/state").json()

    def omni_state(self) -> dict[str, Any]:
        return self._get(f"{self.omni_url}/_sandbox/state").json()

    def shift_clock(self, seconds: float) -> None:
        """Move our clock and the ERP's together (the 24 h IRN window), instead of waiting a day."""
        os.environ["OMNI_ERP_CLOCK_OFFSET_S"] = str(seconds)
        self.erp_config(clock_offset_s=seconds)

    # --- plumbing ---------------------------------------------------------------------------

    def _environment(self) -> None:
        home = self.work / "airflow"
        home.mkdir(parents=True, exist_ok=True)
        os.environ.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.dags.parent / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "OMNI_ERP_LEDGER_PATH": str(self.work / "ledger.sqlite"),
                # Production policy shape with demo-sized waits: retries are visible but quick.
                "OMNI_ERP_HTTP_BASE_DELAY_S": "0.2",
                "OMNI_ERP_HTTP_MAX_DELAY_S": "2",
                "OMNI_ERP_HTTP_READ_TIMEOUT_S": "2",
                "AIRFLOW_CONN_ERP_DEFAULT": json.dumps(
                    {"conn_type": "http", "host": self.erp_url, "password": ERP_TOKEN}
                ),
                "AIRFLOW_CONN_OMNI_DEFAULT": json.dumps(
                    {"conn_type": "http", "host": self.omni_url, "login": OMNI_USER, "password": OMNI_PASSWORD}
                ),
                "AIRFLOW_CONN_OMNI_INBOX": json.dumps({"conn_type": "http", "password": INBOX_KEY}),
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        os.environ.pop("OMNI_ERP_CLOCK_OFFSET_S", None)

    def _start(self, name: str, args: list[str]) -> None:
        log_file = open(self.work / f"{name}.log", "w")  # noqa: SIM115 - closed by the stack
        self._stack.callback(log_file.close)
        proc = subprocess.Popen([sys.executable, *args], stdout=log_file, stderr=subprocess.STDOUT)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

        self._stack.callback(stop)

    def _wait_until(self, check: Any, what: str, timeout_s: float = 30) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(0.1)
        raise SystemExit(f"demo: {what} did not start within {timeout_s:.0f} s (see {self.work}/*.log)")

    @staticmethod
    def _get(url: str) -> Any:
        import requests

        return requests.get(url, timeout=10)

    @staticmethod
    def _post(url: str, body: dict[str, Any]) -> None:
        import requests

        requests.post(url, json=body, timeout=10).raise_for_status()
