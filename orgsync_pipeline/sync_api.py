"""The on-demand sync API, served on the webhook receiver's port: ``POST /sync/me`` and
``POST /sync/organizations/{org_id}``, for an app that wants a signed-in user's data fresh now.

Each request is checked in this order, and a refused request writes nothing:

1. the Clerk session token (``Authorization: Bearer …``) must verify (401 with a short reason);
2. for an organization, the token's active organization must be that one (403);
3. the user must be within ``ORGSYNC_SYNC_RATE_PER_MINUTE`` requests a minute (429 with ``Retry-After``;
   counted per process).

Then the sync runs (``ondemand.py``) and answers 200 with its counts and elapsed time, or 503 with
``Retry-After`` when Clerk or the database is unavailable. Concurrent requests for the same target share
one sync and its answer. Browsers are allowed from ``ORGSYNC_CORS_ORIGINS`` only (none by default).
"""

import asyncio
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from orgsync_pipeline.clerk.client import (
    ClerkAuthError,
    ClerkClient,
    ClerkError,
    ClerkUnavailableError,
    RetryPolicy,
)
from orgsync_pipeline.session_tokens import (
    KeysUnavailable,
    SessionClaims,
    SessionTokenVerifier,
    TokenRejected,
)
from orgsync_pipeline.settings import Settings

if TYPE_CHECKING:  # loaded by the first sync (see _run): a receiver that never syncs stays light
    from orgsync_pipeline import ondemand

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_AFTER_SECONDS = 10
RATE_WINDOW_SECONDS = 60.0
# A user is waiting: give up on Clerk after a few quick retries and answer 503 instead.
CLERK_RETRY = RetryPolicy(
    max_attempts=3, base_delay=0.25, max_delay=2.0, max_elapsed=10.0, max_retry_after=5.0
)
CLERK_TIMEOUT_SECONDS = 10.0
SYNC_TIMEOUT_SECONDS = 60.0

EngineProvider = Callable[[], Engine]


@dataclass(frozen=True)
class Target:
    """What one request refreshes: a user (``/sync/me``) or an organization."""

    kind: str  # "user" | "organization"
    id: str


class RateLimiter:
    """At most ``limit`` admitted requests per user in any ``window`` seconds (sliding window)."""

    def __init__(self, limit: int, window: float = RATE_WINDOW_SECONDS) -> None:
        self._limit = limit
        self._window = window
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def acquire(self, user_id: str) -> float | None:
        """Admit one request (None), or refuse it with the seconds until one would be admitted."""
        now = time.monotonic()
        with self._lock:
            times = self._seen.setdefault(user_id, deque())
            while times and times[0] <= now - self._window:
                times.popleft()
            if len(times) >= self._limit:
                return times[0] + self._window - now
            times.append(now)
            if len(self._seen) > 10_000:
                self._forget_idle(now)
            return None

    def _forget_idle(self, now: float) -> None:
        for user_id in [u for u, times in self._seen.items() if not times or times[-1] <= now - self._window]:
            del self._seen[user_id]


