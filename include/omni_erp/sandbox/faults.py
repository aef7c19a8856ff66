"""Fault injection, error bodies, request accounting and ``/_sandbox/config``, shared by every sandbox."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Literal, TypeVar, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

ErrorStatus = Literal[500, 502, 503, 504]
FailMode = Literal[400, 429, 500, 502, 503, 504, "timeout", "hang", "reset"]
FAIL_HEADER = "X-Sandbox-Fail"
CONTROL_PREFIX = "/_sandbox/"

DEFAULT_CODES: Mapping[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    422: "VALIDATION_FAILED",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}

# (status, code, message, description) -> the JSON body in the sandbox's own error dialect.
Render = Callable[[int, str, str, "str | None"], dict[str, Any]]


class FaultConfig(BaseModel):
    """Knobs common to every sandbox; each sandbox subclasses it with its own.

    The four rates are shares of one seeded draw per call, so they must add up to at most 1:
    ``error_rate`` answers one of ``error_statuses`` without doing anything; ``timeout_rate`` does the work
    and answers ``timeout_s`` late (past the client's read timeout: it retries work that already happened);
    ``hang_rate`` waits ``timeout_s`` without doing the work, then answers 504; ``reset_rate`` closes the
    connection without any response (TCP reset), half of the time before the work and half after it.
    ``stall_next`` holds the next successful calls (of ``stall_endpoint`` only, when set) for ``stall_s``
    after the work is done (or until ``POST /_sandbox/release``), and lists them in ``stalled`` while they
    wait - so a watcher can kill the caller between "the server committed" and "the caller recorded it".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: int = Field(0, ge=0, le=60_000)
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    error_statuses: list[ErrorStatus] = Field(default_factory=lambda: [503], min_length=1)
    timeout_rate: float = Field(0.0, ge=0.0, le=1.0)
    hang_rate: float = Field(0.0, ge=0.0, le=1.0)
    reset_rate: float = Field(0.0, ge=0.0, le=1.0)
    timeout_s: float = Field(2.0, ge=0.0, le=300.0)
    max_concurrency: int | None = Field(None, ge=1)
    retry_after_s: int = Field(1, ge=0, le=3600)
    fail_next: list[FailMode] = Field(default_factory=list)
    stall_next: int = Field(0, ge=0)
    stall_endpoint: str | None = None
    stall_s: float = Field(10.0, ge=0.0, le=300.0)
    seed: int = 0

    @model_validator(mode="after")
    def _rates_share_one_draw(self) -> FaultConfig:
        total = self.error_rate + self.timeout_rate + self.hang_rate + self.reset_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"error_rate + timeout_rate + hang_rate + reset_rate must not exceed 1 (got {total:g})")
        return self


ConfigT = TypeVar("ConfigT", bound=FaultConfig)


class ApiError(Exception):
    """Raised by a sandbox handler; rendered in the sandbox's error dialect and recorded as a rejection."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        description: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # code None: the sandbox's usual code for the status (e.g. BAD_DATA for Omni's 400).
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.description = description
        self.headers = dict(headers or {})


def endpoint_name(request: Request) -> str:
    """``"POST /api/v1/sales-orders/{salesOrderId}/cancel"``: method plus route template, for counting."""
    route = request.scope.get("route")
    if route is None:
        for candidate in request.app.router.routes:
            if candidate.matches(request.scope)[0] is Match.FULL:
                route = candidate
                break
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


async def read_json(request: Request) -> Any:
    """The request body as JSON; :class:`ApiError` (400) when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, None, f"body is not valid JSON ({exc})", description="[body: malformed JSON]") from exc


