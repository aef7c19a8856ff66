"""The inbox Omni posts to: authenticate, validate, store once per messageId, answer (domain.md 4.4)."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from omni_erp import settings
from omni_erp.inbox import auth
from omni_erp.inbox.credentials import DynamicCredentials
from omni_erp.inbox.ledger_source import DEFAULT_RECHECK_S, CurrentLedger
from omni_erp.inbox.writer import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, PostingWriter
from omni_erp.models.omni import ReturnOrderPosting, parse_posting
from omni_erp.states import IGNORED, PENDING, STAGE_INBOX

log = logging.getLogger(__name__)

URL_PREFIX = "/omni"  # where both the Airflow plugin and the standalone server mount the inbox
MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32  # nested arrays/objects; Increff's postings need 6
DEAD_LETTER_PAYLOAD_CHARS = 20_000  # what the dead-letter table keeps of a rejected body
DEAD_LETTER_PAYLOAD_BYTES = DEAD_LETTER_PAYLOAD_CHARS * 4  # UTF-8: at most 4 bytes a character
MAX_REPORTED_ERRORS = 5
_ACCEPTED_BODY = b'{"hasError":false}'  # what JSONResponse({"hasError": False}) renders, rendered once
# Smaller bodies (all real postings) are parsed on the event loop: a thread hop costs more than parsing them.
INLINE_PARSE_BYTES = 64 * 1024
DEAD_LETTER_STAGE = STAGE_INBOX
# application/json or a structured-syntax suffix (application/*+json), optionally with a UTF-8 charset.
_JSON_MEDIA_TYPE = re.compile(r"application/(?:json|[a-z0-9!#$&^_.+-]+\+json)")
# Characters no ledger backend stores alike: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Strict JSON in strict UTF-8 holds neither raw (control characters must be escaped in strings, and the
# decoder refuses surrogates), so only these escapes can bring one in; without a match there is none.
_ESCAPED_UNSTORABLE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


@dataclass
class InboxSettings:
    """How the inbox finds its credentials and its ledger; all are resolved on request, never at import.

    :param api_key: the static key Omni sends, or a zero-argument callable returning it (None = not
        configured), called on every request so a rotated key takes effect without a restart.
    :param ledger_url: SQLAlchemy URL of the ledger, or a zero-argument callable returning it (called
        again every ``ledger_recheck_s``); when None, the ledger of connection ``ledger_conn_id``,
        re-read every ``ledger_recheck_s`` and followed when it changes (``inbox.ledger_source``). A
        failed resolution is retried on the next request.
    :param ledger_conn_id: Airflow connection of the ledger, used when ``ledger_url`` is None.
    :param api_key_header: request header that carries the static key.
    :param max_body_bytes: larger bodies are answered 413.
    :param dynamic_credentials: Increff's dynamic flow (``inbox.credentials``), or a zero-argument
        callable returning it; None = off. With neither a key nor this, every request is refused.
    :param ledger_recheck_s: how often (seconds) the ledger configuration is re-read.
    :param connection_lookup: ``conn_id -> connection or None`` for the ledger connection; default
        ``omni_erp.connections.get_connection``.
    :param clock: wall clock (Unix seconds) that dates the dynamic tokens; injectable for tests.
    :param group_commit_max_batch: most postings the writer stores in one transaction (``inbox.writer``).
    :param group_commit_max_wait_s: how long a batch may wait for more postings (0: only those already queued).
    """

    api_key: str | Callable[[], str | None] | None
    ledger_url: str | Callable[[], str] | None = None
    ledger_conn_id: str = settings.LEDGER_CONN_ID
    api_key_header: str = settings.INBOX_API_KEY_HEADER
    max_body_bytes: int = MAX_BODY_BYTES
    dynamic_credentials: DynamicCredentials | Callable[[], DynamicCredentials | None] | None = None
    ledger_recheck_s: float = DEFAULT_RECHECK_S
    connection_lookup: Callable[[str], Any | None] | None = None
    clock: Callable[[], float] = time.time
    group_commit_max_batch: int = DEFAULT_MAX_BATCH
    group_commit_max_wait_s: float = DEFAULT_MAX_WAIT_S


class _Rejected(Exception):
    """A request we answer with an Increff error body; ``dead_letter`` marks rejections to record."""

    def __init__(self, status: int, message: str, *, outcome: str, dead_letter: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.dead_letter = dead_letter


def error_response(status: int, message: str) -> JSONResponse:
    """Increff's error shape (domain.md 4.4): Omni shows ``errorMessage`` to its users."""
    return JSONResponse({"hasError": True, "errorMessage": message}, status_code=status)


