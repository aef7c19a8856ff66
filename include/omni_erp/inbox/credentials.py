"""Increff's dynamic credentials for the inbox (domain.md 4.2): short-lived, HMAC-signed, stateless tokens.

The handshake, as Omni does it:

1. Omni posts to ``/omni/postings`` without credentials, or with an expired one: the inbox answers 401.
2. Omni calls its *Get Credential* endpoint, ``GET`` on the same URL with an empty body, sending the
   static headers configured in Increff for that call: ``authUsername`` and ``authPassword`` (Increff's
   own header names), whose values are the extras ``credential_username`` / ``credential_password`` of
   the ``omni_inbox`` connection. Both are compared in constant time; anything else is 401, no token.
3. The inbox answers 200 with a flat JSON map of headers, ``{"Authorization": "Bearer <token>"}``.
4. Omni retries the posting with those headers until the token expires, then starts again at 1.

A token is ``v1.<expires>.<nonce>.<signature>``: ``expires`` in Unix seconds, a random nonce, and
HMAC-SHA256 over the rest keyed with the ``token_secret`` extra of the ``omni_inbox`` connection. Nothing
is stored, so every API-server worker and host with the same connection accepts the same tokens. A token
that is expired, signed with another secret, altered, or claims a life longer than the configured
lifetime is refused with 401 and Omni fetches a new one. Changing ``token_secret`` revokes every token.
Tokens and secrets are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

TOKEN_VERSION = "v1"
TOKEN_HEADER = "Authorization"
TOKEN_SCHEME = "Bearer"
CREDENTIAL_USERNAME_HEADER = "authUsername"  # what Omni sends to Get Credential (configured in Increff)
CREDENTIAL_PASSWORD_HEADER = "authPassword"
DEFAULT_TOKEN_LIFETIME_S = 900
MAX_TOKEN_LIFETIME_S = 24 * 3600
MIN_SECRET_LENGTH = 32
MAX_TOKEN_LENGTH = 200
CLOCK_SKEW_S = 60  # hosts' clocks may differ this much when one issues and another verifies
_TOKEN_RE = re.compile(r"^v1\.(\d{1,12})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$")
_SIGNING_CONTEXT = b"omni-erp inbox token|"

# Keys of the omni_inbox connection's extra that configure the dynamic flow.
EXTRA_USERNAME = "credential_username"
EXTRA_PASSWORD = "credential_password"
EXTRA_SECRET = "token_secret"
EXTRA_LIFETIME = "token_lifetime_s"

TokenVerdict = Literal["valid", "expired", "invalid"]


@dataclass(frozen=True)
class DynamicCredentials:
    """What the inbox needs to run Increff's dynamic flow; secrets are left out of ``repr``.

    :param username: value Omni sends in ``authUsername`` to the Get Credential endpoint.
    :param password: value Omni sends in ``authPassword`` to the Get Credential endpoint.
    :param token_secret: HMAC key the tokens are signed with (at least 32 characters).
    :param lifetime_s: how long an issued token is accepted, in seconds (default 15 minutes).
    """

    username: str
    password: str = field(repr=False)
    token_secret: str = field(repr=False)
    lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S

    def __post_init__(self) -> None:
        if not self.username or not self.password:
            raise ValueError("dynamic credentials need both a username and a password for the Get Credential call")
        if len(self.token_secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"{EXTRA_SECRET} must be at least {MIN_SECRET_LENGTH} characters")
        if isinstance(self.lifetime_s, bool) or not isinstance(self.lifetime_s, int):
            raise ValueError(f"{EXTRA_LIFETIME} must be a whole number of seconds")
        if not 1 <= self.lifetime_s <= MAX_TOKEN_LIFETIME_S:
            raise ValueError(f"{EXTRA_LIFETIME} must be between 1 and {MAX_TOKEN_LIFETIME_S} seconds")

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> DynamicCredentials | None:
        """Read the dynamic-flow settings from the ``omni_inbox`` connection's extra.

        :returns: None when none of them is set (the dynamic flow is off).
        :raises ValueError: when only some are set, or a value is unusable (the message names the key, never a value).
        """
        keys = (EXTRA_USERNAME, EXTRA_PASSWORD, EXTRA_SECRET)
        present = [key for key in keys if extra.get(key)]
        if not present and extra.get(EXTRA_LIFETIME) is None:
            return None
        missing = [key for key in keys if key not in present]
        if missing:
            raise ValueError(f"dynamic credentials are partly configured: set {', '.join(missing)} in the extra too")
        lifetime = extra.get(EXTRA_LIFETIME, DEFAULT_TOKEN_LIFETIME_S)
        if isinstance(lifetime, str) and lifetime.strip().isdigit():
            lifetime = int(lifetime)
        return cls(
            username=str(extra[EXTRA_USERNAME]),
            password=str(extra[EXTRA_PASSWORD]),
            token_secret=str(extra[EXTRA_SECRET]),
            lifetime_s=lifetime,
        )

    def login_matches(self, username: str, password: str) -> bool:
        """Both values compared in constant time (both comparisons always run)."""
        user_ok = hmac.compare_digest(username.encode(), self.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok & password_ok

    def issue(self, clock: Callable[[], float] = time.time) -> str:
        """A new token valid for ``lifetime_s`` from ``clock()``."""
        expires = int(clock()) + self.lifetime_s
        nonce = _b64(secrets.token_bytes(12))
        payload = f"{TOKEN_VERSION}.{expires}.{nonce}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, clock: Callable[[], float] = time.time) -> TokenVerdict:
        """``valid``, ``expired`` (signed by us, out of date), or ``invalid`` (malformed, other secret, altered)."""
        match = _TOKEN_RE.match(token) if len(token) <= MAX_TOKEN_LENGTH else None
        if match is None:
            return "invalid"
        payload, signature = token.rsplit(".", 1)
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return "invalid"
        expires, now = int(match.group(1)), clock()
        if now >= expires:
            return "expired"
        # Signed by us, but with a longer life than allowed now (the lifetime was shortened): refuse it.
        if expires > now + self.lifetime_s + CLOCK_SKEW_S:
            return "invalid"
        return "valid"

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self.token_secret.encode(), _SIGNING_CONTEXT + payload.encode(), hashlib.sha256).digest()
        return _b64(digest)


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None for any other scheme."""
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == TOKEN_SCHEME.lower() else None


def credential_headers(token: str) -> dict[str, str]:
    """The flat header map the Get Credential endpoint answers with (domain.md 4.2)."""
    return {TOKEN_HEADER: f"{TOKEN_SCHEME} {token}"}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
