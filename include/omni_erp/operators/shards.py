"""Sharded push steps (issue 9.1): a run's batch split over mapped tasks, so Celery spreads it over its workers.

The run keeps one batch (one claim, one report); its push task is mapped over the shard ids this
module's operator returns, and shard ``k`` of ``n`` works the postings with ``id % n == k``
(``Ledger.iter_claimed_postings(..., shard=k, shards=n)``), so no two shards touch the same posting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

MAX_SHARDS = 16


def parse_shards(value: Any) -> int:
    """The ``shards`` DAG param as an int from 1 to ``MAX_SHARDS``; None or ``""`` means 1 (unsharded).

    :raises ValueError: not a whole number in range.
    """
    if value is None or value == "":
        return 1
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"shards must be a whole number from 1 to {MAX_SHARDS}, got {value!r}") from None
    if not 1 <= number <= MAX_SHARDS:
        raise ValueError(f"shards must be a whole number from 1 to {MAX_SHARDS}, got {value!r}")
    return number


class ShardIdsOperator(BaseOperator):
    """Return ``[0, 1, ..., shards - 1]``: the list the push task is mapped over (no I/O).

    :param shards: how many shards (templated, 1 to ``MAX_SHARDS``; the DAG param ``shards``).
    """

    template_fields = ("shards",)
    ui_color = "#f1f3f4"

    def __init__(self, *, shards: int | str = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = shards

    def execute(self, context: Context) -> list[int]:
        shards = parse_shards(self.shards)
        self.log.info("Pushing this run's batch in %d shard(s)", shards)  # the log says why there are n mapped tasks
        return list(range(shards))
