"""DAG policy: every file imports cleanly, parses fast with no network, and follows the package conventions."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest

from omni_erp.tags import Tag

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py"))
ALLOWED_IMPORT_ROOTS = {"__future__", "airflow", "pendulum", "omni_erp", "datetime", "pathlib"}
PARSE_BUDGET_PER_FILE_S = 0.5
PARSE_BUDGET_TOTAL_S = 3.0


@pytest.fixture(scope="module")
def dagbag():
    """Parse the dags folder with every outbound socket connection forbidden (no I/O at parse time)."""
    from airflow.dag_processing.dagbag import DagBag

    def refuse(*_args, **_kwargs):
        raise AssertionError("a DAG file opened a network connection at parse time")

    original = socket.socket.connect
    socket.socket.connect = refuse
    try:
        return DagBag(dag_folder=str(DAGS_DIR))
    finally:
        socket.socket.connect = original


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {Path(f).stem for f in DAG_FILES} == set(dagbag.dags)


def test_each_file_parses_within_budget(dagbag):
    stats = {Path(s.file).name: s.duration.total_seconds() for s in dagbag.dagbag_stats}
    assert set(stats) == {p.name for p in DAG_FILES}
    slow = {name: round(sec, 3) for name, sec in stats.items() if sec > PARSE_BUDGET_PER_FILE_S}
    assert not slow, f"DAG files over the {PARSE_BUDGET_PER_FILE_S}s parse budget: {slow}"
    assert sum(stats.values()) < PARSE_BUDGET_TOTAL_S


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.stem for p in DAG_FILES])
def test_dag_files_import_only_sdk_pendulum_and_our_package(path):
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
            if node.module and node.module.startswith("airflow"):
                assert node.module == "airflow.sdk", f"{path.name}: import from airflow.sdk, not {node.module}"
    assert roots <= ALLOWED_IMPORT_ROOTS, f"{path.name} imports {sorted(roots - ALLOWED_IMPORT_ROOTS)}"


@pytest.mark.parametrize("dag_id", [p.stem for p in DAG_FILES])
def test_dag_follows_conventions(dagbag, dag_id):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    dag = dagbag.dags[dag_id]
    assert dag.doc_md and dag.description
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    # An explicit cron, alone or as the safety net of an event-driven schedule (omni_erp.assets.wake_on).
    cron = dag.timetable.timetable if isinstance(dag.timetable, AssetOrTimeSchedule) else dag.timetable
    assert isinstance(cron, CronTriggerTimetable)
    tags = set(dag.tags)
    assert tags <= Tag.all(), f"unknown tags {tags - Tag.all()}"
    assert len([t for t in tags if t.startswith("flow/")]) == 1
    assert any(t.startswith("impact/") for t in tags)
    assert dag.deadline, "every flow has an SLA deadline alert"
    for alert in dag.deadline:
        assert alert.callback.path == "omni_erp.notifiers.DeadlineMissedNotifier"
    for task in dag.tasks:
        assert task.owner and task.owner != "airflow"
        assert task.retries >= 1 and task.retry_delay
        assert task.execution_timeout is not None
