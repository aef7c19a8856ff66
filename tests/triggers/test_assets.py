"""The flows' schedules: each is woken by its watched asset, keeps its cron as a safety net, and the produced
assets chain F1 -> F2 -> F4 (the lineage the UI draws)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_erp import assets

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
FLOWS = {
    # dag_id: (assets that wake it, cron kept as the safety net)
    "omni_order_posting": ({"omni_postings_order_create"}, "*/5 * * * *"),
    "erp_invoice_upload": ({"erp_einvoice_feed", "erp_sales_orders"}, "*/5 * * * *"),
    "omni_order_cancellation": ({"omni_postings_order_cancel"}, "*/5 * * * *"),
    "omni_order_completion": ({"omni_postings_order_complete", "invoiced_orders"}, "*/15 * * * *"),
    "omni_return_credit_note": ({"omni_postings_return_complete", "erp_credit_note_feed"}, "*/15 * * * *"),
}


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    return bag.dags


def leaves(condition) -> list:
    """The assets of an asset condition (``a | b`` nests as AssetAny objects)."""
    return [a for o in condition.objects for a in leaves(o)] if hasattr(condition, "objects") else [condition]


def waking_assets(dag) -> set[str]:
    return {asset.name for asset in leaves(dag.timetable.asset_condition)}


def produced(dag) -> set[str]:
    return {outlet.name for task in dag.tasks for outlet in task.outlets}


@pytest.mark.parametrize("dag_id", sorted(FLOWS))
def test_each_flow_wakes_on_any_of_its_assets_and_on_its_cron(dags, dag_id):
    from airflow.sdk import AssetAny, AssetOrTimeSchedule

    wakers, cron = FLOWS[dag_id]
    timetable = dags[dag_id].timetable

    assert isinstance(timetable, AssetOrTimeSchedule)
    assert timetable.timetable.expression == cron
    assert waking_assets(dags[dag_id]) == wakers
    # any one of them, not all: a posting alone must start F1
    assert len(wakers) == 1 or isinstance(timetable.asset_condition, AssetAny)


def test_the_lineage_runs_from_f1_through_f2_to_f4(dags):
    assert produced(dags["omni_order_posting"]) & waking_assets(dags["erp_invoice_upload"]) == {"erp_sales_orders"}
    assert produced(dags["erp_invoice_upload"]) & waking_assets(dags["omni_order_completion"]) == {"invoiced_orders"}


def test_every_watched_asset_runs_a_trigger_in_the_triggerer(dags):
    from airflow.triggers.base import BaseEventTrigger

    watched = {
        asset.name: asset
        for dag_id in FLOWS
        for asset in leaves(dags[dag_id].timetable.asset_condition)
        if asset.watchers
    }

    assert set(watched) == {
        "omni_postings_order_create", "omni_postings_order_cancel", "omni_postings_order_complete",
        "omni_postings_return_complete", "erp_einvoice_feed", "erp_credit_note_feed",
    }
    assert all(isinstance(w.trigger, BaseEventTrigger) for a in watched.values() for w in a.watchers)


def test_the_feed_watchers_read_the_cursors_the_feed_readers_advance():
    from omni_erp.operators.credit_notes import ErpCreditNoteFetchOperator
    from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator

    assert assets.EINVOICE_FEED.watchers[0].trigger.cursor_name == ErpEInvoiceFetchOperator.cursor_name
    assert assets.CREDIT_NOTE_FEED.watchers[0].trigger.cursor_name == ErpCreditNoteFetchOperator.cursor_name


def test_wake_on_needs_an_asset():
    with pytest.raises(ValueError, match="at least one asset"):
        assets.wake_on(cron="*/5 * * * *")
