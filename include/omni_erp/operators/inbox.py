"""Operators that take work from the Omni inbox (postings stored by the inbox endpoint)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from omni_erp.operators.base import LedgerOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

# How many postings a dry run's claim names in its log and XCom.
FIRST_SHOWN = 10


class OmniInboxClaimOperator(LedgerOperator):
    """Claim a batch of pending inbox postings of the given event types for this run.

    Safe when two workers claim at once (no posting is handed out twice) and when the task is
    retried (the same batch is returned again, its lease renewed). Each claim holds for
    ``lease_minutes``; the flow's next tasks renew it while they work, so postings of a run that died
    are reclaimed by a later run once the lease expires (``operators.base.DEFAULT_LEASE_MINUTES``).

    The run's scope (``run_scope``) narrows the claim: ``order_codes`` to those orders, a backfill's window to
    the postings received in it; a selective claim also replays the dead-lettered postings it selects
    (``Ledger.claim_batch``). In a dry run nothing is claimed: the task logs what it would claim.

    :param event_types: ``eventType`` values to claim (templated).
    :param limit: most postings to claim in one run (templated).
    :param lease_minutes: how long a claim protects its postings from other runs unless renewed.
    """

    template_fields = (*LedgerOperator.template_fields, "event_types")  # limit: LedgerOperator's

    def __init__(self, *, event_types: list[str], limit: int | str = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.event_types = event_types
        self.limit = limit

    def execute(self, context: Context) -> dict[str, Any]:
        lease, scope = self.lease, self.scope
        if scope.dry_run:
            return self._dry_run()
        self._warn_if_lease_is_shorter_than_a_call(lease)
        # A page per transaction and counts only: the next tasks stream the batch (iter_claimed_postings).
        claimed = self.ledger.claim_batch(
            event_types=list(self.event_types),
            batch_id=self.batch_id,
            limit=self.dry_run_limit(),
            lease=lease,
            order_codes=scope.order_codes,
            window=scope.window,
        )
        self.log.info(
            "Claimed %d posting(s) for batch %s for %s unless renewed: %s (%d previously deferred, %d dead-lettered "
            "ones replayed)",
            claimed.claimed,
            self.batch_id,
            lease,
            claimed.by_event_type or "none",
            claimed.retried,
            claimed.replayed,
        )
        return {
            "batch_id": self.batch_id,
            "claimed": claimed.claimed,
            "by_event_type": claimed.by_event_type,
            "retried": claimed.retried,
            "replayed": claimed.replayed,
        }

    def _dry_run(self) -> dict[str, Any]:
        """Log and return what a claim would take now (``Ledger.select_postings``); claim nothing."""
        scope = self.scope
        selected = self.ledger.select_postings(
            event_types=list(self.event_types), limit=self.dry_run_limit(), order_codes=scope.order_codes, window=scope.window
        )
        by_type = dict(Counter(p.event_type for p in selected))
        replayed = [p for p in selected if p.replayed]
        retried = sum(1 for p in selected if p.attempts > 0 and not p.replayed)
        first = [f"{p.message_id} ({p.business_key})" for p in selected[:FIRST_SHOWN]]
        self.log.info(
            "DRY RUN would claim %d posting(s): %s (%d previously deferred, %d dead-lettered ones would be replayed%s); "
            "first: %s",
            len(selected),
            by_type or "none",
            retried,
            len(replayed),
            f": {', '.join(f'{p.message_id} ({p.business_key})' for p in replayed[:FIRST_SHOWN])}" if replayed else "",
            ", ".join(first) or "none",
        )
        return {
            "batch_id": self.batch_id,
            "dry_run": True,
            "would_claim": len(selected),
            "by_event_type": by_type,
            "retried": retried,
            "would_replay": len(replayed),
            "first": [{"message_id": p.message_id, "order_code": p.business_key} for p in selected[:FIRST_SHOWN]],
        }

    def _warn_if_lease_is_shorter_than_a_call(self, lease: timedelta) -> None:
        """Warn when the HTTP settings let the time between two renewals come close to the lease.

        Renewals come at most a tenth of the lease apart plus one HTTP attempt and the wait before it
        (``DEFAULT_LEASE_MINUTES``); below twice that, a live run could lose its claims to another run.
        """
        from omni_erp.hooks.base import RetryPolicy

        policy = RetryPolicy.from_env()
        one_attempt = timedelta(seconds=policy.connect_timeout_s + policy.read_timeout_s + policy.max_delay_s)
        longest_gap = lease / 10 + one_attempt
        if lease < 2 * longest_gap:
            # lease >= 2 * (lease / 10 + one_attempt)  <=>  lease >= 2.5 * one_attempt
            self.log.warning(
                "Claim lease %s is short for the HTTP settings (OMNI_ERP_HTTP_* timeouts and delays): renewals "
                "may be up to %s apart; set lease_minutes to at least %.1f",
                lease,
                longest_gap,
                2.5 * one_attempt.total_seconds() / 60,
            )
