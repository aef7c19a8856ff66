"""Operators that take work from the Omni inbox (postings stored by the inbox endpoint)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from omni_erp.operators.base import LedgerOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class OmniInboxClaimOperator(LedgerOperator):
    """Claim a batch of pending inbox postings of the given event types for this run.

    Safe when two workers claim at once (no posting is handed out twice) and when the task is
    retried (the same batch is returned again). Postings of a crashed run are reclaimed once their
    lease expires.

    :param event_types: ``eventType`` values to claim (templated).
    :param limit: most postings to claim in one run (templated).
    :param lease_minutes: how long a claim protects its postings from other runs.
    """

    template_fields = (*LedgerOperator.template_fields, "event_types", "limit")

    def __init__(self, *, event_types: list[str], limit: int | str = 500, lease_minutes: int = 30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.event_types = event_types
        self.limit = limit
        self.lease_minutes = lease_minutes

    def execute(self, context: Context) -> dict[str, Any]:
        claimed = self.ledger.claim_postings(
            event_types=list(self.event_types),
            batch_id=self.batch_id,
            limit=int(self.limit),
            lease=timedelta(minutes=self.lease_minutes),
        )
        by_type = Counter(p.event_type for p in claimed)
        redelivered = sum(1 for p in claimed if p.attempts > 0)
        self.log.info(
            "Claimed %d posting(s) for batch %s: %s (%d previously deferred)",
            len(claimed),
            self.batch_id,
            dict(by_type) or "none",
            redelivered,
        )
        return {"batch_id": self.batch_id, "claimed": len(claimed), "by_event_type": dict(by_type), "retried": redelivered}
