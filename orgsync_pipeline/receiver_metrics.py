"""Prometheus metrics for the webhook receiver, served at ``GET /metrics``.

Everything is measured from outside the handlers, by an ASGI middleware that sees each request's
route, verified event type (only answers that passed the signature check name a type), outcome and
latency. Inbox depth and apply lag are read from the database when Prometheus scrapes, so every
replica reports the shared inbox. Each app has its own registry: several apps in one process (tests,
the demo) never collide.
"""

import functools
import json
import logging
import time
from collections.abc import Callable

import anyio
import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orgsync_pipeline.event_types import HANDLED_EVENTS
from orgsync_pipeline.status import INBOX_STATUSES, inbox_health

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
WEBHOOK_PATH = "/webhooks/clerk"
SCRAPE_DATABASE_TIMEOUT_SECONDS = 5.0
# Latency buckets around Svix's ~15 s answer deadline.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
# The only answers that carry a verified event: its type may become a label.
VERIFIED_STATUSES = {200}
ANSWER_OUTCOMES = {"stored", "duplicate", "ignored", "applied", "quarantined"}


class ReceiverMetrics:
    """The receiver's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "orgsync_webhook_events",
            "Webhook deliveries by event type (unverified: before the signature check) and outcome "
            "(stored, duplicate, ignored, rejected, unavailable).",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "orgsync_http_request_duration_seconds",
            "Time to answer an HTTP request, by route, method and status code.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.database_errors = Counter(
            "orgsync_database_errors",
            "Database operations that failed or timed out, by operation (store, healthz, metrics).",
            ["operation"],
            registry=self.registry,
        )
        self.inbox_events = Gauge(
            "orgsync_webhook_inbox_events",
            "Events in the webhook inbox by status (pending, failed and dead are the depth).",
            ["status"],
            registry=self.registry,
        )
        self.oldest_pending = Gauge(
            "orgsync_webhook_inbox_oldest_pending_age_seconds",
            "Age of the oldest pending inbox event (0 when none is pending).",
            registry=self.registry,
        )
        self.apply_lag = Gauge(
            "orgsync_webhook_apply_lag_seconds",
            "Receipt-to-applied lag of the events applied in the last hour, by quantile (1 = max).",
            ["quantile"],
            registry=self.registry,
        )
        self.applied_last_hour = Gauge(
            "orgsync_webhook_applied_last_hour",
            "Inbox events applied in the last hour.",
            registry=self.registry,
        )

    def record(
        self, route: str, method: str, status: int, seconds: float, event: tuple[str, str] | None
    ) -> None:
        """Count one answered request; ``event`` is the verified event's (type, outcome)."""
        self.latency.labels(route, method, str(status)).observe(seconds)
        if route == WEBHOOK_PATH:
            event_type, outcome = event or ("unverified", "unavailable" if status == 503 else "rejected")
            self.events.labels(event_type, outcome).inc()
            if status == 503:
                self.database_errors.labels("store").inc()
        elif route == "/healthz" and status == 503:
            self.database_errors.labels("healthz").inc()

    def refresh_inbox(self, engine: Callable[[], Engine]) -> None:
        """Read the inbox figures from the database into the gauges (blocking: run in a thread)."""
        with engine().connect() as conn:
            health = inbox_health(conn)
        for status in (*INBOX_STATUSES, *health.by_status):
            self.inbox_events.labels(status).set(health.by_status.get(status, 0))
        self.oldest_pending.set(health.oldest_pending_age_seconds or 0.0)
        self.applied_last_hour.set(health.applied_last_hour)
        for quantile, value in (
            ("0.5", health.apply_lag_p50_seconds),
            ("0.95", health.apply_lag_p95_seconds),
            ("1", health.apply_lag_max_seconds),
        ):
            self.apply_lag.labels(quantile).set(value if value is not None else float("nan"))


class MetricsMiddleware:
    """ASGI middleware timing every request and reading the receiver's answers for their outcome."""

    def __init__(self, app: ASGIApp, metrics: ReceiverMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in (WEBHOOK_PATH, "/healthz", METRICS_PATH) else "other"
        status = 500
        answer = bytearray()
        request_body = bytearray()

        async def receive_and_keep() -> Message:
            message = await receive()
            if route == WEBHOOK_PATH and message["type"] == "http.request":
                request_body.extend(message.get("body", b""))
            return message

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and route == WEBHOOK_PATH:
                answer.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_watch)
        finally:
            event = (
                _verified_event(status, bytes(request_body), bytes(answer)) if route == WEBHOOK_PATH else None
            )
            self.metrics.record(route, scope.get("method", ""), status, time.perf_counter() - started, event)


def _verified_event(status: int, body: bytes, answer: bytes) -> tuple[str, str] | None:
    """(type, outcome) for an answer that accepted a verified event, else None. Unhandled types
    are labelled ``other``, so a sender cannot grow the label set."""
    if status not in VERIFIED_STATUSES:
        return None
    try:
        outcome = json.loads(answer)["status"]
        event_type = json.loads(body)["type"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(outcome, str) or outcome not in ANSWER_OUTCOMES:
        return None
    return (event_type if event_type in HANDLED_EVENTS else "other", outcome)


def metrics_route(metrics: ReceiverMetrics, engine: Callable[[], Engine]) -> Route:
    """``GET /metrics``: refresh the inbox gauges (if the database answers in time), then expose all."""

    async def serve_metrics(request: Request) -> Response:
        try:
            with anyio.fail_after(SCRAPE_DATABASE_TIMEOUT_SECONDS):
                await anyio.to_thread.run_sync(
                    functools.partial(metrics.refresh_inbox, engine), abandon_on_cancel=True
                )
        except (sa.exc.SQLAlchemyError, TimeoutError) as exc:
            # The request counters are still worth serving; the inbox gauges keep their last value.
            log.warning("metrics: inbox figures unavailable: %s", type(exc).__name__)
            metrics.database_errors.labels("metrics").inc()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Route(METRICS_PATH, serve_metrics, methods=["GET"])


def instrument(app: Starlette, engine: Callable[[], Engine]) -> Starlette:
    """Add ``GET /metrics`` and the measuring middleware to the receiver's app; returns it."""
    metrics = ReceiverMetrics()
    app.router.routes.append(metrics_route(metrics, engine))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    return app
