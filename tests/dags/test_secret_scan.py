"""No configured secret (ERP token, Omni password, inbox key) reaches a log, the ledger or an XCom.

One order life cycle through all five DAGs with ``dag.test()``: postings through the real inbox with
its API key, ERP and Omni sandboxes with a few faults (retries and refusals are where secrets tend to
get logged), then everything the run left behind is collected and scanned for each secret, plain,
URL-encoded and base64-encoded (a Basic auth header holds the Omni password in base64).
"""

from __future__ import annotations

import base64
import logging
import os
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.ledger import Ledger, tables
from omni_erp.ledger.engine import sqlite_url
from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting, return_posting
from omni_erp.sandbox.pusher import PostingPusher
from omni_erp.states import (
    DOC_SKIPPED,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
)
from tests.conftest import ERP_TOKEN, INBOX_KEY, OMNI_PASSWORD, OMNI_USER, SECRETS
from tests.flows import create_posting, wait_for_einvoices
from tests.secret_scan import as_text, database_rows, find_secrets, log_files

CONFIGURED_SECRETS = {"ERP token": ERP_TOKEN, "Omni password": OMNI_PASSWORD, "inbox key": INBOX_KEY}
FLOWS = ("omni_order_posting", "erp_invoice_upload", "omni_order_cancellation", "omni_order_completion",
         "omni_return_credit_note")
SKU_A = "460491724004"


def test_the_scan_knows_every_configured_secret():
    assert set(CONFIGURED_SECRETS.values()) == set(SECRETS)


# --- the scanner itself must catch what it claims to catch -----------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=8, max_size=40),
    before=st.binary(max_size=12),
    after=st.binary(max_size=12),
)
def test_a_secret_is_found_plain_url_encoded_and_in_base64_at_any_offset(secret, before, after):
    raw = before + secret.encode() + after
    for text in (
        f"Authorization: Basic {base64.b64encode(raw).decode()}",
        f"token={base64.urlsafe_b64encode(raw).decode()}&x=1",
        f"GET /x?key={urllib.parse.quote(secret, safe='')}",
        f"body: a={urllib.parse.quote_plus(secret)}",
        f"logged {secret}!",
    ):
        assert find_secrets({"log": text}, {"s": secret}), text


def test_a_clean_text_and_a_near_miss_are_not_findings():
    basic = base64.b64encode(f"{OMNI_USER}:not-the-password".encode()).decode()
    texts = {"log": f"Authorization: Basic {basic}; token {ERP_TOKEN[:-1]}X; key ***"}
    assert find_secrets(texts, CONFIGURED_SECRETS) == []


# --- the life cycle ----------------------------------------------------------------------------


def _push(inbox_url: str, *postings: dict) -> None:
    report = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.01).push(postings)
    assert report.accepted == len(postings), report.rejected