def _internal_error() -> JSONResponse:
    # A new response each time, never a shared one: middleware (e.g. GZip) edits the headers it sends in place.
    return error_response(500, "internal error in the inbox")


def install_error_handlers(app: FastAPI) -> None:
    """Answer FastAPI's own errors (404, 405, 422, 500) in Increff's shape too."""

    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _describe_errors(exc.errors()))

    async def server_error(_request: Request, _exc: Exception) -> JSONResponse:
        return _internal_error()

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)


PostingEndpoint = Callable[[Request], Awaitable[Response]]


class InboxApp(FastAPI):
    """A FastAPI app that answers ``POST <postings_path>`` itself, before the framework's per-request layers.

    Routing (Mount, Route) and the middleware stack cost the inbox more CPU than storing a posting, and
    the postings route needs none of it: its endpoint takes the request, returns the response and
    answers every refusal itself. So that one request goes straight to the endpoint, with the same 500
    answer for an unexpected exception as FastAPI's stack gives (``install_error_handlers``); every
    other request (and a POST to any other path, e.g. with a trailing slash) goes through FastAPI.
    The route stays registered too, for an app that reaches this one through its own routing.
    """

    postings_path: str | None = None  # matched against the path below ``root_path`` (a mount's prefix)
    postings_endpoint: PostingEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.postings_endpoint is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and _route_path(scope) == self.postings_path
        ):
            await _serve_directly(self.postings_endpoint, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The request's path below ``root_path`` (what a mount's prefix leaves), as Starlette's routing sees it."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


