"""A real webhook receiver on 127.0.0.1 for the alert tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response


class Receiver:
    """What the webhook received; ``status`` is what it answers (set 503 to simulate a broken channel)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.status = 200


@pytest.fixture()
def webhook(monkeypatch):
    """An HTTP webhook on 127.0.0.1, configured as the ``omni_erp_alerts`` connection."""
    from omni_erp.sandbox.serve import serve_in_thread

    receiver = Receiver()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        receiver.received.append(await request.json())
        receiver.headers.append(dict(request.headers))
        return Response(status_code=receiver.status)

    with serve_in_thread(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_OMNI_ERP_ALERTS", json.dumps({"conn_type": "http", "host": f"{server.url}/hook"}))
        yield receiver


# --- the order flow (F1) on a real scheduler: backfills and REST triggers (issue 10.8 b, c) -----------

ORDER_FLOW = "omni_order_posting"
STACK_ERP_TOKEN = "stack-erp-token-s3cr3t"


class OrderFlowStack:
    """A running Airflow (scheduler, triggerer, dag-processor, API server) with the real F1 DAG, the ERP sandbox
    it books into, and the PostgreSQL ledger its tasks use (``ledger``: a :class:`omni_erp.ledger.Ledger` on it)."""

    def __init__(self, stack, erp, ledger) -> None:
        self.stack, self.erp, self.ledger = stack, erp, ledger


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that use ``order_flow_stack`` last among this package's tests, one after the other: their
    Airflow (package-scoped) then stops before any other test runs instead of idling beside other stacks."""
    here = Path(__file__).parent
    users = [item for item in items if "order_flow_stack" in getattr(item, "fixturenames", ())]
    if not users:
        return
    others = [item for item in items if item not in users]
    ours = [n for n, item in enumerate(others) if item.path.is_relative_to(here)]
    at = ours[-1] + 1 if ours else len(others)
    items[:] = others[:at] + users + others[at:]


@pytest.fixture(scope="package")
def order_flow_stack(tmp_path_factory):
    """One Airflow for the backfill and REST trigger tests (a start costs a minute or more).

    Only ``dags/omni_order_posting.py`` is deployed (copied, unchanged), users log in (the REST API needs a JWT),
    and the scheduler creates no runs from the schedule (``use_job_schedule`` off): the tests decide every run -
    backfills and manual triggers are all there is, and a cron tick cannot book postings behind their back.
    Airflow's metadata DB and the ledger are PostgreSQL (a cluster of its own): on SQLite, ``airflow backfill
    create`` met "database is locked" beside a busy scheduler, and the ledger is what production runs on.
    """
    import shutil

    from omni_erp.cluster.config import ensure_database
    from omni_erp.devtools.airflow_stack import AirflowStack
    from omni_erp.devtools.pg import PostgresCluster
    from omni_erp.ledger import Ledger
    from omni_erp.sandbox.erp import create_erp_sandbox
    from omni_erp.sandbox.serve import serve_in_thread
    from tests.conftest import REPO, Sandbox

    root = tmp_path_factory.mktemp("order_flow_stack")
    dags, plugins = root / "dags", root / "no_plugins"
    dags.mkdir()
    plugins.mkdir()
    shutil.copy(REPO / "dags" / f"{ORDER_FLOW}.py", dags)
    with PostgresCluster() as pg, \
            serve_in_thread(create_erp_sandbox(token=STACK_ERP_TOKEN, invoice_delay_s=0.05)) as erp_server:
        ensure_database(pg.url, "ledger")
        ledger_url = pg.url.rsplit("/", 1)[0] + "/ledger"
        ledger = Ledger(ledger_url)  # created (and migrated) before any task opens it
        connections = {
            "erp_default": {"conn_type": "erp_rest", "host": erp_server.url, "password": STACK_ERP_TOKEN},
            "omni_erp_ledger": {"conn_type": "postgres", "host": "127.0.0.1", "port": pg.port, "login": "omni",
                                "schema": "ledger"},
        }
        with AirflowStack(
            root / "home", metadata_url=pg.url, dags_folder=dags, plugins_folder=plugins, connections=connections,
            env={"OMNI_ERP_CLOCK_OFFSET_S": "0"},
            config={
                "core": {"simple_auth_manager_all_admins": "False"},
                "logging": {"logging_level": "INFO"},  # task logs show the run's scope and its dry-run lines
                "scheduler": {"use_job_schedule": "False", "scheduler_idle_sleep_time": 0.5},
                "database": {"sql_alchemy_pool_size": "2", "sql_alchemy_max_overflow": "8"},  # 50 connections at most
            },
            start_timeout_s=600,
        ) as stack:
            stack.wait_for_dags([ORDER_FLOW], timeout_s=300)
            yield OrderFlowStack(stack, Sandbox(erp_server.url), ledger)
        ledger.engine.dispose()


def ledger_snapshot(ledger) -> dict[str, list[tuple]]:
    """Every row of every ledger table, sorted: two snapshots are equal when nothing was written in between."""
    import sqlalchemy as sa

    from omni_erp.ledger import tables

    with ledger.engine.connect() as conn:
        return {
            name: sorted((tuple(map(repr, row)) for row in conn.execute(sa.select(table))), key=repr)
            for name, table in tables.metadata.tables.items()
        }


WOULD_POST = r"DRY RUN would POST \S*sales-orders\S* key create:(?P<code>\S+) body (?P<body>\{.*\})$"


def would_post_bodies(stack, run_id: str) -> dict[str, dict]:
    """Order code -> the body the F1 booking task's log says it would POST (a dry run logs one line per order)."""
    import re

    log = stack.task_log(ORDER_FLOW, run_id, "create_sales_orders", map_index=0)
    found = [(m["code"], json.loads(m["body"])) for m in re.finditer(WOULD_POST, log, re.MULTILINE)]
    assert len(found) == len(dict(found)), f"an order logged twice:\n{log}"
    return dict(found)