def _xcoms_and_metadata(run_ids: set[str]) -> tuple[dict[str, str], list[dict]]:
    """Rows of every Airflow metadata table that name one of our runs (XComs among them), as scan texts."""
    metadata_rows = database_rows(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    texts = {}
    for name, rows in metadata_rows.items():
        ours = [r for r in rows if r.get("run_id") in run_ids]
        if ours:
            texts[f"metadata table {name}"] = as_text(ours)
    xcoms = [r for r in metadata_rows["xcom"] if r["run_id"] in run_ids]
    texts["xcom values"] = as_text([r["value"] for r in xcoms])
    return texts, xcoms


@pytest.mark.integration
def test_no_secret_in_logs_ledger_or_xcoms_after_a_full_life_cycle(
    erp, omni, inbox, ledger_path, run_dag, capfd, caplog
):
    caplog.set_level(logging.DEBUG, logger="omni_erp")
    caplog.set_level(logging.INFO)
    home = Path(os.environ["AIRFLOW_HOME"])
    full, partial, cancelled, returned = (create_posting(930001 + n, f"FN00000093{n:02d}") for n in range(4))
    ledger = Ledger.sqlite(ledger_path)

    # Omni, misconfigured, presents one of our other secrets as its key: refused, and the refusal is logged.
    wrong = requests.post(f"{inbox}/postings", json=full, headers={"X-Api-Key": ERP_TOKEN}, timeout=10)
    assert wrong.status_code in (401, 403)
    _push(inbox, full, partial, cancelled, returned)
    erp.configure(fail_next=[503, "timeout"], timeout_s=2.5)  # F1 retries: errors get logged
    runs = [run_dag("omni_order_posting")()]

    wait_for_einvoices(4)
    omni.configure(fail_next=[500, 400])  # one upload retried, one refused (4xx: upload_failed, logged)
    runs.append(run_dag("erp_invoice_upload")())

    _push(
        inbox,
        cancel_posting(cancelled, 931001),
        complete_posting(full, 932001),
        complete_posting(partial, 932002, cancelled_after_invoice={SKU_A: 1}),
        return_posting(returned, 933001, return_order_code="RTN-SCAN-1",
                       units=[(item["channelSkuCode"], "PASS") for item in returned["orderItems"]]),
    )
    erp.configure(invoice_delay_s=0.0)  # credit notes are published as soon as the return order is booked
    runs += [run_dag(dag_id)() for dag_id in FLOWS[2:]]

    # The life cycle really happened: every DAG ran, and each path left its trace.
    assert [r.dag_id for r in runs] == list(FLOWS)
    # F2's state is left alone: the invoice Omni refused (400) is "upload_failed" either way.
    assert [r.state for r in runs if r.dag_id != "erp_invoice_upload"] == ["success"] * 4
    assert ledger.get_order(cancelled["orderCode"])["state"] == ORDER_CANCELLED
    assert ledger.get_order(full["orderCode"])["state"] == ORDER_COMPLETED
    assert ledger.get_order(partial["orderCode"])["state"] == ORDER_COMPLETED_WITH_RETURN
    assert [n["body"]["returnOrderId"] for n in omni.state()["credit_notes"]] == ["RTN-SCAN-1"]
    # Uploads run concurrently, so Omni's one 400 may hit the invoice of the order F3 later cancels.
    invoice_states = Counter(d["state"] for d in ledger.documents("invoice"))
    assert invoice_states[DOC_UPLOADED] == 3 and sum(invoice_states.values()) == 4
    assert invoice_states[DOC_UPLOAD_FAILED] + invoice_states[DOC_SKIPPED] == 1

    # Collect: task logs (files and captured output), every ledger table and column, metadata rows and XComs.
    out, err = capfd.readouterr()
    files = log_files(home / "logs") if (home / "logs").exists() else {}  # dag.test() writes none today
    texts = {"captured stdout": out, "captured stderr": err, "captured logging": caplog.text, **files}
    ledger_rows = database_rows(sqlite_url(ledger_path))
    texts |= {f"ledger table {name}": as_text(rows) for name, rows in ledger_rows.items()}
    metadata_texts, xcoms = _xcoms_and_metadata({r.run_id for r in runs})
    texts |= metadata_texts

    # A collector that collected nothing must not pass: the log of every task and of both hooks, every
    # ledger table (rows in each one the life cycle fills), an XCom of every task that succeeded.
    task_logs = "\n".join([out, err, *files.values()])
    tasks = {(dag_id, task.task_id): task for dag_id in FLOWS for task in run_dag(dag_id).dag.tasks}
    for (dag_id, task_id), task in tasks.items():
        cls = getattr(task, "operator_class", type(task))  # a mapped task logs as its operator's class
        logger = f"airflow.task.operators.{cls.__module__}.{cls.__name__}"
        assert logger in task_logs, f"no log line of {dag_id}.{task_id} was collected"
    assert "airflow.task.hooks.omni_erp.hooks.erp.ErpHook" in task_logs
    assert "airflow.task.hooks.omni_erp.hooks.omni.OmniHook" in task_logs
    assert "refused" in caplog.text and "inbox posting messageId=930001" in caplog.text  # the inbox's own log
    assert set(ledger_rows) >= set(tables.metadata.tables)
    for table in ("inbox_message", "ajio_order", "outbound_call", "erp_document", "shipment", "return_order", "sync_cursor"):
        assert ledger_rows[table], f"ledger table {table} is empty"
    succeeded = {(r.dag_id, ti.task_id) for r in runs for ti in r.get_task_instances() if ti.state == "success"}
    assert succeeded >= {key for key in tasks if key[0] != "erp_invoice_upload"} | {("erp_invoice_upload", "fetch_einvoices")}
    assert {(x["dag_id"], x["task_id"]) for x in xcoms} >= succeeded

    assert find_secrets(texts, CONFIGURED_SECRETS) == []
