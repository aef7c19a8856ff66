"""The processes and settings of ``make demo`` and ``make chaos``: sandboxes and inbox on 127.0.0.1, the Airflow
home under the work directory, and the ledger (embedded SQLite there, or a PostgreSQL URL)."""

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
TALLY_PDF_PATH = "/_sandbox/pdf"
ERP_LOGIN = {"erpnext": "demo-erpnext-key", "tally": "Omni Demo Co"}  # ERPNext API key; Tally's loaded company
OMNI_USER, OMNI_PASSWORD = "demo-omni-user", "demo-omni-pass"

# Production policy shape with demo-sized waits: retries are visible but quick.
DEMO_HTTP_POLICY = {
    "OMNI_ERP_HTTP_BASE_DELAY_S": "0.2",
    "OMNI_ERP_HTTP_MAX_DELAY_S": "2",
    "OMNI_ERP_HTTP_READ_TIMEOUT_S": "2",
}


class Stack:
    """Starts the sandboxes and the standalone inbox as processes and gives the demo their controls.

    Must be entered before airflow is imported: it sets AIRFLOW_HOME and the connections.

    :param work: directory for the Airflow home, logs and the embedded ledger.
    :param dags: the dags folder.
    :param seed: seed of the sandboxes' fault draws.
    :param ledger_url: SQLAlchemy URL of a PostgreSQL ledger (``omni_erp_ledger`` points at it); None = an
        embedded SQLite ledger under ``work``.
    :param http_policy: ``OMNI_ERP_HTTP_*`` settings of the hooks.
    :param invoice_delay_s: seconds the ERP sandbox takes to e-invoice.
    :param erp: which ERP sandbox plays the ERP (``generic``, ``erpnext`` or ``tally``); ``erp_default`` gets
        that ERP's connection type, so the DAGs use its adapter.
    """

    def __init__(
        self,
        work: Path,
        dags: Path,
        seed: int,
        *,
        ledger_url: str | None = None,
        http_policy: dict[str, str] | None = None,
        invoice_delay_s: float = 0.1,
        erp: str = "generic",
    ) -> None:
        self.erp = erp
        self.work, self.dags, self.seed = work, dags, seed
        self.ledger_url = ledger_url or f"sqlite:///{work / 'ledger.sqlite'}"
        self.http_policy = DEMO_HTTP_POLICY if http_policy is None else http_policy
        self.invoice_delay_s = invoice_delay_s
        self.erp_port, self.omni_port, self.inbox_port = free_port(), free_port(), free_port()
        self.erp_url = f"http://127.0.0.1:{self.erp_port}"
        self.omni_url = f"http://127.0.0.1:{self.omni_port}"
        self.inbox_url = f"http://127.0.0.1:{self.inbox_port}/omni"
        self._stack = ExitStack()

    def __enter__(self) -> Stack:
        self.prepare_environment()
        ready = self.work / "sandboxes.json"
        self._start(
            "sandboxes",
            ["-m", "omni_erp.sandbox", "--erp", self.erp, *self._erp_login_args(), "--erp-port", str(self.erp_port), "--omni-port", str(self.omni_port),
             "--erp-token", ERP_TOKEN, "--omni-user", OMNI_USER, "--omni-password", OMNI_PASSWORD,
             "--invoice-delay-s", str(self.invoice_delay_s), "--seed", str(self.seed), "--ready-file", str(ready)],
        )
        self._start("inbox", ["-m", "omni_erp.inbox", "--port", str(self.inbox_port), "--ledger-url", self.ledger_url])
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

    def erp_faults(self) -> dict[str, Any]:
        """Request counts, injected faults and stalled calls of the ERP (cheap: no documents)."""
        return self._get(f"{self.erp_url}/_sandbox/faults").json()

    def omni_faults(self) -> dict[str, Any]:
        return self._get(f"{self.omni_url}/_sandbox/faults").json()

    def release_stalls(self) -> None:
        """Let every call the sandboxes hold (``stall_next``) answer now."""
        for url in (self.erp_url, self.omni_url):
            self._post(f"{url}/_sandbox/release", {})

    def shift_clock(self, seconds: float) -> None:
        """Move our clock and the ERP's together (the 24 h IRN window), instead of waiting a day."""
        os.environ["OMNI_ERP_CLOCK_OFFSET_S"] = str(seconds)
        self.erp_config(clock_offset_s=seconds)

    # --- plumbing ---------------------------------------------------------------------------

    def prepare_environment(self) -> None:
        """Set AIRFLOW_HOME, the connections and the HTTP policy in ``os.environ`` (``__enter__`` does it too;
        processes started after this call inherit it)."""
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
                **self.http_policy,
                "AIRFLOW_CONN_ERP_DEFAULT": json.dumps(self.erp_connection()),
                "AIRFLOW_CONN_OMNI_DEFAULT": json.dumps(
                    {"conn_type": "http", "host": self.omni_url, "login": OMNI_USER, "password": OMNI_PASSWORD}
                ),
                "AIRFLOW_CONN_OMNI_INBOX": json.dumps({"conn_type": "http", "password": INBOX_KEY}),
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        os.environ.pop("OMNI_ERP_CLOCK_OFFSET_S", None)
        if self.ledger_url.startswith("sqlite"):
            os.environ.pop("AIRFLOW_CONN_OMNI_ERP_LEDGER", None)
        else:
            os.environ["AIRFLOW_CONN_OMNI_ERP_LEDGER"] = json.dumps(_postgres_connection(self.ledger_url))

    def erp_connection(self) -> dict[str, Any]:
        """``erp_default`` in Airflow's JSON form: its conn_type picks the adapter (omni_erp.hooks.adapters)."""
        if self.erp == "erpnext":
            return {"conn_type": "erpnext", "host": self.erp_url, "login": ERP_LOGIN["erpnext"], "password": ERP_TOKEN}
        if self.erp == "tally":
            # TallyPrime serves no PDFs over XML; the sandbox stands in for a folder of printed PDFs the seller
            # publishes on the Tally host, so Omni gets a document URL as with the other ERPs.
            return {"conn_type": "tally", "host": self.erp_url, "login": ERP_LOGIN["tally"],
                    "extra": {"pdf_path": TALLY_PDF_PATH}}
        return {"conn_type": "http", "host": self.erp_url, "password": ERP_TOKEN}

    def _erp_login_args(self) -> list[str]:
        return ["--erp-login", ERP_LOGIN[self.erp]] if self.erp in ERP_LOGIN else []

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


def _postgres_connection(url: str) -> dict[str, Any]:
    """The ``omni_erp_ledger`` connection (Airflow's JSON form) for a PostgreSQL SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return {
        "conn_type": "postgres",
        "host": parsed.host,
        "port": parsed.port,
        "login": parsed.username,
        "password": parsed.password,
        "schema": parsed.database,
    }
