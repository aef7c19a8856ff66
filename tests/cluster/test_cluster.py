"""make cluster at a small size: two Celery workers, a sharded F1 run with one worker SIGKILLed mid-booking, the
life cycle through F2-F4, and ledger = ERP = Omni one to one (issue 9.2 and 9.3)."""

from __future__ import annotations

import pytest

from omni_erp.cluster.__main__ import Driver, life_cycle, reconcile
from omni_erp.cluster.stack import CeleryCluster

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]


def test_two_workers_book_every_order_once_when_one_is_killed_mid_booking(tmp_path):
    with CeleryCluster(tmp_path / "cluster", workers=2, seed=5) as cluster:
        cluster.erp_config(latency_ms=200, max_concurrency=8)  # slow enough that the kill lands mid-batch
        for dag_id in ("omni_order_posting", "erp_invoice_upload", "omni_order_cancellation", "omni_order_completion"):
            cluster.set_paused(dag_id, True)
        # max_in_flight 1: each shard books one order at a time, so the kill lands mid-batch.
        driver = Driver(cluster, seed=5, max_in_flight=1)
        plain = driver.measure_f1(40, workers=2, shards=2)
        assert (plain.state, plain.booked) == ("success", len(driver.creates))

        killed = driver.measure_f1(60, workers=2, shards=2, kill_after=0.2)
        assert cluster.killed, "a worker was killed while it booked"
        assert max(killed.tries.values()) >= 2, f"the killed shard was retried on the other worker: {killed.tries}"
        assert killed.state == "success"

        life_cycle(driver)
        mismatches = reconcile(driver)
    assert mismatches == dict.fromkeys(mismatches, 0)
