"""A manual trigger through the REST API (issue 10.8c) does what the trigger form promises: ``dry_run`` sends
and records nothing and logs what it would send, for exactly the ``order_codes`` given; ``order_codes`` alone
books only those orders; bad values are refused by the API, naming the param, before any run exists.

The real F1 DAG on a scheduler, triggerer, dag-processor and API server (``order_flow_stack`` in conftest.py);
the calls carry a JWT from ``POST /auth/token`` as any API client's would.

Slow (a whole Airflow starts, then two runs): marked ``slow``.
"""

from __future__ import annotations

import pytest

from omni_erp.sandbox.pusher import generate_orders
from omni_erp.states import DONE, PENDING
from tests.flows import store
from tests.ui.conftest import ORDER_FLOW, ledger_snapshot, would_post_bodies

pytestmark = pytest.mark.slow


def _trigger(stack, conf: dict):
    return stack.api("POST", f"/dags/{ORDER_FLOW}/dagRuns", json={"logical_date": None, "conf": conf})


def _run(stack, conf: dict) -> dict:
    """Trigger a run with ``conf`` and wait for it to end; its :meth:`AirflowStack.dag_runs` row."""
    response = _trigger(stack, conf)
    assert response.status_code == 200, response.text
    return stack.wait_for_run(ORDER_FLOW, response.json()["dag_run_id"], timeout_s=600)


def test_a_rest_trigger_with_dry_run_and_order_codes_does_what_the_form_promises(order_flow_stack):
    stack, erp, ledger = order_flow_stack.stack, order_flow_stack.erp, order_flow_stack.ledger
    postings = generate_orders(3, seed=1016, first_message_id=1016001)
    store(ledger, *postings)
    first, second, third = (p["orderCode"] for p in postings)

    # Bad values: refused by the API (the form's validation), naming the param; no run is created.
    runs_before = len(stack.dag_runs(ORDER_FLOW))
    for conf, param in (
        ({"order_codes": [first, "FN\x07123"]}, "order_codes"),
        ({"order_codes": [f"FN{n}" for n in range(1001)]}, "order_codes"),
        ({"dry_run": "maybe"}, "dry_run"),
    ):
        refused = _trigger(stack, conf)
        assert 400 <= refused.status_code < 500 and param in refused.text, (conf, refused.status_code, refused.text)
    assert len(stack.dag_runs(ORDER_FLOW)) == runs_before

    # A dry run of two orders: green, nothing sent, nothing recorded, the would-send lines for exactly those two.
    ledger_before, erp_before = ledger_snapshot(ledger), erp.state()
    dry = _run(stack, {"dry_run": True, "order_codes": [first, second]})

    assert dry["state"] == "success", stack.task_states(ORDER_FLOW, dry["run_id"])
    assert ledger_snapshot(ledger) == ledger_before
    assert erp.state()["sales_orders"] == erp_before["sales_orders"]
    assert erp.state()["request_counts"] == erp_before["request_counts"]
    would_post = would_post_bodies(stack, dry["run_id"])
    assert sorted(would_post) == sorted([first, second])
    assert "dry run: nothing was sent or recorded" in stack.task_log(ORDER_FLOW, dry["run_id"], "report_outcome")

    # The same trigger without dry_run and with one order: that order is booked, the others wait.
    real = _run(stack, {"order_codes": [first]})

    assert real["state"] == "success", stack.task_states(ORDER_FLOW, real["run_id"])
    booked = [o["orderCode"] for o in erp.state()["sales_orders"] if o["orderCode"] in (first, second, third)]
    assert booked == [first]
    states = {p["order_code"]: p["state"] for p in ledger.postings()}
    assert (states[first], states[second], states[third]) == (DONE, PENDING, PENDING)
    assert would_post_bodies(stack, real["run_id"]) == {}
    sent = next(o["request"] for o in erp.state()["sales_orders"] if o["orderCode"] == first)
    assert would_post[first] == sent  # the dry run logged exactly the body the real run then sent
