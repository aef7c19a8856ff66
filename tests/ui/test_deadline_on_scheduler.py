"""Deadline alerts on a real scheduler and triggerer (issue 10.8a): a run that overruns a tiny deadline produces
exactly one notification at a local webhook, and a run that failed before its deadline produces its failure
alert only - Airflow 3.3.2 still fires that run's deadline (apache/airflow#60927), the notifier stays quiet.

Slow (a whole Airflow starts: about a minute on an idle 2-core machine): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest

from omni_erp.devtools.airflow_stack import AirflowStack

pytestmark = pytest.mark.slow

DAGS = textwrap.dedent('''
    """Two tiny DAGs for the deadline test: one overruns its deadline, one fails before its deadline passes."""
    import time
    from datetime import timedelta

    import pendulum
    from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, task

    from omni_erp.notifiers import DeadlineMissedNotifier, RunFailedNotifier


    def deadline(seconds):
        return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(seconds=seconds),
                             callback=AsyncCallback(DeadlineMissedNotifier, kwargs={"flow": "test"}))


    with DAG("overruns_its_deadline", schedule=None, start_date=pendulum.datetime(2026, 11, 1), catchup=False,
             deadline=deadline(5), default_args={"retries": 0, "on_failure_callback": RunFailedNotifier()}):
        @task
        def slow():
            time.sleep(45)
        slow()

    with DAG("fails_before_its_deadline", schedule=None, start_date=pendulum.datetime(2026, 11, 1), catchup=False,
             deadline=deadline(60), default_args={"retries": 0, "on_failure_callback": RunFailedNotifier()}):
        @task
        def broken():
            raise ValueError("bad data")
        broken()
''')


def test_one_deadline_alert_for_an_overrunning_run_and_none_for_a_failed_one(tmp_path, webhook):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "deadline_dags.py").write_text(DAGS)
    (tmp_path / "no_plugins").mkdir()
    with AirflowStack(
        tmp_path / "home", dags_folder=dags, plugins_folder=tmp_path / "no_plugins",
        connections={"omni_erp_alerts": json.loads(os.environ["AIRFLOW_CONN_OMNI_ERP_ALERTS"])},
        env={"OMNI_ERP_LEDGER_PATH": str(tmp_path / "ledger.sqlite")},
        config={"scheduler": {"scheduler_idle_sleep_time": 0.5}},
        start_timeout_s=600,
    ) as stack:
        stack.wait_for_dags(["overruns_its_deadline", "fails_before_its_deadline"], timeout_s=300)
        stack.airflow("dags", "trigger", "fails_before_its_deadline")
        stack.airflow("dags", "trigger", "overruns_its_deadline")

        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            stack.check_alive()
            runs = stack.dag_runs("overruns_its_deadline") + stack.dag_runs("fails_before_its_deadline")
            fired = stack.query("SELECT count(*) FROM deadline WHERE missed = 1")
            ended = [r for r in runs if r["state"] in ("success", "failed")]
            if len(ended) == 2 and fired and fired[0] >= 2 and len(webhook.received) >= 2:
                break
            time.sleep(3)
        time.sleep(10)  # room for a wrong extra alert to arrive
        states = {dag: [r["state"] for r in stack.dag_runs(dag)] for dag in ("overruns_its_deadline", "fails_before_its_deadline")}
        missed = stack.query("SELECT count(*) FROM deadline WHERE missed = 1")[0]

    assert states == {"overruns_its_deadline": ["success"], "fails_before_its_deadline": ["failed"]}
    assert missed == 2, "both deadlines passed and were handled by the triggerer"
    kinds = sorted((a["kind"], a["dag_id"]) for a in webhook.received)
    assert kinds == [("deadline_missed", "overruns_its_deadline"), ("run_failed", "fails_before_its_deadline")], webhook.received
    late = next(a for a in webhook.received if a["kind"] == "deadline_missed")
    assert late["state"] == "running"