async def _serve_directly(endpoint: PostingEndpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one request with ``endpoint``; an unexpected exception is answered 500 and re-raised for the
    server to log, as Starlette's ``ServerErrorMiddleware`` does."""
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except Exception:
        await _internal_error()(scope, receive, send)
        raise
    await response(scope, receive, send)


class _LazyLedger(CurrentLedger):
    """The inbox's ledger: opened on first use, re-resolved when its configuration changes, failures not cached."""

    def __init__(self, inbox_settings: InboxSettings) -> None:
        super().__init__(
            inbox_settings.ledger_url,
            inbox_settings.ledger_conn_id,
            recheck_s=inbox_settings.ledger_recheck_s,
            lookup=inbox_settings.connection_lookup,
        )


def create_inbox_app(inbox_settings: InboxSettings) -> InboxApp:
    """Build the inbox app: ``POST /postings`` (one Omni posting per call), ``GET /postings`` (Increff's
    Get Credential call, ``inbox.credentials``) and ``GET /health``.

    It never calls the ERP: postings are stored in the ledger and processed by the DAGs
    (domain.md decision 2). Every route is authenticated (``inbox.auth``); only a bare liveness
    answer of ``/health`` is public. Mount it under ``/omni``.

    :param inbox_settings: credential and ledger sources.
    """
    app = InboxApp(title="Omni inbox", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    ledger = _LazyLedger(inbox_settings)
    # One writer per app, so per server process: concurrent postings share its transactions (inbox.writer).
    writer = PostingWriter(
        ledger.get,
        max_batch=inbox_settings.group_commit_max_batch,
        max_wait_s=inbox_settings.group_commit_max_wait_s,
    )
    app.state.posting_writer = writer

    # A plain Starlette route: the request is all it takes, so FastAPI's dependency solving per call is saved.
    async def receive_posting(request: Request) -> Response:
        started = time.monotonic()
        meta: dict[str, Any] = {}
        reason = ""
        try:
            await _authenticate(request, inbox_settings)
            _check_content_type(request)
            _check_declared_length(request, inbox_settings.max_body_bytes)
            await _read_body(request, inbox_settings.max_body_bytes, meta)
            if len(meta["raw"]) <= INLINE_PARSE_BYTES:
                record = _validate(meta)
            else:
                record = await run_in_threadpool(_validate, meta)
            outcome = await _store(writer, record, meta)
            response = Response(_ACCEPTED_BODY, media_type="application/json")
        except _Rejected as rejected:
            if rejected.dead_letter:
                await run_in_threadpool(_dead_letter, ledger, rejected.message, meta)
            outcome, reason = rejected.outcome, f" reason={rejected.message!r}"
            response = error_response(rejected.status, rejected.message)
        # Refusals at WARNING, so they stay visible at --log-level warning; the ledger keeps every accepted posting.
        level = logging.INFO if response.status_code < 400 else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "inbox posting messageId=%s eventType=%s businessKey=%s outcome=%s status=%d duration_ms=%d%s",
                _printable(meta.get("message_id")),
                _printable(meta.get("event_type")),
                _printable(meta.get("business_key")),
                outcome,
                response.status_code,
                (time.monotonic() - started) * 1000,
                reason,
            )
        return response

    app.add_route("/postings", receive_posting, methods=["POST"])
    app.postings_path, app.postings_endpoint = "/postings", receive_posting

    @app.get("/postings")
    async def issue_credentials(request: Request) -> JSONResponse:
        try:
            current = await _current_auth(inbox_settings)
            headers = auth.issue_token(request.headers, current, _caller(request), clock=inbox_settings.clock)
        except auth.AuthRefused as refused:
            return error_response(refused.status, refused.message)
        return JSONResponse(headers, headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        # Without credentials: liveness only, nothing about the ledger or the configuration (issue 7.4).
        if not auth.presents_credentials(request.headers, inbox_settings.api_key_header):
            return JSONResponse({"status": "ok"})
        try:
            current = await _authenticate(request, inbox_settings)
        except _Rejected as rejected:
            return error_response(rejected.status, rejected.message)
        try:
            details = await run_in_threadpool(ledger.describe)
        except Exception as exc:  # any failure to reach the ledger means "not healthy"; the traceback is logged
            log.warning("inbox health: ledger unavailable", exc_info=True)
            return error_response(503, f"ledger unavailable: {_health_reason(exc)}")
        return JSONResponse({"status": "ok", "ledger": details, "auth": current.summary()})

    return app


def build_standalone_app(inbox_settings: InboxSettings) -> InboxApp:
    """A parent app with the inbox mounted at ``/omni``, as the Airflow API server mounts the plugin.

    Used by ``python -m omni_erp.inbox``, tests and the demo, so Omni's configured URL is the same
    whichever way the inbox is served.

    :param inbox_settings: API key and ledger sources for the inbox.
    """
    app = InboxApp(title="Omni inbox (standalone)", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    inbox = create_inbox_app(inbox_settings)
    app.mount(URL_PREFIX, inbox)
    # Postings skip the parent's routing too, straight to the inbox's endpoint (same request, same answer).
    app.postings_path, app.postings_endpoint = URL_PREFIX + (inbox.postings_path or ""), inbox.postings_endpoint
    return app


async def _authenticate(request: Request, inbox_settings: InboxSettings) -> auth.InboxAuth:
    """Accept the static key or a dynamic token (``inbox.auth``); anything else is a rejection, never stored."""
    try:
        current = await _current_auth(inbox_settings)
        auth.authenticate(
            request.headers,
            current,
            lambda: _caller(request),  # built only for a refusal's log line
            api_key_header=inbox_settings.api_key_header,
            clock=inbox_settings.clock,
        )
    except auth.AuthRefused as refused:
        raise _Rejected(refused.status, refused.message, outcome=refused.outcome, dead_letter=False) from None
    return current


async def _current_auth(inbox_settings: InboxSettings) -> auth.InboxAuth:
    """The accepted credentials: from the sources' caches when that needs no I/O, else read in a thread."""
    cached = auth.resolve_cached(inbox_settings.api_key, inbox_settings.dynamic_credentials)
    if cached is not None:
        return cached
    return await run_in_threadpool(auth.resolve, inbox_settings.api_key, inbox_settings.dynamic_credentials)


def _caller(request: Request) -> auth.Caller:
    return auth.Caller(route=f"{request.method} {request.url.path}", client=request.client.host if request.client else "unknown")


def _health_reason(exc: Exception) -> str:
    # Our configuration errors say what to fix and carry no secret; driver errors may name hosts, so only their type.
    from omni_erp.ledger.engine import LedgerConfigError

    return str(exc) if isinstance(exc, LedgerConfigError) else type(exc).__name__


def _check_content_type(request: Request) -> None:
    """Postings are JSON (domain.md 3.1): ``application/json`` or ``application/*+json``, UTF-8 if a charset is given."""
    header = request.headers.get("content-type", "")
    if header == "application/json":  # what Omni sends
        return
    media_type, _, parameters = header.partition(";")
    charset = next(
        (value.strip().strip('"').lower() for name, _, value in (p.partition("=") for p in parameters.split(";"))
         if name.strip().lower() == "charset"),
        None,
    )
    if not _JSON_MEDIA_TYPE.fullmatch(media_type.strip().lower()) or charset not in (None, "utf-8", "utf8"):
        shown = ascii(header[:100]) if header else "none"
        raise _Rejected(415, f"Content-Type must be application/json (UTF-8), not {shown}", outcome="unsupported_media_type")


def _check_declared_length(request: Request, limit: int) -> None:
    """Refuse a body announced larger than ``limit`` before reading a byte of it."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _Rejected(413, f"posting larger than {limit} bytes", outcome="too_large")


async def _read_body(request: Request, limit: int, meta: dict[str, Any]) -> None:
    """Read the body into ``meta["raw"]``, stopping as soon as it exceeds ``limit`` bytes.

    An oversized body keeps only the prefix the dead letter records, so memory stays flat however
    many arrive.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            meta["raw"] = b"".join(chunks)[:DEAD_LETTER_PAYLOAD_BYTES]
            raise _Rejected(413, f"posting larger than {limit} bytes", outcome="too_large")
    meta["raw"] = b"".join(chunks)


def _validate(meta: dict[str, Any]) -> dict[str, Any]:
    """Validate the posting in ``meta["raw"]`` into ``Ledger.record_posting``'s arguments; adds the keys known so far to ``meta``."""
    data, text = _parse_json(meta["raw"])
    try:
        if _may_hold_unstorable(text):
            _check_storable(data)
        try:
            ceiling = settings.max_line_quantity()
        except ValueError:  # a deployment error must not read to Omni as bad data (a 400 is never retried)
            log.error("inbox: invalid setting; refusing all postings until it is fixed", exc_info=True)
            raise _Rejected(503, "inbox is misconfigured; retry later", outcome="misconfigured", dead_letter=False) from None
        try:
            posting = parse_posting(data, max_line_quantity=ceiling)
        except ValidationError as exc:
            raise _Rejected(400, _describe_errors(exc.errors()), outcome="rejected") from None
    except _Rejected:
        meta.update(_readable_keys(data))  # for the log line and the dead letter; an accepted posting has its own
        raise
    meta.update(message_id=posting.message_id, event_type=posting.event_type, business_key=posting.business_key)
    order_code = posting.forward_order_code if isinstance(posting, ReturnOrderPosting) else posting.order_code
    return dict(
        message_id=posting.message_id,
        event_type=posting.event_type,
        business_key=posting.business_key,
        order_code=order_code,
        payload=data,
        payload_json=text,  # stored as received: it is valid JSON of exactly ``data``
        state=PENDING if posting.event_type in settings.HANDLED_EVENTS else IGNORED,
    )


async def _store(writer: PostingWriter, record: dict[str, Any], meta: dict[str, Any]) -> str:
    """Store the posting through the group-committing writer; returns once its transaction committed."""
    try:
        result = await writer.store(record)
    except DataError:
        # Deterministic (e.g. a NUL character PostgreSQL refuses): a retry would fail the same way.
        log.warning("inbox: ledger refused posting %s", _printable(record["message_id"]), exc_info=True)
        raise _Rejected(400, "the posting contains values the ledger cannot store", outcome="rejected") from None
    except Exception:  # any other failure to resolve or write the ledger: Omni must retry (domain.md 4.5)
        log.error("inbox: could not store posting %s", _printable(record["message_id"]), exc_info=True)
        raise _Rejected(503, "could not store the posting; retry", outcome="ledger_unavailable", dead_letter=False) from None
    if result == "conflict":
        raise _Rejected(
            409,
            f"messageId {record['message_id']} was already received with different content",
            outcome="conflict",
        )
    return result


def _parse_json(raw: bytes) -> tuple[dict[str, Any], str]:
    """Strict JSON (RFC 8259): UTF-8 without BOM, no NaN/Infinity, no duplicate keys, at most ``MAX_JSON_DEPTH`` levels, an object.

    :returns: the object and the decoded text.
    """
    try:
        # Decoded here: json.loads would guess UTF-16/32 and skip a BOM, which Increff never sends.
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads says it (the decoder itself does not look for a BOM)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _STRICT_DECODER.decode(text)
    except RecursionError:
        raise _Rejected(413, f"posting nested deeper than {MAX_JSON_DEPTH} levels", outcome="too_deep") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Rejected(400, f"malformed JSON: {exc}", outcome="rejected") from None
    except ValueError as exc:  # our hooks' refusals, and integers longer than Python converts (4300 digits)
        raise _Rejected(400, f"malformed JSON: {exc}", outcome="rejected") from None
    if not isinstance(data, dict):
        raise _Rejected(400, "the posting must be a JSON object", outcome="rejected")
    if _may_be_too_deep(text) and _depth(data) > MAX_JSON_DEPTH:
        raise _Rejected(413, f"posting nested deeper than {MAX_JSON_DEPTH} levels", outcome="too_deep")
    return data, text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key is read differently by different parsers; refuse it rather than guess which one Omni meant.
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {ascii(duplicate[:64])} appears more than once in an object")
    return data


# Built once: json.loads with these hooks would build a decoder (and its scanner) per posting.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_object_without_duplicates)


def _may_be_too_deep(text: str) -> bool:
    """False when ``text`` (valid JSON) cannot nest deeper than ``MAX_JSON_DEPTH``: each level opens with a
    bracket, so fewer brackets than that (any real posting) need no walk."""
    return text.count("{") + text.count("[") > MAX_JSON_DEPTH


def _may_hold_unstorable(text: str) -> bool:
    """False when the object parsed from ``text`` cannot hold NUL or a lone surrogate (``_ESCAPED_UNSTORABLE``)."""
    return _ESCAPED_UNSTORABLE.search(text) is not None


def _depth(data: Any) -> int:
    """Nesting depth of arrays and objects (a flat object is 1), computed without recursion."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _check_storable(data: dict[str, Any]) -> None:
    """Refuse NUL and lone surrogates anywhere (also in fields we ignore): the ledger could not store them."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _UNSTORABLE.search(key):
                raise _Rejected(400, f"{ascii(where[:200])}: a key holds NUL or a lone surrogate", outcome="rejected")
            if isinstance(child, str) and _UNSTORABLE.search(child):
                raise _Rejected(
                    400, f"{ascii(where[:200])}: holds NUL or a lone surrogate, which cannot be stored", outcome="rejected"
                )
            if isinstance(child, (dict, list)):
                stack.append((child, where))


def _readable_keys(data: dict[str, Any]) -> dict[str, str]:
    """messageId, eventType and business key as far as they can be read from an invalid posting."""
    keys = {
        "message_id": data.get("messageId"),
        "event_type": data.get("eventType"),
        "business_key": data.get("orderCode") or data.get("returnOrderCode"),
    }
    return {
        name: str(value)[: settings.MAX_STRING_LENGTH]
        for name, value in keys.items()
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" and not _UNSTORABLE.search(str(value))
    }


def _printable(value: str | None) -> str | None:
    # Keys of a rejected posting are untrusted: a newline in them must not forge a log line.
    return value if value is None or value.isprintable() else repr(value)


def _dead_letter(lazy_ledger: _LazyLedger, reason: str, meta: dict[str, Any]) -> None:
    raw: bytes = meta.get("raw", b"")
    try:
        lazy_ledger.get().record_dead_letter(
            stage=DEAD_LETTER_STAGE,
            reason=reason,
            message_id=meta.get("message_id"),
            business_key=meta.get("business_key"),
            payload=raw[: DEAD_LETTER_PAYLOAD_CHARS * 4].decode(errors="replace")[:DEAD_LETTER_PAYLOAD_CHARS] or None,
        )
    except Exception:  # the rejection stands even if it cannot be recorded; the log keeps the reason
        log.error(
            "inbox: could not record the rejection of posting %s (%s)", _printable(meta.get("message_id")), reason, exc_info=True
        )


def _describe_errors(errors: list[Any]) -> str:
    """``orderItems.0.orderedQuantity: Input should be a valid integer; ...`` (first few errors)."""
    parts = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message, kind = error.get("msg"), str(error.get("type", ""))
        if error.get("input", ...) is None and kind.endswith("_type"):
            message = "must not be null"  # clearer than "Input should be a valid list" for a required field
        elif kind == "model_type":
            message = "must be a JSON object"  # not pydantic's "... or instance of OrderItem"
        parts.append(f"{location}: {message}" if location else str(message))
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)
