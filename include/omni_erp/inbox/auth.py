"""Who may call the inbox: Omni with its static API key or a dynamic token, and nobody else.

Every route requires one of two credentials, except ``GET /health`` without any credential, which
answers a bare liveness ``{"status": "ok"}``:

* the static key, the password of connection ``omni_inbox``, in header ``X-Api-Key``;
* a token from the Get Credential endpoint (``GET /omni/postings``), in ``Authorization: Bearer``
  (Increff's dynamic flow, see ``omni_erp.inbox.credentials``; configured by the extras
  ``credential_username``, ``credential_password``, ``token_secret`` and ``token_lifetime_s``).

Secrets are compared in constant time. Each refusal is logged as one WARNING line with the route, the
client address, the reason and which headers came with how many characters - never a presented value.
An inbox with neither a key nor dynamic credentials configured refuses every request with 503 (fail
closed; Omni keeps the posting and retries), and so does one whose configuration cannot be read or is
invalid.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omni_erp import settings
from omni_erp.inbox.credentials import (
    CREDENTIAL_PASSWORD_HEADER,
    CREDENTIAL_USERNAME_HEADER,
    TOKEN_HEADER,
    DynamicCredentials,
    bearer_token,
    credential_headers,
)

log = logging.getLogger(__name__)

CONNECTION_CACHE_S = 60.0  # a rotated key takes effect within a minute without a connection lookup per request

ApiKeySource = str | Callable[[], str | None] | None
DynamicSource = DynamicCredentials | Callable[[], DynamicCredentials | None] | None


class AuthRefused(Exception):
    """The request is refused; ``status`` and ``message`` go to the caller, ``outcome`` to the inbox log."""

    def __init__(self, status: int, message: str, *, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


@dataclass(frozen=True)
class InboxAuth:
    """The credentials the inbox accepts right now (secrets left out of ``repr``).

    :param api_key: the static key, or None when only the dynamic flow is configured.
    :param dynamic: the dynamic-flow settings, or None when it is off.
    """

    api_key: str | None = field(default=None, repr=False)
    dynamic: DynamicCredentials | None = None

    @property
    def configured(self) -> bool:
        return bool(self.api_key) or self.dynamic is not None

    def summary(self) -> dict[str, bool]:
        """Which methods are on, for the authenticated health answer."""
        return {"staticKey": bool(self.api_key), "dynamicCredentials": self.dynamic is not None}


@dataclass(frozen=True)
class Caller:
    """Where a request came from, for the refusal log line."""

    route: str
    client: str


def resolve(api_key: ApiKeySource, dynamic: DynamicSource) -> InboxAuth:
    """Read both sources now (callables are called; they may do I/O, so run this in a thread).

    :raises AuthRefused: 503 when a source fails or is misconfigured, or when nothing is configured.
    """
    try:
        key = api_key() if callable(api_key) else api_key
        dynamic_credentials = dynamic() if callable(dynamic) else dynamic
    except ValueError as exc:  # a misconfigured connection: say what to fix in the log, never a value
        log.error("inbox: the inbox credentials are misconfigured: %s", exc)
        raise AuthRefused(503, "inbox is misconfigured; retry later", outcome="misconfigured") from None
    except Exception:  # a failing lookup (e.g. metadata DB down) must not become a 500 or a 401
        log.warning("inbox: could not read the inbox credentials", exc_info=True)
        raise AuthRefused(503, "inbox not ready; retry", outcome="key_unavailable") from None
    auth = InboxAuth(api_key=key or None, dynamic=dynamic_credentials)
    if not auth.configured:
        log.error("inbox: no API key and no dynamic credentials configured; refusing every request")
        raise AuthRefused(503, "inbox is not configured; retry later", outcome="no_key")
    return auth


def resolve_cached(api_key: ApiKeySource, dynamic: DynamicSource) -> InboxAuth | None:
    """``resolve``'s answer when it needs no I/O, so it may run on the event loop; None when it may need I/O.

    That is when each source is a plain value or a method of a ``ConnectionAuthSource`` whose cache is
    fresh (the deployed inbox, between its once-a-minute lookups): a thread hop per request costs more
    than the rest of authenticating. Any other callable may do I/O, and an unconfigured result goes
    through ``resolve`` for its refusal and log line.
    """
    owner = getattr(api_key, "__self__", None)
    if (
        isinstance(owner, ConnectionAuthSource)
        and getattr(api_key, "__func__", None) is ConnectionAuthSource.api_key
        and getattr(dynamic, "__self__", None) is owner
        and getattr(dynamic, "__func__", None) is ConnectionAuthSource.dynamic_credentials
    ):
        return owner.cached()  # both from one connection (as deployed): its cached answer as it is
    key = _cached(api_key)
    dynamic_credentials = _cached(dynamic)
    if key is _NOT_CACHED or dynamic_credentials is _NOT_CACHED:
        return None
    auth = InboxAuth(api_key=key or None, dynamic=dynamic_credentials)
    return auth if auth.configured else None


def presents_credentials(headers: Mapping[str, str], api_key_header: str) -> bool:
    """True when the request carries any header that could authenticate it."""
    return any(headers.get(name) for name in (api_key_header, TOKEN_HEADER))


def authenticate(
    headers: Mapping[str, str],
    auth: InboxAuth,
    caller: Caller | Callable[[], Caller],
    *,
    api_key_header: str = settings.INBOX_API_KEY_HEADER,
    clock: Callable[[], float] = time.time,
) -> str:
    """Accept the request when any credential it presents is valid; returns ``api_key`` or ``token``.

    ``caller`` may be a function returning it, called only to log a refusal.

    :raises AuthRefused: 401 otherwise, after logging why.
    """
    given_key = headers.get(api_key_header, "")
    token = bearer_token(headers.get(TOKEN_HEADER, ""))
    reasons = []
    if given_key:
        # compare_digest needs equal types; bytes also allow non-ASCII keys.
        if auth.api_key and hmac.compare_digest(given_key.encode(), auth.api_key.encode()):
            return "api_key"
        reasons.append("wrong API key" if auth.api_key else "API key presented but no static key is configured")
    if token:
        verdict = auth.dynamic.verify(token, clock) if auth.dynamic else "unconfigured"
        if verdict == "valid":
            return "token"
        reasons.append({"expired": "expired token", "invalid": "invalid token"}.get(verdict, "token presented but dynamic credentials are off"))
    who = caller() if callable(caller) else caller
    _log_refusal(who, "; ".join(reasons) or "no credentials", headers, (api_key_header, TOKEN_HEADER))
    raise AuthRefused(401, _missing_credentials_message(auth, api_key_header), outcome="unauthorized")


def issue_token(
    headers: Mapping[str, str], auth: InboxAuth, caller: Caller, *, clock: Callable[[], float] = time.time
) -> dict[str, str]:
    """The Get Credential call: check Omni's login headers, answer the header map with a new token.

    :raises AuthRefused: 401 (logged, no token issued) for a wrong or missing login, or when the dynamic
        flow is off.
    """
    username = headers.get(CREDENTIAL_USERNAME_HEADER, "")
    password = headers.get(CREDENTIAL_PASSWORD_HEADER, "")
    if auth.dynamic is None:
        reason = "Get Credential called but dynamic credentials are not configured"
    elif not (username and password):
        reason = "no login for Get Credential"
    elif auth.dynamic.login_matches(username, password):
        log.info("inbox: issued a token to %s valid for %d s", caller.client, auth.dynamic.lifetime_s)
        return credential_headers(auth.dynamic.issue(clock))
    else:
        reason = "wrong login for Get Credential"
    _log_refusal(caller, reason, headers, (CREDENTIAL_USERNAME_HEADER, CREDENTIAL_PASSWORD_HEADER))
    raise AuthRefused(
        401,
        f"missing or invalid {CREDENTIAL_USERNAME_HEADER}/{CREDENTIAL_PASSWORD_HEADER} for the Get Credential call",
        outcome="unauthorized",
    )


def _missing_credentials_message(auth: InboxAuth, api_key_header: str) -> str:
    ways = []
    if auth.api_key:
        ways.append(f"the API key in header {api_key_header}")
    if auth.dynamic:
        ways.append(f"a token from GET on this URL in header {TOKEN_HEADER}")
    return "missing, invalid or expired credentials: send " + " or ".join(ways)


def _log_refusal(caller: Caller, reason: str, headers: Mapping[str, str], names: tuple[str, ...]) -> None:
    # Header names and lengths only: the presented values may be someone's real secret, mistyped.
    presented = ", ".join(f"{name} ({len(headers[name])} chars)" for name in names if headers.get(name)) or "none"
    log.warning("inbox: refused %s from %s: %s; credential headers: %s", caller.route, caller.client, reason, presented)


class ConnectionAuthSource:
    """The inbox credentials read from a connection, cached for ``ttl`` seconds; an empty result is not cached.

    ``password`` is the static key; the extra may configure the dynamic flow (``DynamicCredentials.from_extra``).
    Use ``api_key`` and ``dynamic_credentials`` as the two sources of ``InboxSettings``; they share one lookup.

    :param conn_id: the inbox connection.
    :param lookup: ``conn_id -> connection or None``; default ``omni_erp.connections.get_connection``.
    :param ttl: seconds a configured result is reused.
    :param clock: monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        conn_id: str = settings.INBOX_CONN_ID,
        *,
        lookup: Callable[[str], Any | None] | None = None,
        ttl: float = CONNECTION_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn_id = conn_id
        self._lookup = lookup
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._auth: InboxAuth | None = None
        self._expires = 0.0

    def current(self) -> InboxAuth:
        """The connection's credentials, re-read when the cache expired or nothing was configured.

        :raises ValueError: when the extra configures the dynamic flow only partly or badly.
        """
        with self._lock:
            if self._auth is None or not self._auth.configured or self._clock() >= self._expires:
                self._auth = self._read()
                self._expires = self._clock() + self._ttl
            return self._auth

    def cached(self) -> InboxAuth | None:
        """What ``current`` returns now without reading the connection, or None when it would read it."""
        with self._lock:
            if self._auth is not None and self._auth.configured and self._clock() < self._expires:
                return self._auth
            return None

    def api_key(self) -> str | None:
        return self.current().api_key

    def dynamic_credentials(self) -> DynamicCredentials | None:
        return self.current().dynamic

    def _read(self) -> InboxAuth:
        lookup = self._lookup
        if lookup is None:
            from omni_erp.connections import get_connection as lookup
        conn = lookup(self._conn_id)
        if conn is None:
            return InboxAuth()
        return InboxAuth(api_key=conn.password or None, dynamic=DynamicCredentials.from_extra(conn.extra_dejson or {}))


_NOT_CACHED: Any = object()
# The ConnectionAuthSource methods InboxSettings takes as sources, and the InboxAuth field each returns.
_CACHED_FIELDS = {ConnectionAuthSource.api_key: "api_key", ConnectionAuthSource.dynamic_credentials: "dynamic"}


def _cached(source: Any) -> Any:
    """The source's value if it can be had without I/O, else ``_NOT_CACHED``."""
    if not callable(source):
        return source
    owner, field_name = getattr(source, "__self__", None), _CACHED_FIELDS.get(getattr(source, "__func__", None))
    if field_name is None or not isinstance(owner, ConnectionAuthSource):
        return _NOT_CACHED
    auth = owner.cached()
    return _NOT_CACHED if auth is None else getattr(auth, field_name)
