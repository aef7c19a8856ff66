"""AirflowStack's settings: what every process it starts is told (starting a real stack is the latency benchmark's job)."""

from __future__ import annotations

import json

import pytest

from omni_erp.devtools.airflow_stack import AirflowStack, Component


def test_every_process_gets_the_home_the_database_the_connections_and_a_matching_execution_api(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor")  # the caller's own Airflow settings ...
    monkeypatch.setenv("AIRFLOW_CONN_SOMETHING_ELSE", "http://elsewhere")  # ... and connections do not leak in
    erp = {"conn_type": "http", "host": "http://127.0.0.1:9", "password": "t"}

    stack = AirflowStack(tmp_path / "home", connections={"erp_default": erp}, env={"OMNI_ERP_X": "1"},
                         config={"scheduler": {"scheduler_idle_sleep_time": 0.5}})
    env = stack.env

    assert env["AIRFLOW_HOME"] == str((tmp_path / "home").resolve())
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{(tmp_path / 'home').resolve()}/airflow.db"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "AIRFLOW_CONN_SOMETHING_ELSE" not in env
    assert json.loads(env["AIRFLOW_CONN_ERP_DEFAULT"]) == erp
    assert env["AIRFLOW__API__PORT"] == str(stack.api_port)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{stack.api_port}/execution/"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"] == "0.5"
    assert env["OMNI_ERP_X"] == "1"
    ports = {env[k] for k in ("AIRFLOW__API__PORT", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                              "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")}
    assert len(ports) == 3 and not ports & {"8080", "8793", "8794"}


def test_a_celery_stack_is_an_executor_and_extra_processes(tmp_path):
    worker = Component("celery-worker", ("celery", "worker", "--concurrency", "2"))

    stack = AirflowStack(tmp_path, executor="CeleryExecutor", extra=[worker],
                         config={"celery": {"broker_url": "redis://127.0.0.1:6399/0"}})

    assert stack.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert stack.env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6399/0"
    assert [c.name for c in stack._components] == ["scheduler", "triggerer", "dag-processor", "api-server", "celery-worker"]


def test_unknown_components_are_refused(tmp_path):
    with pytest.raises(ValueError, match="webserver"):
        AirflowStack(tmp_path, components=("scheduler", "webserver"))
