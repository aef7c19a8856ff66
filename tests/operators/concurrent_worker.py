"""A worker of the concurrency tests: a long-lived OS process running a flow's real operators, job after job.

``python -m tests.operators.concurrent_worker --dir D --name w0``

Like a Celery worker it starts once (importing Airflow costs seconds) and then runs jobs. For job
k it writes ``D/w0.ready-k`` and waits for ``D/job-k.json``, ``{worker name: {"flow", "batch_id",
"limit"}}``; the test writes that file once every worker taking part is ready, so they all start
together. A worker not named in the job skips it. The result (what it claimed, each operator's
summary, start and end time) goes to ``D/w0.out-k.json``. ``D/stop`` ends the worker.

Flows: ``f1`` and ``f3`` claim ``limit`` postings at a time and run the flow's operators on them,
claiming again until a claim returns nothing (runs of omni_order_posting / omni_order_cancellation);
``f1-create`` is one try of ``create_sales_orders`` alone on a batch claimed and mapped before (a
task retried while its first try is still alive). The ledger and the ERP come from
``AIRFLOW_CONN_OMNI_ERP_LEDGER`` and ``AIRFLOW_CONN_ERP_DEFAULT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EVENT_TYPES = {"f1": "OUTWARD_ORDER_CREATE", "f1-create": "OUTWARD_ORDER_CREATE", "f3": "OUTWARD_ORDER_CANCEL"}
WAIT_TIMEOUT_S = 600


def _operators(flow: str, batch_id: str) -> list[Any]:
    """The operators of the flow's DAG after ``claim_postings``, in order (dags/omni_order_*.py)."""
    from omni_erp.operators.cancellation import ErpOrderCancelOperator
    from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator

    if flow == "f3":
        return [ErpOrderCancelOperator(task_id="cancel_orders", batch_id=batch_id)]
    create = ErpSalesOrderCreateOperator(task_id="create_sales_orders", batch_id=batch_id)
    if flow == "f1-create":
        return [create]
    return [ErpSalesOrderMapOperator(task_id="map_sales_orders", batch_id=batch_id), create]


def _run(operator: Any) -> dict[str, Any]:
    """The operator's XCom summary, or the error that ended it (a failed task still did its work)."""
    try:
        return operator.execute(context={})
    except Exception as exc:  # the test asserts on it; a worker must still report what it claimed
        return {"task_id": operator.task_id, "error": f"{type(exc).__name__}: {exc}"}


def run_job(flow: str, batch_id: str, limit: int) -> list[dict[str, Any]]:
    """Work one job; returns its rounds: the message ids claimed and each operator's summary."""
    from omni_erp.operators.inbox import OmniInboxClaimOperator

    event_types = [EVENT_TYPES[flow]]
    claim = OmniInboxClaimOperator(task_id="claim_postings", batch_id=batch_id, event_types=event_types, limit=limit)
    operators = _operators(flow, batch_id)
    if flow == "f1-create":
        claimed = [p.message_id for p in claim.ledger.claimed_postings(batch_id, event_types)]
        return [{"claimed": claimed, "summaries": [_run(operator) for operator in operators]}]
    rounds: list[dict[str, Any]] = []
    while claim.execute(context={})["claimed"]:
        claimed = [p.message_id for p in claim.ledger.claimed_postings(batch_id, event_types)]
        if rounds and set(claimed) <= set(rounds[-1]["claimed"]):
            rounds.append({"claimed": claimed, "stuck": "claimed again but not finished by the last pass"})
            break
        rounds.append({"claimed": claimed, "summaries": [_run(operator) for operator in operators]})
    return rounds


def _wait_for(*paths: Path) -> Path:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        for path in paths:
            if path.exists():
                return path
        if time.monotonic() > deadline:
            raise TimeoutError(f"none of {paths} appeared")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    # Everything a job needs is imported before the first "ready": the start line then means "go".
    import omni_erp.hooks.erp  # noqa: F401
    import omni_erp.ledger  # noqa: F401
    import omni_erp.operators.inbox  # noqa: F401

    _operators("f1", "warm-up")
    stop = args.dir / "stop"
    for k in range(sys.maxsize):
        (args.dir / f"{args.name}.ready-{k}").write_text("ready")
        if _wait_for(args.dir / f"job-{k}.json", stop) == stop:
            return 0
        job = json.loads((args.dir / f"job-{k}.json").read_text()).get(args.name)
        if job is None:
            continue
        started = time.time()
        rounds = run_job(job["flow"], job["batch_id"], job["limit"])
        result = {"batch_id": job["batch_id"], "started": started, "ended": time.time(), "rounds": rounds}
        (args.dir / f"{args.name}.out-{k}.tmp").write_text(json.dumps(result))
        (args.dir / f"{args.name}.out-{k}.tmp").rename(args.dir / f"{args.name}.out-{k}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
