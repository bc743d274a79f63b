"""The webhook receiver: verify Clerk's Svix signature, commit the event to the inbox, then answer.

Only a committed event gets a 2xx. A request that can never succeed gets a 4xx with a short reason
(Svix does not need to retry it); a database that cannot take the event gets a 503, so Svix
delivers it again later and nothing is lost.
"""

import base64
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from svix.webhooks import Webhook, WebhookVerificationError

from orgsync_pipeline import webhook_request
from orgsync_pipeline.apply_worker import ApplyWorker
from orgsync_pipeline.event_types import is_handled
from orgsync_pipeline.receiver_inbox import InboxDatabase, InboxWriter
from orgsync_pipeline.receiver_metrics import instrument
from orgsync_pipeline.settings import Settings, SettingsError, load_settings
from orgsync_pipeline.sync_api import sync_routes

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BODY_BYTES = 1024 * 1024
SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
RETRY_AFTER_SECONDS = "30"
# Svix waits about 15 s for an answer: a database that hangs must still get a 503 before that.
DATABASE_TIMEOUT_SECONDS = 10.0


def create_app(settings: Settings | None = None) -> Starlette:
    """The receiver's ASGI app. Refuses to start without a usable signing secret."""
    settings = settings or load_settings()
    if settings.webhook_secret is None:
        raise SettingsError(
            "CLERK_WEBHOOK_SECRET (or CLERK_WEBHOOK_SIGNING_SECRET) is not set: copy the endpoint's signing "
            "secret (whsec_…) from Clerk's dashboard; without it no request could be verified"
        )
    verifier = _verifier(settings.webhook_secret.reveal())
    database = InboxDatabase(settings)
    writer = InboxWriter(database)
    # Inline mode: this process applies what it commits; sensor mode leaves it to Dagster runs.
    worker = ApplyWorker(database.engine, settings) if settings.webhook_apply == "inline" else None

    async def receive_clerk_event(request: Request) -> JSONResponse:
        return await _receive_clerk_event(request, verifier, writer, worker)

    async def healthz(request: Request) -> JSONResponse:
        try:
            await _within(DATABASE_TIMEOUT_SECONDS, database.ping)
        except (sa.exc.SQLAlchemyError, TimeoutError):
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    app = Starlette(
        lifespan=_lifespan(writer, worker),
        routes=[
            Route("/webhooks/clerk", receive_clerk_event, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            *sync_routes(settings, database.engine),  # POST /sync/me, /sync/organizations/{id}
        ],
    )
    return instrument(app, database.engine)  # GET /metrics, and the measuring middleware


async def _receive_clerk_event(
    request: Request, verifier: Webhook, writer: InboxWriter, worker: ApplyWorker | None
) -> JSONResponse:
    """Verify one delivery, commit it to the inbox, answer, and wake the inline apply worker."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _reject(413, f"body over {MAX_BODY_BYTES} bytes")
    body = await _read_body(request, MAX_BODY_BYTES)
    if body is None:
        return _reject(413, f"body over {MAX_BODY_BYTES} bytes")

    checked = _verified_event(request, body, verifier)
    if isinstance(checked, JSONResponse):
        return checked
    headers, event = checked
    try:
        with anyio.fail_after(DATABASE_TIMEOUT_SECONDS):
            stored = await writer.store(headers["svix-id"], event)
    except sa.exc.DataError as exc:
        log.warning(
            "event %s cannot be stored: %s", webhook_request.clip(headers["svix-id"]), type(exc).__name__
        )
        return _reject(400, "event holds values the database cannot store")
    except (sa.exc.SQLAlchemyError, TimeoutError) as exc:
        log.warning(
            "inbox unavailable, asking Svix to retry %s: %s",
            webhook_request.clip(headers["svix-id"]),
            type(exc).__name__,
        )
        return JSONResponse(
            {"error": "inbox database unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    status = "duplicate" if stored.duplicate else ("stored" if is_handled(event["type"]) else "ignored")
    if worker is not None and status != "ignored":
        worker.wake()
    return JSONResponse({"status": status, "inbox_id": stored.inbox_id})


def _verified_event(
    request: Request, body: bytes, verifier: Webhook
) -> tuple[dict[str, str], dict[str, Any]] | JSONResponse:
    """The Svix headers and the Clerk event of a delivery whose signature holds, or the 4xx answer."""
    headers = {name: request.headers[name] for name in SVIX_HEADERS if name in request.headers}
    missing = [name for name in SVIX_HEADERS if name not in headers]
    if missing:
        return _reject(400, f"missing {', '.join(missing)} header")
    try:
        webhook_request.check_svix_id(headers["svix-id"])
        text = webhook_request.decode_body(body)
    except webhook_request.BadRequest as exc:
        return _reject(400, str(exc))
    try:
        verifier.verify(text, headers)
    except WebhookVerificationError as exc:
        return _reject(401, f"signature not verified: {exc}")
    except Exception:  # svix raises binascii.Error/ValueError on garbage signature headers
        return _reject(400, "malformed svix-signature or svix-timestamp header")

    try:
        event = webhook_request.parse_event(text)
    except webhook_request.BadRequest as exc:
        return _reject(400, str(exc))
    return headers, event


def serve(host: str, port: int, apply: str | None = None, workers: int = 1) -> None:
    """Run the receiver under uvicorn until interrupted; ``apply`` ("inline" or "sensor") overrides
    ``ORGSYNC_WEBHOOK_APPLY``. With ``workers`` above 1, uvicorn runs that many processes on the one
    port, each with its own app, connection pool and (inline) apply worker; the inbox's drain lock
    lets one of them apply at a time."""
    settings = load_settings()
    if apply is not None:
        settings = dataclasses.replace(settings, webhook_apply=apply)
    app = create_app(settings)  # also checks the settings here, before any worker process starts
    log.info("receiving Clerk webhooks at http://%s:%s/webhooks/clerk (also /healthz, /metrics)", host, port)
    if workers == 1:
        # log_config=None: uvicorn logs through the handlers the orgsync command configured.
        uvicorn.run(app, host=host, port=port, log_config=None)
        return
    log.info("with %d worker processes", workers)
    # Worker processes read their settings from the environment, as this process did.
    os.environ["ORGSYNC_WEBHOOK_APPLY"] = settings.webhook_apply
    uvicorn.run(
        f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port, log_config=None
    )


def worker_app() -> Starlette:
    """The app of one ``serve-webhooks --workers`` process (uvicorn calls this in each)."""
    from orgsync_pipeline.logs import configure_logging

    settings = load_settings()
    configure_logging(verbose=False, log_format=settings.log_format, own_level=logging.INFO)
    return create_app(settings)


def _lifespan(
    writer: InboxWriter, worker: ApplyWorker | None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Run the inbox writer while the app runs; start the inline apply worker with the app and stop
    it (after its batch in hand) on shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        try:
            async with writer.running():
                yield
        finally:
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)

    return lifespan


@contextmanager
def serve_in_thread(app: Starlette) -> Iterator[str]:
    """Serve ``app`` under uvicorn on a free loopback port in a background thread (the demo and the
    tests); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="webhook-receiver", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the webhook receiver did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body (verified byte for byte, never re-serialised), or None past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _within(seconds: float, function: Callable[..., T], *args: Any) -> T:
    """Run blocking database work in a worker thread, giving up on it after ``seconds`` (the thread
    is abandoned, not waited for: a hung socket may hold it until the TCP timeouts fire)."""
    with anyio.fail_after(seconds):
        return await anyio.to_thread.run_sync(functools.partial(function, *args), abandon_on_cancel=True)


def _verifier(secret: str) -> Webhook:
    """A verifier for a signing secret shaped as Clerk's dashboard shows it: ``whsec_`` and base64.

    The svix package would also take other strings (it drops non-base64 characters), which would
    start a receiver that rejects every delivery; a clear start-up error is better.
    """
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:
        key = b""
    if not secret.startswith("whsec_") or len(key) < 16:
        raise SettingsError(
            "CLERK_WEBHOOK_SECRET is not a Svix signing secret: expected whsec_ followed by base64, "
            "as shown for the endpoint in Clerk's dashboard"
        )
    return Webhook(secret)


def _reject(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)
