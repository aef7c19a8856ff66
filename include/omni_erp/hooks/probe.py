"""``test_connection`` for our hooks: one harmless call, one attempt, a short timeout, a plain verdict.

Airflow's connection form calls ``hook.test_connection()`` (the API server's "Test" button, or a worker
for an enqueued test) and shows the message to whoever clicked. So the probe must be quick (no retry
loop with backoff), must not change anything in the remote system, and its message must never carry
a secret: the connection's password and sensitive extras are blanked out of whatever the server said.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from omni_erp.exceptions import PayloadError, RemoteRejectedError, RemoteUnavailableError
from omni_erp.hooks.base import ConnectionConfigError, RetryPolicy

# One attempt: a person is waiting for the answer in the connection form.
PROBE_POLICY = RetryPolicy(max_attempts=1, base_delay_s=0.0, max_delay_s=0.0, connect_timeout_s=5.0, read_timeout_s=10.0)
# A feed cursor beyond any real document: the ERP answers an empty page, so the probe reads nothing.
PROBE_CURSOR = 10**15
SENSITIVE_EXTRA_KEYS = frozenset({"credential_password", "token_secret", "api_secret", "token"})


def secrets_of(connection: Any) -> list[str]:
    """The values a probe message must never show: the password and the sensitive extras."""
    values = [connection.password or ""] if connection is not None else []
    extra = (getattr(connection, "extra_dejson", None) or {}) if connection is not None else {}
    values += [str(v) for k, v in extra.items() if k in SENSITIVE_EXTRA_KEYS and v]
    return [v for v in values if len(v) >= 3]


def redact(message: str, secrets: Collection[str]) -> str:
    """``message`` with every secret replaced by ``***`` (longest first, so no fragment survives)."""
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def probe(
    hook: Any,
    system: str,
    call: Callable[[], Any],
    *,
    ok_message: str,
    accepted_statuses: Collection[int] = (),
) -> tuple[bool, str]:
    """Run ``call`` once through ``hook`` and turn the outcome into Airflow's ``(status, message)``.

    :param hook: a ``RetryingJsonHook``; its retry policy is set to ``PROBE_POLICY`` for the probe.
    :param system: how the message names the remote system ("Increff Omni", "the ERP").
    :param call: the harmless request.
    :param ok_message: the message when the call answered as hoped.
    :param accepted_statuses: 4xx answers that still prove the connection works (e.g. Omni refusing an
        empty probe document with 400 after accepting the credentials).
    """
    hook.retry_policy = PROBE_POLICY
    try:
        connection = hook.get_connection(getattr(hook, hook.conn_name_attr))
    except Exception as exc:  # noqa: BLE001 - the form shows why, whatever it was
        return False, f"connection not found or unreadable: {type(exc).__name__}"
    secrets = secrets_of(connection)
    try:
        call()
    except RemoteRejectedError as exc:
        if exc.status in accepted_statuses:
            return True, redact(ok_message, secrets)
        if exc.status in (401, 403):
            return False, redact(f"{system} refused the credentials (HTTP {exc.status}): {exc.message}", secrets)
        if exc.status == 404:
            return False, redact(f"{system} answered 404: is the base URL right? ({exc.message})", secrets)
        return False, redact(f"{system} refused the probe (HTTP {exc.status}): {exc.message}", secrets)
    except RemoteUnavailableError as exc:
        return False, redact(f"{system} is unreachable or failing: {exc.message}", secrets)
    except (ConnectionConfigError, PayloadError) as exc:
        return False, redact(f"connection is incomplete: {exc}", secrets)
    except Exception as exc:  # noqa: BLE001 - e.g. an unparsable answer: the form shows the class and text
        return False, redact(f"{system} probe failed: {type(exc).__name__}: {exc}"[:500], secrets)
    return True, redact(ok_message, secrets)