class Coalescer:
    """Runs one blocking call per key at a time; callers arriving meanwhile share its result or error."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, work: Callable[[], T]) -> tuple[T, bool]:
        """``work()``'s result in a worker thread, and whether this caller joined a call already running."""
        future = self._running.get(key)
        joined = future is not None
        if future is None:
            future = asyncio.ensure_future(anyio.to_thread.run_sync(work, abandon_on_cancel=True))
            self._running[key] = future
            future.add_done_callback(functools.partial(self._finished, key))
        # shield: one caller giving up (timeout, disconnect) must not cancel the others' sync.
        return await asyncio.shield(future), joined

    def _finished(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if not future.cancelled():
            future.exception()  # retrieved here, so an error nobody awaited any more is not logged as lost


class SyncService:
    """The two endpoints and the state they share (verifier, rate limiter, coalescer, Clerk client)."""

    def __init__(self, settings: Settings, engine_provider: EngineProvider) -> None:
        self._settings = settings
        self._engine_provider = engine_provider
        self._verifier = SessionTokenVerifier(settings)
        self._limiter = RateLimiter(settings.sync_rate_per_minute)
        self._coalescer = Coalescer()
        self._clerk: ClerkClient | None = None
        self._clerk_lock = threading.Lock()

    async def sync_me(self, request: Request) -> JSONResponse:
        """``POST /sync/me``: the caller's profile and all of their memberships, with those organizations."""
        return await self._handle(request, lambda claims: Target("user", claims.user_id))

    async def sync_organization(self, request: Request) -> JSONResponse:
        """``POST /sync/organizations/{org_id}``: that organization and all of its memberships; the token's
        active organization must be ``org_id``."""
        org_id = request.path_params["org_id"]

        def target(claims: SessionClaims) -> Target | JSONResponse:
            if claims.org_id != org_id:
                return _error(403, "the session's active organization is not this organization")
            return Target("organization", org_id)

        return await self._handle(request, target)

    async def _handle(
        self, request: Request, target_of: Callable[[SessionClaims], Target | JSONResponse]
    ) -> JSONResponse:
        started = time.perf_counter()
        if self._settings.clerk_secret_key is None:
            return _error(
                500, "on-demand sync is not configured on this server (CLERK_SECRET_KEY is not set)"
            )
        try:
            claims = await anyio.to_thread.run_sync(
                self._verifier.verify, request.headers.get("authorization")
            )
        except TokenRejected as exc:
            return _error(401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        except KeysUnavailable as exc:
            log.warning("on-demand sync refused: %s", exc)
            return _unavailable("Clerk's signing keys are unavailable")
        target = target_of(claims)
        if isinstance(target, JSONResponse):
            return target
        wait = self._limiter.acquire(claims.user_id)
        if wait is not None:
            return _error(
                429,
                f"over {self._settings.sync_rate_per_minute} syncs a minute for this user; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        outcome = await self._sync(target)
        if isinstance(outcome, JSONResponse):
            return outcome
        report, coalesced = outcome
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        log.info(
            "on-demand sync of %s %s: %s in %.1f ms", target.kind, target.id, report.counts(), elapsed_ms
        )
        return JSONResponse(
            {
                "status": "synced" if report.found else "deleted",
                "target": {"type": target.kind, "id": target.id},
                "found": report.found,
                "coalesced": coalesced,
                "counts": report.counts(),
                "elapsed_ms": elapsed_ms,
            }
        )

    async def _sync(self, target: Target) -> tuple["ondemand.OnDemandReport", bool] | JSONResponse:
        """Run (or join) the target's sync; failures become their HTTP answers."""
        try:
            with anyio.fail_after(SYNC_TIMEOUT_SECONDS):
                return await self._coalescer.run(
                    (target.kind, target.id), functools.partial(self._run, target)
                )
        except ClerkUnavailableError as exc:
            log.warning("on-demand sync of %s %s: %s", target.kind, target.id, exc)
            return _unavailable("Clerk is unavailable; retry later")
        except ClerkAuthError:
            log.error("on-demand sync: Clerk refused orgsync's secret key (check CLERK_SECRET_KEY)")
            return _error(502, "Clerk refused this server's credentials")
        except ClerkError as exc:
            log.warning("on-demand sync of %s %s: %s", target.kind, target.id, exc)
            return _error(502, "Clerk answered in a way orgsync cannot use")
        except (sa.exc.SQLAlchemyError, TimeoutError) as exc:
            log.warning("on-demand sync of %s %s: database unavailable (%s)", target.kind, target.id,
                        type(exc).__name__)  # fmt: skip
            return _unavailable("the database is unavailable; retry later")

    def _run(self, target: Target) -> "ondemand.OnDemandReport":
        from orgsync_pipeline import ondemand  # the write path: pandas and pandera

        engine = self._engine_provider()
        if target.kind == "user":
            return ondemand.sync_user(engine, self._client(), target.id, self._settings)
        return ondemand.sync_organization(engine, self._client(), target.id, self._settings)

    def _client(self) -> ClerkClient:
        with self._clerk_lock:
            if self._clerk is None:
                secret = self._settings.clerk_secret_key
                assert secret is not None  # checked before any sync starts
                self._clerk = ClerkClient(
                    secret.reveal(),
                    self._settings.clerk_api_url,
                    timeout=CLERK_TIMEOUT_SECONDS,
                    retry=CLERK_RETRY,
                    logger=log,
                    rate_limit=self._settings.clerk_rate_limit,  # the same limiter as every other request
                    max_in_flight=self._settings.clerk_max_in_flight,
                )
            return self._clerk


def sync_routes(settings: Settings, engine_provider: EngineProvider) -> list[BaseRoute]:
    """The on-demand sync routes under ``/sync``, with CORS for ``ORGSYNC_CORS_ORIGINS`` when set."""
    service = SyncService(settings, engine_provider)
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["POST"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=["Retry-After"],
                max_age=600,
            )
        )
    routes: list[BaseRoute] = [
        Route("/me", service.sync_me, methods=["POST"]),
        Route("/organizations/{org_id}", service.sync_organization, methods=["POST"]),
    ]
    return [Mount("/sync", routes=routes, middleware=middleware)]


def _error(status: int, reason: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _unavailable(reason: str) -> JSONResponse:
    return _error(503, reason, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
