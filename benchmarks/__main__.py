"""``make bench``: DAG parse time, inbox ingest rate (SQLite and PostgreSQL) and F1 booking throughput.

Everything is measured in one run on this machine, against real servers on 127.0.0.1; compare the
figures with each other (ratios), not with another machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omni_erp.sandbox.serve import free_port

REPO = Path(__file__).resolve().parent.parent
WORK = Path(tempfile.mkdtemp(prefix="omni_erp_bench_"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(WORK / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "NO_PROXY": "127.0.0.1,localhost",
    }
)
API_KEY = "bench-key"



def _wait_http(url: str, timeout_s: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def bench_parse(rounds: int = 5) -> dict:
    """Median DagBag parse time per DAG file (what the dag-processor pays every cycle)."""
    from airflow.dag_processing.dagbag import DagBag

    per_file: dict[str, list[float]] = {}
    for _ in range(rounds):
        for stat in DagBag(dag_folder=str(REPO / "dags")).dagbag_stats:
            per_file.setdefault(Path(stat.file).name, []).append(stat.duration.total_seconds() * 1000)
    return {name: round(statistics.median(ms), 1) for name, ms in sorted(per_file.items())}


def bench_inbox(ledger_url: str, postings: int, clients: int) -> dict:
    """Postings per second through a standalone inbox process, each answered only after it is stored."""
    import requests

    from omni_erp.sandbox.pusher import generate_orders

    port = free_port()
    env = {**os.environ, "BENCH_INBOX_KEY": API_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_erp.inbox", "--port", str(port), "--ledger-url", ledger_url,
         "--api-key-env", "BENCH_INBOX_KEY", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/omni"
        _wait_http(f"{url}/health")
        batch = generate_orders(postings, seed=1)
        chunks = [batch[i::clients] for i in range(clients)]

        def send(chunk: list[dict]) -> list[float]:
            latencies = []
            with requests.Session() as session:
                session.headers["X-Api-Key"] = API_KEY
                for posting in chunk:
                    started = time.perf_counter()
                    response = session.post(f"{url}/postings", json=posting, timeout=45)
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
            return latencies

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = sorted(x for chunk in pool.map(send, chunks) for x in chunk)
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "postings": postings,
        "clients": clients,
        "postings_per_s": round(postings / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
    }


def bench_f1(orders: int, erp_latency_ms: int) -> dict:
    """Orders per second through claim -> map -> create (one worker) against an ERP answering in erp_latency_ms."""
    import requests

    from omni_erp.ledger import Ledger
    from omni_erp.operators.inbox import OmniInboxClaimOperator
    from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
    from omni_erp.sandbox.pusher import generate_orders

    erp_port, omni_port = free_port(), free_port()
    ready = WORK / f"sandbox-{erp_port}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_erp.sandbox", "--erp-port", str(erp_port), "--omni-port", str(omni_port),
         "--erp-token", "bench-token", "--invoice-delay-s", "3600", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        erp_url = f"http://127.0.0.1:{erp_port}"
        requests.post(f"{erp_url}/_sandbox/config", json={"latency_ms": erp_latency_ms}, timeout=5).raise_for_status()
        os.environ["AIRFLOW_CONN_ERP_DEFAULT"] = json.dumps({"conn_type": "http", "host": erp_url, "password": "bench-token"})
        os.environ["OMNI_ERP_LEDGER_PATH"] = str(WORK / f"f1-{erp_latency_ms}.sqlite")
        ledger = Ledger.from_conn_id()
        for posting in generate_orders(orders, seed=2, partially_cancelled_rate=0.2):
            ledger.record_posting(message_id=str(posting["messageId"]), event_type=posting["eventType"],
                                  business_key=posting["orderCode"], order_code=posting["orderCode"], payload=posting)
        batch = {"batch_id": f"bench/{erp_latency_ms}"}
        started = time.perf_counter()
        OmniInboxClaimOperator(task_id="claim", event_types=["OUTWARD_ORDER_CREATE"], limit=orders, **batch).execute({})
        mapped_at = time.perf_counter()
        ErpSalesOrderMapOperator(task_id="map", **batch).execute({})
        summary = ErpSalesOrderCreateOperator(task_id="create", **batch).execute({})
        elapsed = time.perf_counter() - started
        booked = len(requests.get(f"{erp_url}/_sandbox/state", timeout=10).json()["sales_orders"])
    finally:
        proc.terminate()
        proc.wait(10)
    assert booked == summary.get("booked", 0) == orders, (booked, summary)
    return {
        "orders": orders,
        "erp_latency_ms": erp_latency_ms,
        "orders_per_s": round(orders / elapsed, 1),
        "claim_ms": round((mapped_at - started) * 1000, 1),
        "ms_per_order_over_erp_latency": round(elapsed * 1000 / orders - erp_latency_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--postings", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=300)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from omni_erp.ledger.engine import sqlite_url
    from tests.pg import PostgresCluster

    results: dict = {"dag_parse_ms_median": bench_parse()}
    results["inbox_sqlite"] = bench_inbox(sqlite_url(WORK / "inbox.sqlite"), args.postings, clients=8)
    with PostgresCluster() as pg:
        results["inbox_postgres"] = bench_inbox(pg.url, args.postings, clients=8)
    results["f1_erp_0ms"] = bench_f1(args.orders, erp_latency_ms=0)
    results["f1_erp_50ms"] = bench_f1(args.orders, erp_latency_ms=50)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
