"""``python -m omni_erp.chaos.worker``: a long-lived Airflow task process that runs DAG runs on command.

It reads one JSON command per line on stdin (``{"dag_id", "run_at", "conf", "env"}``), runs that DAG
run with ``dag.test()`` - every task of it executes inside this process, as in ``airflow dags test`` -
and writes one JSON result line to the file descriptor given by ``--result-fd``. Killing this process
(SIGKILL) kills the task that is running, mid-batch; the harness then starts a new worker and re-runs
the same ``run_at``, which is what Airflow does when it retries a task whose process died: ``run_at`` is
the run's logical date and ``run_after``, which ``dag.test()`` makes its run id, so the retry works on
the same ledger batch (``<dag_id>/<run_id>``). ``env`` sets environment variables for that run only
(the shifted clock of the scenario, a longer read timeout for a run that is meant to be killed).
``--warmup DAG_ID`` runs that DAG once before the worker says it is ready, so a fresh process has paid
its first-run costs (the in-process execution API, imports) before it is handed work.

Two test-only changes to the DAGs, both about time: the SLA deadline is removed (``dag.test()`` crashes
on it, apache/airflow#73428) and task retry delays are shortened to ``--retry-delay-s`` so a retry after
an outage happens within the run instead of minutes later.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any


def _summary(value: Any) -> Any:
    """A task's XCom as a small JSON value (counts), never payloads."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return None


def run_one(dagbag: Any, command: dict[str, Any], retry_delay: timedelta) -> dict[str, Any]:
    """Run one DAG run in this process; return its state and, per task, the state and XCom counts."""
    import pendulum

    dag = dagbag.dags[command["dag_id"]]
    dag.deadline = None  # apache/airflow#73428: dag.test() crashes at the end of a DAG with a deadline
    for task in dag.tasks:
        task.retry_delay = retry_delay
        task.retry_exponential_backoff = False
    env = command.get("env") or {}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    run_at = pendulum.parse(command["run_at"])
    started = time.monotonic()
    try:
        run = dag.test(logical_date=run_at, run_after=run_at, run_conf=command.get("conf") or None)
    finally:
        for name, value in saved.items():  # the settings were for this run only
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    tasks = {}
    for ti in run.get_task_instances():
        value = ti.xcom_pull(task_ids=ti.task_id) if ti.state == "success" else None
        tasks[ti.task_id] = {"state": str(ti.state), "try_number": ti.try_number, "xcom": _summary(value)}
    return {
        "dag_id": command["dag_id"],
        "run_at": command["run_at"],
        "run_id": run.run_id,
        "state": str(run.state),
        "tasks": tasks,
        "seconds": round(time.monotonic() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_erp.chaos.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--dags", type=Path, required=True, help="the dags folder (the one Airflow is configured with)")
    parser.add_argument("--result-fd", type=int, required=True, help="file descriptor for the JSON result lines")
    parser.add_argument("--retry-delay-s", type=float, default=2.0)
    parser.add_argument("--warmup", metavar="DAG_ID", help="run this DAG once before saying ready")
    args = parser.parse_args(argv)

    results = os.fdopen(args.result_fd, "w", buffering=1)
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(args.dags))
    if dagbag.import_errors:
        results.write(json.dumps({"error": f"DAG import errors: {dagbag.import_errors}"}) + "\n")
        return 1
    retry_delay = timedelta(seconds=args.retry_delay_s)
    if args.warmup:
        import pendulum

        warm = run_one(dagbag, {"dag_id": args.warmup, "run_at": pendulum.now("UTC").isoformat()}, retry_delay)
        if warm["state"] != "success":
            results.write(json.dumps({"error": f"warm-up run {warm}"}) + "\n")
            return 1
    results.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            result = run_one(dagbag, command, retry_delay)
        except Exception as exc:  # report and keep serving: the harness decides what a broken run means
            result = {"dag_id": command.get("dag_id"), "run_at": command.get("run_at"),
                      "state": "error", "error": f"{type(exc).__name__}: {exc}"}
        results.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