def pydantic_problems(exc: ValidationError | RequestValidationError) -> list[str]:
    """``["lines.0.quantity: Input should be greater than 0", ...]`` from a validation error."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "body")
        problems.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return problems


class FaultInjector(Generic[ConfigT]):
    """One sandbox's fault knobs, seeded random source, in-flight counter and request log.

    Every path outside ``/_sandbox/`` is an API call. Per call, in this order: it is counted; it gets 429 when
    ``max_concurrency`` calls are already in flight; the ``X-Sandbox-Fail`` header, else the next ``fail_next``
    entry, else the seeded draw against the rates of :class:`FaultConfig` picks a fault. The call answers
    ``latency_ms`` after it arrived (its service time: the work is done first, the rest of the time waited
    out); a status fault (400, 429, 5xx) is answered then without doing anything, ``"hang"`` waits ``timeout_s``
    more and answers 504 without doing anything, ``"reset"`` drops the connection without a response, while
    ``"timeout"`` lets the call do its work and then sleeps ``timeout_s`` more before answering - the case that
    makes clients retry work that already happened. Every injected fault is counted by kind (``injected``).

    :param config: the starting configuration (also what ``reset(config=True)`` returns to).
    :param render: builds an error body in the sandbox's dialect.
    :param codes: error code per injected status, overriding :data:`DEFAULT_CODES`.
    :param validation_status: status for FastAPI's own request validation errors (query parameters).
    """

    def __init__(
        self,
        config: ConfigT,
        render: Render,
        *,
        codes: Mapping[int, str] | None = None,
        validation_status: int = 422,
    ) -> None:
        self.defaults = config
        self.config = config
        self.render = render
        self.codes = {**DEFAULT_CODES, **(codes or {})}
        self.validation_status = validation_status
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._in_flight = 0
        self._counts: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._stalled: dict[int, dict[str, Any]] = {}
        self._releases: dict[int, asyncio.Event] = {}
        self._rejected: list[dict[str, Any]] = []

    # --- configuration and bookkeeping ---------------------------------------------------

    def update_config(self, patch: Mapping[str, Any]) -> ConfigT:
        """Apply a partial update; raises ``ValidationError`` and keeps the old config when invalid."""
        with self._lock:
            new = type(self.config).model_validate({**self.config.model_dump(), **patch})
            if new.seed != self.config.seed:
                self._rng = random.Random(new.seed)
            self.config = new
            return new

    def reset(self, *, config: bool = False) -> None:
        """Forget counts and rejections and re-seed; with ``config=True`` also restore the starting knobs."""
        with self._lock:
            if config:
                self.config = self.defaults
            self._rng = random.Random(self.config.seed)
            self._counts.clear()
            self._injected.clear()
            self._rejected.clear()

    def snapshot(self) -> dict[str, Any]:
        """Request counts, rejections, faults injected by kind and the calls stalled right now."""
        with self._lock:
            return {
                "request_counts": dict(self._counts),
                "rejected": list(self._rejected),
                "injected": dict(self._injected),
                "stalled": list(self._stalled.values()),
            }

    def fault_snapshot(self) -> dict[str, Any]:
        """What :meth:`snapshot` says without the rejection log: cheap enough to poll many times a second."""
        with self._lock:
            return {
                "request_counts": dict(self._counts),
                "injected": dict(self._injected),
                "stalled": list(self._stalled.values()),
                "in_flight": self._in_flight,
            }

    def error_response(
        self,
        endpoint: str,
        status: int,
        code: str | None,
        message: str,
        *,
        description: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> JSONResponse:
        """Render an error, and record it in ``rejected``."""
        code = code or self.codes.get(status, "ERROR")
        entry: dict[str, Any] = {"endpoint": endpoint, "status": status, "code": code}
        if description is not None:
            entry["description"] = description
        with self._lock:
            self._rejected.append(entry)
        return JSONResponse(self.render(status, code, message, description), status_code=status, headers=headers)

    # --- wiring ---------------------------------------------------------------------------

    def install(self, app: FastAPI) -> None:
        """Add the fault middleware, the error handlers and ``GET/POST /_sandbox/config`` to ``app``."""
        app.middleware("http")(self._middleware)
        app.add_exception_handler(ApiError, self._on_api_error)  # type: ignore[arg-type]
        app.add_exception_handler(StarletteHTTPException, self._on_http_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, self._on_validation_error)  # type: ignore[arg-type]
        app.add_exception_handler(Exception, self._on_crash)
        app.add_api_route("/_sandbox/config", self._get_config, methods=["GET"])
        app.add_api_route("/_sandbox/config", self._post_config, methods=["POST"])
        app.add_api_route("/_sandbox/faults", self._get_faults, methods=["GET"])
        app.add_api_route("/_sandbox/release", self._release_stalls, methods=["POST"])

    def install_reset(self, app: FastAPI, clear: Callable[[], None]) -> None:
        """Add ``POST /_sandbox/reset``: ``clear`` forgets the sandbox's documents (it takes the sandbox's own lock),
        the fault counts are forgotten too, and ``{"reset_config": true}`` also restores the starting knobs."""

        async def sandbox_reset(request: Request) -> dict[str, Any]:
            body = await read_json(request) if await request.body() else {}
            clear()
            self.reset(config=bool(isinstance(body, dict) and body.get("reset_config")))
            return {"reset": True, "config": self.config.model_dump(mode="json")}

        app.add_api_route("/_sandbox/reset", sandbox_reset, methods=["POST"])

    async def _get_faults(self) -> dict[str, Any]:
        return self.fault_snapshot()

    async def _release_stalls(self) -> dict[str, Any]:
        """Let every stalled call answer now (its caller may be gone; the slot it holds is freed)."""
        released = list(self._releases.values())
        for event in released:
            event.set()
        return {"released": len(released)}

    async def _get_config(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    async def _post_config(self, request: Request) -> dict[str, Any]:
        patch = await read_json(request)
        if not isinstance(patch, dict):
            raise ApiError(422, None, "config update must be a JSON object")
        try:
            return self.update_config(patch).model_dump(mode="json")
        except ValidationError as exc:
            problems = pydantic_problems(exc)
            raise ApiError(422, None, "; ".join(problems), description=f"[{', '.join(problems)}]") from exc

    async def _on_api_error(self, request: Request, exc: ApiError) -> JSONResponse:
        return self.error_response(
            endpoint_name(request), exc.status, exc.code, exc.message, description=exc.description, headers=exc.headers
        )

    async def _on_http_error(self, request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return self.error_response(endpoint_name(request), exc.status_code, None, message)

    async def _on_validation_error(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = pydantic_problems(exc)
        status = self.validation_status
        return self.error_response(
            endpoint_name(request), status, None, "; ".join(problems), description=f"[{', '.join(problems)}]"
        )

    async def _on_crash(self, request: Request, exc: Exception) -> JSONResponse:
        return self.error_response(endpoint_name(request), 500, None, f"sandbox bug: {type(exc).__name__}: {exc}")

    def _admit(self, endpoint: str, forced: str | None) -> tuple[FailMode | Literal["busy"] | None, float]:
        """Count the call and decide its fate (and a second draw for its details); every admitted call
        (not "busy") must be released."""
        with self._lock:
            self._counts[endpoint] += 1
            cfg = self.config
            if cfg.max_concurrency is not None and self._in_flight >= cfg.max_concurrency:
                self._injected["429_busy"] += 1
                return "busy", 0.0
            # Draw on every call so a seed gives the same fault sequence whatever the rates are.
            fault_draw, detail_draw = self._rng.random(), self._rng.random()
            mode: FailMode | None = None
            if forced is not None:
                mode = int(forced) if forced.isdigit() else forced  # type: ignore[assignment]
            elif cfg.fail_next:
                mode = cfg.fail_next[0]
                self.config = cfg.model_copy(update={"fail_next": cfg.fail_next[1:]})
            else:
                # The rates are consecutive slices of one draw: their shares are exact and they never overlap.
                for rate, candidate in (
                    (cfg.error_rate, cfg.error_statuses[int(detail_draw * len(cfg.error_statuses))]),
                    (cfg.timeout_rate, "timeout"),
                    (cfg.hang_rate, "hang"),
                    (cfg.reset_rate, "reset"),
                ):
                    if fault_draw < rate:
                        mode = candidate  # type: ignore[assignment]
                        break
                    fault_draw -= rate
            if mode is not None:
                self._injected[str(mode)] += 1
            self._in_flight += 1
            return mode, detail_draw

    def _take_stall(self, endpoint: str, request: Request) -> int | None:
        """Register this call as stalled when a stall is armed for it; returns its ticket."""
        with self._lock:
            cfg = self.config
            if cfg.stall_next <= 0 or (cfg.stall_endpoint is not None and cfg.stall_endpoint != endpoint):
                return None
            self.config = cfg.model_copy(update={"stall_next": cfg.stall_next - 1})
            self._injected["stall"] += 1
            ticket = id(request)
            self._stalled[ticket] = {
                "endpoint": endpoint,
                "idempotency_key": request.headers.get("Idempotency-Key"),
                "since": time.time(),
            }
            return ticket

    async def _middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        arrived = time.monotonic()
        if request.url.path.startswith(CONTROL_PREFIX):
            return await call_next(request)
        endpoint = endpoint_name(request)
        forced = request.headers.get(FAIL_HEADER)
        allowed = {str(mode) for mode in get_args(FailMode)}
        if forced is not None and forced not in allowed:
            with self._lock:
                self._counts[endpoint] += 1
            return self.error_response(
                endpoint, 400, None, f"{FAIL_HEADER} must be one of {', '.join(sorted(allowed))}; got {forced!r}"
            )
        mode, detail_draw = self._admit(endpoint, forced)
        cfg = self.config
        retry_after = {"Retry-After": str(cfg.retry_after_s)}
        if mode == "busy":
            return self.error_response(endpoint, 429, None, "too many concurrent requests", headers=retry_after)
        # A fixed service time: the answer leaves latency_ms after the call arrived, the work done inside it. Sleeping
        # first and working after queued each call's work behind the others' on the event loop when calls arrive in
        # step (16 at a cap of 16: 4 ms more each; a bare http.client at 0.87-0.91 of C/L instead of 0.96).
        deadline = arrived + cfg.latency_ms / 1000
        try:
            if isinstance(mode, int) or mode == "hang" or (mode == "reset" and detail_draw < 0.5):
                await _until(deadline)  # a fault that does no work answers when the call would have
                if isinstance(mode, int):
                    headers = retry_after if mode in (429, 503) else None
                    return self.error_response(endpoint, mode, None, f"injected by the sandbox ({mode})", headers=headers)
                if mode == "hang":
                    await asyncio.sleep(cfg.timeout_s)
                    return self.error_response(endpoint, 504, None, f"injected by the sandbox (no answer for {cfg.timeout_s} s)")
                return await _reset_connection(request)
            response = await call_next(request)
            await _until(deadline)
            if mode == "reset":
                with self._lock:
                    self._injected["reset_after_work"] += 1
                return await _reset_connection(request)  # the work is done; the answer never leaves
            if mode == "timeout":
                await asyncio.sleep(cfg.timeout_s)
            elif response.status_code < 400 and (ticket := self._take_stall(endpoint, request)) is not None:
                release = self._releases[ticket] = asyncio.Event()
                try:
                    await asyncio.wait_for(release.wait(), timeout=cfg.stall_s)
                except TimeoutError:
                    pass  # held for the whole stall_s
                finally:
                    self._releases.pop(ticket, None)
                    with self._lock:
                        self._stalled.pop(ticket, None)
            return response
        finally:
            with self._lock:
                self._in_flight -= 1


async def _until(deadline: float) -> None:
    """Sleep until ``deadline`` (``time.monotonic()``), if it is still ahead."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _reset_connection(request: Request) -> Response:
    """Drop the client's TCP connection without answering (RST), as a crashing proxy or server would.

    uvicorn does not offer this through ASGI, so the transport is taken from its receive channel; the
    response returned afterwards is discarded by uvicorn because the connection is gone.
    """
    transport = getattr(getattr(request.receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("connection resets need the sandbox served by uvicorn (serve_in_thread)")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST, not FIN
    transport.abort()
    await asyncio.sleep(0)  # let uvicorn notice the lost connection before anything is sent
    return Response(status_code=502)
