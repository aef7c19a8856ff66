"""Fault injection, error bodies, request accounting and ``/_sandbox/config``, shared by both sandboxes."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

FailMode = Literal[400, 429, 500, 503, "timeout"]
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
    503: "SERVICE_UNAVAILABLE",
}

# (status, code, message, description) -> the JSON body in the sandbox's own error dialect.
Render = Callable[[int, str, str, "str | None"], dict[str, Any]]


class FaultConfig(BaseModel):
    """Knobs common to both sandboxes; each sandbox subclasses it with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: int = Field(0, ge=0, le=60_000)
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    timeout_rate: float = Field(0.0, ge=0.0, le=1.0)
    timeout_s: float = Field(2.0, ge=0.0, le=300.0)
    max_concurrency: int | None = Field(None, ge=1)
    fail_next: list[FailMode] = Field(default_factory=list)
    seed: int = 0


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


class FaultInjector:
    """One sandbox's fault knobs, seeded random source, in-flight counter and request log.

    Every path outside ``/_sandbox/`` is an API call. Per call, in this order: it is counted; it gets 429 when
    ``max_concurrency`` calls are already in flight; the ``X-Sandbox-Fail`` header, else the next ``fail_next``
    entry, else the seeded ``error_rate`` / ``timeout_rate`` draws pick a fault; ``latency_ms`` is slept; a status
    fault (400, 429, 500, 503) is answered without doing anything, while ``"timeout"`` lets the call do its work
    and then sleeps ``timeout_s`` before answering - the case that makes clients retry work that already happened.

    :param config: the starting configuration (also what ``reset(config=True)`` returns to).
    :param render: builds an error body in the sandbox's dialect.
    :param codes: error code per injected status, overriding :data:`DEFAULT_CODES`.
    :param validation_status: status for FastAPI's own request validation errors (query parameters).
    """

    def __init__(
        self,
        config: FaultConfig,
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
        self._rejected: list[dict[str, Any]] = []

    # --- configuration and bookkeeping ---------------------------------------------------

    def update_config(self, patch: Mapping[str, Any]) -> FaultConfig:
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
            self._rejected.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"request_counts": dict(self._counts), "rejected": list(self._rejected)}

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

    def _admit(self, endpoint: str, forced: str | None) -> FailMode | Literal["busy"] | None:
        """Count the call and decide its fate; every admitted call (not "busy") must be released."""
        with self._lock:
            self._counts[endpoint] += 1
            cfg = self.config
            if cfg.max_concurrency is not None and self._in_flight >= cfg.max_concurrency:
                return "busy"
            # Draw on every call so a seed gives the same fault sequence whatever the rates are.
            error_draw, timeout_draw = self._rng.random(), self._rng.random()
            mode: FailMode | None = None
            if forced is not None:
                mode = int(forced) if forced.isdigit() else forced  # type: ignore[assignment]
            elif cfg.fail_next:
                mode = cfg.fail_next[0]
                self.config = cfg.model_copy(update={"fail_next": cfg.fail_next[1:]})
            elif error_draw < cfg.error_rate:
                mode = 503
            elif timeout_draw < cfg.timeout_rate:
                mode = "timeout"
            self._in_flight += 1
            return mode

    async def _middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith(CONTROL_PREFIX):
            return await call_next(request)
        endpoint = endpoint_name(request)
        forced = request.headers.get(FAIL_HEADER)
        if forced is not None and forced not in {str(mode) for mode in get_args(FailMode)}:
            with self._lock:
                self._counts[endpoint] += 1
            return self.error_response(
                endpoint, 400, None, f"{FAIL_HEADER} must be one of 400, 429, 500, 503, timeout; got {forced!r}"
            )
        mode = self._admit(endpoint, forced)
        if mode == "busy":
            return self.error_response(
                endpoint, 429, None, "too many concurrent requests", headers={"Retry-After": "1"}
            )
        cfg = self.config
        try:
            if cfg.latency_ms:
                await asyncio.sleep(cfg.latency_ms / 1000)
            if isinstance(mode, int):
                headers = {"Retry-After": "1"} if mode in (429, 503) else None
                return self.error_response(endpoint, mode, None, f"injected by the sandbox ({mode})", headers=headers)
            response = await call_next(request)
            if mode == "timeout":
                await asyncio.sleep(cfg.timeout_s)
            return response
        finally:
            with self._lock:
                self._in_flight -= 1
