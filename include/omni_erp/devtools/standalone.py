"""``make airflow``: the whole package on a real Airflow in one command, with live runs within a minute.

What it starts (all on 127.0.0.1, all stopped by Ctrl-C):

1. the ERP and Omni sandboxes (``python -m omni_erp.sandbox``) on free ports;
2. a small alert receiver that prints every alert the notifiers send (connection ``omni_erp_alerts``);
3. ``airflow standalone`` (scheduler, dag-processor, triggerer, API server with the Omni inbox plugin) with
   ``AIRFLOW_HOME=var/airflow``, this repo's dags and plugins, and connection tests enabled;

then it creates the connections in Airflow's database (so they show in the UI, with this package's
connection types: Omni and ERP pointing at the sandboxes, the inbox key, the alert webhook), unpauses the
DAGs, prints the UI URL and the admin password, and feeds a trickle of sandbox orders into the inbox
(triggering the order and invoice flows when they are idle), so runs appear at once.

The ledger is the embedded SQLite file ``var/airflow/omni_erp_ledger.sqlite`` (standalone runs the
LocalExecutor). Airflow's own output goes to ``var/airflow/standalone.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[3]
INBOX_KEY = "standalone-inbox-key-0123456789abcdef"  # a local sandbox key, printed for the user
ERP_TOKEN = "standalone-erp-token"
OMNI_USER, OMNI_PASSWORD = "standalone-omni-user", "standalone-omni-pass"
FLOWS_TO_NUDGE = ("omni_order_posting", "erp_invoice_upload")
STARTUP_TIMEOUT_S = 600.0  # about 60 s on an idle 2-core machine; far more when it is busy
STOP_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(f"[airflow] {message}", flush=True)


class Standalone:
    """The processes of ``make airflow`` and their controls.

    :param home: AIRFLOW_HOME (``var/airflow``).
    :param port: API server port (UI, REST API and the inbox at ``/omni``).
    :param orders_per_tick: orders pushed into the inbox per tick (0 = no trickle).
    :param tick_s: seconds between ticks.
    """

    def __init__(self, home: Path, port: int, *, orders_per_tick: int = 2, tick_s: float = 30.0) -> None:
        self.home, self.port = home, port
        self.orders_per_tick, self.tick_s = orders_per_tick, tick_s
        self.base_url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.alerts: list[dict[str, Any]] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._token: str | None = None
        self.erp_url = self.omni_url = self.alerts_url = ""

    # --- processes ---------------------------------------------------------------------------

    def airflow_env(self) -> dict[str, str]:
        """The environment of ``airflow standalone`` (and of every task it runs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "OMNI_ERP_LEDGER"))}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            # Tasks call the execution API: it must follow the port (airflow-3.3-notes.md, real stack).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # Paused until the connections exist, then unpaused here: no first run fails for want of them.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the "Test" button of the connection form
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "NO_PROXY": "127.0.0.1,localhost",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        return env

    def start_sandboxes(self) -> None:
        ready = self.home / "sandboxes.ready"
        ready.unlink(missing_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "omni_erp.sandbox", "--erp-port", "0", "--omni-port", "0", "--erp-token", ERP_TOKEN,
             "--omni-user", OMNI_USER, "--omni-password", OMNI_PASSWORD, "--ready-file", str(ready)],
            stdout=(self.home / "sandboxes.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._processes.append(process)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandboxes did not start; see {self.home / 'sandboxes.log'}")
            time.sleep(0.2)
        urls = json.loads(ready.read_text())
        self.erp_url, self.omni_url = urls["erp_url"], urls["omni_url"]
        log(f"ERP sandbox {self.erp_url}, Omni sandbox {self.omni_url}")

    def start_alert_receiver(self, stack: ExitStack) -> None:
        """A webhook on 127.0.0.1 that prints each alert: what a chat channel would show."""
        from fastapi import FastAPI, Request

        from omni_erp.sandbox.serve import serve_in_thread

        app = FastAPI()

        @app.post("/alerts")
        async def receive(request: Request) -> dict[str, Any]:
            alert = await request.json()
            self.alerts.append(alert)
            log(f"ALERT {alert.get('kind')}: {alert.get('text')}")
            return {}

        server = stack.enter_context(serve_in_thread(app))
        self.alerts_url = f"{server.url}/alerts"

    def start_airflow(self) -> subprocess.Popen[bytes]:
        airflow = Path(sys.executable).with_name("airflow")
        process = subprocess.Popen(
            [str(airflow), "standalone"], env=self.airflow_env(), cwd=self.home,
            stdout=(self.home / "standalone.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._processes.append(process)
        log(f"airflow standalone starting (output in {self.home / 'standalone.log'}); this takes about a minute")
        return process

    def stop_all(self) -> None:
        """SIGINT each process (standalone then stops its components), SIGKILL its group if it lingers."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in reversed(self._processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            else:  # standalone's components are its children, in its session: make sure none is left
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # --- the REST API --------------------------------------------------------------------------

    def admin_password(self) -> str:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())["admin"]

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if self._token is None:
            response = requests.post(f"{self.base_url}/auth/token", json={"username": "admin", "password": self.admin_password()},
                                     timeout=10)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return requests.request(method, f"{self.base_url}/api/v2{path}", timeout=60,
                                headers={"Authorization": f"Bearer {self._token}"}, **kwargs)

    def api_answers(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=30).ok
        except requests.RequestException:
            return False

    def wait_until_healthy(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.stop.is_set():
            if process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited ({process.returncode}); see {self.home / 'standalone.log'}")
            try:
                health = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
                parts = ("metadatabase", "scheduler", "dag_processor")
                if all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                    if (health.get("triggerer") or {}).get("status") != "healthy":  # runs go on; deadlines wait for it
                        log("the triggerer is not healthy yet: deadline alerts and asset watchers wait for it")
                    return
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"airflow did not become healthy in {STARTUP_TIMEOUT_S:.0f} s; see {self.home / 'standalone.log'}")
            time.sleep(2)

    def connections(self) -> list[dict[str, Any]]:
        """The connections, in this package's types, pointing at the sandboxes."""
        return [
            {"connection_id": "omni_default", "conn_type": "omni", "host": self.omni_url, "login": OMNI_USER,
             "password": OMNI_PASSWORD, "description": "Increff Omni (the local sandbox)"},
            {"connection_id": "erp_default", "conn_type": "erp_rest", "host": self.erp_url, "password": ERP_TOKEN,
             "description": "The seller's ERP (the local generic REST sandbox)"},
            {"connection_id": "omni_inbox", "conn_type": "omni_inbox", "password": INBOX_KEY,
             "description": "What Omni sends our inbox (X-Api-Key)"},
            {"connection_id": "omni_erp_alerts", "conn_type": "http", "host": self.alerts_url,
             "description": "Alert webhook (printed by make airflow)"},
        ]

    def create_connections(self) -> None:
        for connection in self.connections():
            conn_id = connection["connection_id"]
            response = self.api("PATCH", f"/connections/{conn_id}", json=connection)
            if response.status_code == 404:
                response = self.api("POST", "/connections", json=connection)
            response.raise_for_status()
        log("connections omni_default, erp_default, omni_inbox, omni_erp_alerts point at the sandboxes")

    def unpause_dags(self) -> list[str]:
        """Wait until every DAG file of the repo is parsed, then unpause them all."""
        wanted = {p.stem for p in (REPO / "dags").glob("*.py")}
        deadline = time.monotonic() + 180
        while not self.stop.is_set():
            found = {d["dag_id"] for d in self.api("GET", "/dags", params={"limit": 100}).json().get("dags", [])}
            if wanted <= found or time.monotonic() > deadline:
                break
            time.sleep(2)
        dag_ids = sorted(wanted & found)
        for dag_id in dag_ids:
            self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        missing = sorted(wanted - found)
        log(f"unpaused {len(dag_ids)} DAGs" + (f" (not parsed yet: {', '.join(missing)})" if missing else ""))
        return dag_ids

    # --- the trickle ---------------------------------------------------------------------------

    def trickle(self) -> None:
        """Push a few orders into the inbox every tick and nudge the order and invoice flows when idle."""
        from omni_erp.sandbox.pusher import PostingPusher, generate_orders
        from omni_erp.timeutil import now

        pusher = PostingPusher(f"{self.base_url}/omni", INBOX_KEY, max_attempts=3, timeout_s=30)
        base = int(time.time())  # message ids and seeds never repeat across restarts of make airflow
        tick = 0
        while not self.stop.is_set():
            if self.orders_per_tick:
                orders = generate_orders(self.orders_per_tick, seed=base + tick, start=now(),
                                         first_message_id=base * 100 + tick * self.orders_per_tick)
                report = pusher.push(orders)
                log(f"pushed {report.accepted}/{report.sent} sandbox orders into the inbox")
                for dag_id in FLOWS_TO_NUDGE:
                    self.nudge(dag_id)
            tick += 1
            self.stop.wait(self.tick_s)

    def nudge(self, dag_id: str) -> None:
        """Trigger a run of ``dag_id`` unless one is queued or running (the cron would take up to 5 minutes)."""
        try:
            active = self.api("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"], "limit": 1}).json()
            if active.get("total_entries", 0):
                return
            self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None}).raise_for_status()
        except (requests.RequestException, ValueError) as exc:
            log(f"could not trigger {dag_id}: {type(exc).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.devtools.standalone", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO / "var" / "airflow", help="AIRFLOW_HOME")
    parser.add_argument("--port", type=int, default=8790, help="API server port (UI, REST API, inbox)")
    parser.add_argument("--orders-per-tick", type=int, default=2, help="sandbox orders pushed per tick (0: none)")
    parser.add_argument("--tick-s", type=float, default=30.0, help="seconds between two pushes")
    parser.add_argument("--exit-after-s", type=float, default=None, help="stop by itself after this long (tests)")
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    standalone = Standalone(args.home.resolve(), args.port, orders_per_tick=args.orders_per_tick, tick_s=args.tick_s)

    def on_signal(signum: int, _frame: Any) -> None:
        standalone.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            stack.callback(standalone.stop_all)
            stack.callback(standalone.stop.set)  # runs first: the trickle stops before the processes do
            standalone.start_sandboxes()
            standalone.start_alert_receiver(stack)
            airflow = standalone.start_airflow()
            standalone.wait_until_healthy(airflow)
            if standalone.stop.is_set():
                return 0
            standalone.create_connections()
            standalone.unpause_dags()
            log(f"UI: {standalone.base_url}  user: admin  password: {standalone.admin_password()}")
            log(f"Omni inbox: {standalone.base_url}/omni/postings (X-Api-Key: {INBOX_KEY})")
            log(f"ready in {time.monotonic() - started:.0f} s; Ctrl-C stops everything started here")
            feeder = threading.Thread(target=standalone.trickle, name="trickle", daemon=True)
            feeder.start()
            last_check = time.monotonic()
            while not standalone.stop.wait(1.0):
                if airflow.poll() is not None:
                    log(f"airflow standalone exited ({airflow.returncode}); see {args.home / 'standalone.log'}")
                    return 1
                if time.monotonic() - last_check > 60:  # standalone does not restart a component that died
                    last_check = time.monotonic()
                    if not standalone.api_answers():
                        log(f"the API server does not answer (UI and inbox down); see {args.home / 'standalone.log'}")
                if args.exit_after_s is not None and time.monotonic() - started > args.exit_after_s:
                    break
            log("stopping")
    except RuntimeError as exc:
        log(str(exc))
        return 1
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
