"""``make demo``: the whole F1 job on one machine, on the embedded defaults, ending in a reconciliation.

Starts the ERP and Omni sandboxes and the standalone inbox as separate processes on 127.0.0.1,
pushes a realistic batch of Ajio orders through the inbox the way Omni does (re-deliveries and a
few invalid postings included), runs ``omni_order_posting`` on real Airflow (``dag.test()``) until
the queue is empty, and prints what happened to every order. Exits 1 if any order is unaccounted
for. Everything it writes lives under ``var/demo``; the processes it started are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DEMO_INBOX_KEY = "demo-inbox-key"
DEMO_ERP_TOKEN = "demo-erp-token"
DEMO_OMNI_USER, DEMO_OMNI_PASSWORD = "demo-omni-user", "demo-omni-pass"
MAX_ROUNDS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(work: Path, dags: Path, erp_port: int, omni_port: int) -> None:
    """Airflow and omni_erp settings for this demo; must run before airflow is imported."""
    home = work / "airflow"
    home.mkdir(parents=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(dags.parent / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "OMNI_ERP_LEDGER_PATH": str(work / "ledger.sqlite"),
            # Production policy shape, demo-sized waits: retries are visible but quick.
            "OMNI_ERP_HTTP_BASE_DELAY_S": "0.2",
            "OMNI_ERP_HTTP_MAX_DELAY_S": "2",
            "OMNI_ERP_HTTP_READ_TIMEOUT_S": "2",
            "AIRFLOW_CONN_ERP_DEFAULT": json.dumps(
                {"conn_type": "http", "host": f"http://127.0.0.1:{erp_port}", "password": DEMO_ERP_TOKEN}
            ),
            "AIRFLOW_CONN_OMNI_DEFAULT": json.dumps(
                {"conn_type": "http", "host": f"http://127.0.0.1:{omni_port}", "login": DEMO_OMNI_USER, "password": DEMO_OMNI_PASSWORD}
            ),
            "AIRFLOW_CONN_OMNI_INBOX": json.dumps({"conn_type": "http", "password": DEMO_INBOX_KEY}),
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )


def _start(stack: ExitStack, name: str, args: list[str], log_dir: Path) -> subprocess.Popen:
    log_file = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed by the stack
    stack.callback(log_file.close)
    proc = subprocess.Popen([sys.executable, *args], stdout=log_file, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)
    return proc


def _wait_until(check, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not start within {timeout_s:.0f} s (see var/demo/*.log)")


def _invalid_postings(valid: dict[str, Any]) -> list[dict[str, Any]]:
    """What a misconfigured Omni might send: the inbox must refuse these and keep them in the rejection log."""
    no_id = {k: v for k, v in valid.items() if k != "messageId"}
    bad_type = json.loads(json.dumps(valid))
    bad_type["messageId"] = 999_001
    bad_type["orderItems"][0]["orderedQuantity"] = "two"
    conflict = {**valid, "orderCode": "FN0000000000"}  # a messageId reused for another order
    return [no_id, bad_type, conflict]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=40, help="Ajio orders to generate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    args = parser.parse_args(argv)

    started = time.monotonic()
    dags = Path("dags").resolve()
    if not (dags / "omni_order_posting.py").exists():
        raise SystemExit("demo: run from the repository root (dags/omni_order_posting.py not found)")
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    erp_port, omni_port, inbox_port = _free_port(), _free_port(), _free_port()
    _environment(work, dags, erp_port, omni_port)

    import requests

    with ExitStack() as stack:
        print(f"[demo] starting the ERP + Omni sandboxes and the inbox on 127.0.0.1 (logs in {work})")
        ready = work / "sandboxes.json"
        _start(
            stack,
            "sandboxes",
            ["-m", "omni_erp.sandbox", "--erp-port", str(erp_port), "--omni-port", str(omni_port),
             "--erp-token", DEMO_ERP_TOKEN, "--omni-user", DEMO_OMNI_USER, "--omni-password", DEMO_OMNI_PASSWORD,
             "--invoice-delay-s", "0.2", "--seed", str(args.seed), "--ready-file", str(ready)],
            work,
        )
        ledger_url = f"sqlite:///{work / 'ledger.sqlite'}"
        _start(stack, "inbox", ["-m", "omni_erp.inbox", "--port", str(inbox_port), "--ledger-url", ledger_url], work)
        erp_url, inbox_url = f"http://127.0.0.1:{erp_port}", f"http://127.0.0.1:{inbox_port}/omni"
        _wait_until(ready.exists, "the sandboxes")
        _wait_until(lambda: requests.get(f"{inbox_url}/health", timeout=2).status_code == 200, "the inbox")
        # A realistic ERP: a few 5xx and a few answers that arrive after our 2 s timeout (work already done).
        requests.post(
            f"{erp_url}/_sandbox/config",
            json={"error_rate": 0.08, "timeout_rate": 0.05, "timeout_s": 3, "seed": args.seed},
            timeout=5,
        ).raise_for_status()

        from omni_erp.sandbox.pusher import PostingPusher, generate_orders

        postings = generate_orders(
            args.orders, seed=args.seed, missing_po_rate=0.06, fully_cancelled_rate=0.06, partially_cancelled_rate=0.2
        )
        pusher = PostingPusher(inbox_url, DEMO_INBOX_KEY, backoff_s=0.05, redeliver_rate=0.15, seed=args.seed)
        push = pusher.push(postings)
        bad = PostingPusher(inbox_url, DEMO_INBOX_KEY, backoff_s=0.05, max_attempts=2).push(_invalid_postings(postings[0]))
        print(
            f"[demo] Omni pushed {push.sent} order postings ({push.redelivered} re-delivered) "
            f"and {bad.sent} invalid ones; inbox accepted {push.accepted}, rejected {len(push.rejected) + len(bad.rejected)}"
        )

        print("[demo] initialising the Airflow metadata DB and running omni_order_posting with dag.test()")
        runs = _run_dag_until_drained()
        erp_state = requests.get(f"{erp_url}/_sandbox/state", timeout=10).json()
        code = _reconcile(postings, push, bad, erp_state, runs, time.monotonic() - started)
    return code


def _run_dag_until_drained() -> list[dict[str, Any]]:
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    from omni_erp.ledger import Ledger
    from omni_erp.settings import EVENT_CREATE

    db.initdb()
    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags["omni_order_posting"]
    dag.deadline = None  # apache/airflow#73428: dag.test() crashes on DAGs with a deadline
    ledger = Ledger.from_conn_id()
    runs = []
    for round_no in range(1, MAX_ROUNDS + 1):
        logical_date = pendulum.now("UTC").subtract(hours=1).add(minutes=round_no)
        run = dag.test(logical_date=logical_date)
        ti = run.get_task_instance("create_sales_orders")
        summary = ti.xcom_pull(task_ids="create_sales_orders") or {}
        pending = sum(1 for p in ledger.postings(EVENT_CREATE) if p["state"] in ("pending", "claimed"))
        runs.append({"round": round_no, "state": str(run.state), "summary": summary, "pending_after": pending})
        shown = {k: v for k, v in summary.items() if k != "batch_id"} or f"task {ti.state}"
        print(f"[demo] run {round_no}: {run.state}; ERP booking: {shown}; postings still pending: {pending}")
        if pending == 0:
            break
    return runs


def _reconcile(postings, push, bad, erp_state, runs, wall_s: float) -> int:
    from omni_erp.ledger import Ledger

    ledger = Ledger.from_conn_id()
    stored = {p["message_id"]: p for p in ledger.postings()}
    erp_orders = Counter(o["orderCode"] for o in erp_state["sales_orders"])
    erp_ids = {o["orderCode"]: o["salesOrderId"] for o in erp_state["sales_orders"]}
    dead = ledger.dead_letters()
    dead_by_message = {d["message_id"]: d for d in dead if d["stage"] == "order_posting"}

    verdicts: Counter[str] = Counter()
    problems = []
    for posting in postings:
        code, mid = posting["orderCode"], str(posting["messageId"])
        order = ledger.get_order(code)
        booked = erp_orders.get(code, 0)
        if booked == 1 and order and order["state"] == "booked" and order["erp_sales_order_id"] == erp_ids[code]:
            verdicts["booked once in the ERP"] += 1
        elif booked == 0 and order and order["state"] == "nothing_to_invoice":
            verdicts["not booked: every unit cancelled"] += 1
        elif booked == 0 and mid in dead_by_message:
            verdicts["dead-lettered (reason below)"] += 1
        else:
            problems.append(f"{code} (messageId {mid}): ERP bookings={booked}, ledger={order and order['state']}, "
                            f"posting={stored.get(mid, {}).get('state')}")

    inbox_rejections = [d for d in dead if d["stage"] == "inbox"]
    width = 46
    print()
    print("=" * 78)
    print("Reconciliation - omni_order_posting (F1: OUTWARD_ORDER_CREATE -> ERP sales order)")
    print("=" * 78)
    rows = [
        ("order postings pushed by Omni", len(postings)),
        ("  re-deliveries of the same messageId", push.redelivered),
        ("  invalid postings sent", bad.sent),
        ("postings stored in the ledger (once each)", len(stored)),
        ("duplicates suppressed at the inbox", push.redelivered),
        ("rejected at the inbox (kept in the log)", len(inbox_rejections)),
        ("ERP sales orders booked", sum(erp_orders.values())),
        ("duplicate bookings suppressed by the ERP key", erp_state["duplicates"].get("sales_order", 0)),
        ("ERP calls retried (5xx / timeouts)", sum(1 for c in ledger.calls() if c["outcome"] == "retry")),
        ("DAG runs", len(runs)),
    ]
    for label, value in rows:
        print(f"  {label:<{width}} {value:>6}")
    print("-" * 78)
    print("Every order:")
    for verdict, count in sorted(verdicts.items()):
        print(f"  {verdict:<{width}} {count:>6}")
    print(f"  {'UNACCOUNTED FOR':<{width}} {len(problems):>6}")
    print("-" * 78)
    print("Dead letters and rejections (stage, key, reason):")
    for d in dead:
        print(f"  {d['stage']:<14} {d['business_key'] or d['message_id'] or '-':<16} {d['reason'][:90]}")
    print("=" * 78)
    print(f"Wall time: {wall_s:.1f} s")
    if problems:
        print("FAILED: orders not accounted for:")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"OK: all {len(postings)} orders accounted for, none booked twice.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
