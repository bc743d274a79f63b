"""Clerk's webhook sender: Svix signatures, event envelopes, and one background thread that POSTs events in
order with Svix-like retries."""

import functools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from orgsync_pipeline.clerk.emulator.state import _ID_ALPHABET, EmulatorState, Json, _clone

DEFAULT_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)
WEBHOOK_TIMEOUT_SECONDS = 10.0
_WEBHOOK_USER_AGENT = "Svix-Webhooks/1.0 (orgsync Clerk emulator)"


def _new_msg_id() -> str:
    return "msg_" + os.urandom(27).translate(_ID_ALPHABET).decode()


@functools.lru_cache(maxsize=16)
def _signer(secret: str) -> Any:
    from svix.webhooks import Webhook  # imported lazily: the svix package takes ~0.6 s to import

    return Webhook(secret)


def svix_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The ``svix-id``/``svix-timestamp``/``svix-signature`` headers Svix sends with ``body``.

    ``secret`` is the endpoint's ``whsec_<base64>`` signing secret; the signature covers the exact bytes of
    ``body`` (UTF-8). ``msg_id`` defaults to a fresh ``msg_…`` id, ``timestamp`` (seconds) to now."""
    msg_id = msg_id or _new_msg_id()
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signature = _signer(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": signature}


@dataclass(frozen=True)
class DeliveryRecord:
    """One webhook delivery attempt.

    ``status_code`` is the endpoint's answer (None when it never answered: ``error`` then says why, e.g. a
    refused connection or a timeout); ``at`` is when the POST was sent (``time.time()``), ``elapsed`` how
    long the attempt took (seconds) and ``url`` the endpoint it went to."""

    msg_id: str
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    at: float
    url: str = ""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """The endpoint answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class _WebhookEndpoint:
    url: str
    secret: str
    retry_delays: tuple[float, ...]
    timeout: float


@dataclass(frozen=True)
class _Outgoing:
    msg_id: str
    event_type: str
    body: bytes


class WebhookSender(EmulatorState):
    """Emit Clerk's events to registered endpoints and record every delivery attempt."""

    def _init_webhooks(self) -> None:
        # Webhooks. The queue and delivery records are guarded by _webhook_cond, never by _lock, and the
        # delivery thread never takes _lock: mutations enqueue under _lock, HTTP runs under neither.
        self.webhook_events: list[Json] = []  # every envelope emitted, in order
        self.deliveries: list[DeliveryRecord] = []  # one per attempt
        # The last attempt of each event that ran out of retries (per endpoint).
        self.failed_deliveries: list[DeliveryRecord] = []
        self._webhook_endpoints: list[_WebhookEndpoint] = []
        self._webhook_cond = threading.Condition(threading.Lock())
        self._webhook_queue: deque[_Outgoing] = deque()
        self._webhook_in_flight = 0  # events being attempted right now
        self._webhook_paused = False  # set by stop(), cleared by start()
        self._webhook_thread: threading.Thread | None = None
        self._webhook_stop = threading.Event()

    def event_envelope(self, event_type: str, data: Json, *, timestamp_ms: int | None = None) -> Json:
        """Wrap ``data`` in Clerk's webhook event envelope; ``timestamp`` in ms (default: emulator clock)."""
        return {
            "object": "event",
            "type": event_type,
            "timestamp": timestamp_ms if timestamp_ms is not None else self.now_ms(),
            "instance_id": self.instance_id,
            "event_attributes": {
                "http_request": {"client_ip": "127.0.0.1", "user_agent": "orgsync-emulator"}
            },
            "data": _clone(data),
        }

    def add_webhook_endpoint(
        self,
        url: str,
        secret: str,
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        timeout: float = WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        """Act as Clerk's webhook sender towards ``url``, signing with ``secret`` (``whsec_<base64>``).

        From now on every mutation emits Clerk's event for it (``organization.*``, ``user.*``,
        ``organizationMembership.*``; cascaded membership deletions emit nothing), enveloped by
        ``event_envelope`` with the mutation's time. One background thread POSTs the events in order, each
        with a new ``svix-id``; a non-2xx answer, a connection error or a ``timeout`` (seconds) is retried
        after each of ``retry_delays`` in turn (same ``svix-id``, fresh timestamp and signature), so an event
        gets ``1 + len(retry_delays)`` attempts before it lands in ``failed_deliveries`` and the thread moves
        on. With several endpoints, each event goes to each of them in turn."""
        _signer(secret)  # fail here on an empty or malformed secret, not in the delivery thread
        delays = tuple(float(d) for d in retry_delays)
        if any(d < 0 for d in delays) or timeout <= 0:
            raise ValueError("retry delays must not be negative and the timeout must be positive")
        endpoint = _WebhookEndpoint(url, secret, delays, float(timeout))
        with self._lock:
            # Copy on write: the delivery thread reads the list without taking _lock.
            self._webhook_endpoints = [*self._webhook_endpoints, endpoint]

    def send_event(self, event_type: str, data: Json, *, timestamp_ms: int | None = None) -> str:
        """Queue an arbitrary event (one the emulator would not emit, a replay of an old payload, …) through
        the same delivery path as mutation events; returns its ``svix-id``."""
        with self._lock:
            if not self._webhook_endpoints:
                raise RuntimeError("no webhook endpoint registered; call add_webhook_endpoint() first")
            return self._emit(event_type, data, self.now_ms() if timestamp_ms is None else timestamp_ms)

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was delivered or given up on; False if ``timeout`` ran out first."""
        with self._webhook_cond:
            return self._webhook_cond.wait_for(
                lambda: not self._webhook_queue and self._webhook_in_flight == 0, timeout
            )

    def _emit(self, event_type: str, data: Json, timestamp_ms: int) -> str:
        """Envelope, serialise and queue one event; the caller holds _lock (so the queue keeps mutation order)
        and has checked that an endpoint exists."""
        envelope = self.event_envelope(event_type, data, timestamp_ms=timestamp_ms)
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        outgoing = _Outgoing(_new_msg_id(), event_type, body)
        self.webhook_events.append(envelope)
        with self._webhook_cond:
            self._webhook_queue.append(outgoing)
            self._ensure_delivery_thread()
            self._webhook_cond.notify_all()
        return outgoing.msg_id

    def _ensure_delivery_thread(self) -> None:
        """Start the delivery thread unless it runs or delivery is paused; the caller holds _webhook_cond."""
        if self._webhook_paused or not self._webhook_endpoints:
            return
        thread = self._webhook_thread
        if thread is not None and thread.is_alive() and not self._webhook_stop.is_set():
            return
        stop = threading.Event()
        self._webhook_stop = stop
        self._webhook_thread = threading.Thread(
            target=self._delivery_loop, args=(stop,), name="clerk-emulator-webhooks", daemon=True
        )
        self._webhook_thread.start()

    def _stop_delivery_thread(self) -> None:
        """Pause delivery and wait for the thread; an attempt in flight may take up to its timeout."""
        with self._webhook_cond:
            self._webhook_paused = True
            thread, self._webhook_thread = self._webhook_thread, None
            self._webhook_stop.set()
            self._webhook_cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            longest = max((e.timeout for e in self._webhook_endpoints), default=0.0)
            thread.join(timeout=longest + 1.0)

    def _delivery_loop(self, stop: threading.Event) -> None:
        """Deliver queued events in order until ``stop``; the event at the head stays queued until done, so a
        stop mid-event leaves it to be delivered again (same ``svix-id``) after a restart."""
        with httpx.Client(headers={"User-Agent": _WEBHOOK_USER_AGENT}, follow_redirects=False) as client:
            while True:
                with self._webhook_cond:
                    while not stop.is_set() and not self._webhook_queue:
                        self._webhook_cond.wait()
                    if stop.is_set():
                        return
                    item = self._webhook_queue[0]
                    self._webhook_in_flight += 1
                done = False
                try:
                    done = all(
                        [self._deliver(client, item, endpoint, stop) for endpoint in self._webhook_endpoints]
                    )
                finally:
                    with self._webhook_cond:
                        self._webhook_in_flight -= 1
                        if done and self._webhook_queue and self._webhook_queue[0] is item:
                            self._webhook_queue.popleft()
                        self._webhook_cond.notify_all()

    def _deliver(
        self, client: httpx.Client, item: _Outgoing, endpoint: _WebhookEndpoint, stop: threading.Event
    ) -> bool:
        """Attempt one event on one endpoint until it succeeds or runs out of retries (True), or until
        ``stop`` interrupts the retries (False)."""
        delays = endpoint.retry_delays
        attempt = 0
        while True:
            if stop.is_set():
                return False
            attempt += 1
            headers = {"Content-Type": "application/json"}
            headers.update(svix_headers(endpoint.secret, item.body, msg_id=item.msg_id))
            status: int | None = None
            error: str | None = None
            sent_at, started = time.time(), time.perf_counter()
            try:
                response = client.post(
                    endpoint.url, content=item.body, headers=headers, timeout=endpoint.timeout
                )
                status = response.status_code
            except Exception as exc:  # refused, reset, timed out, malformed answer: all count as no answer
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            record = DeliveryRecord(
                item.msg_id, item.event_type, attempt, status, error, sent_at, endpoint.url,
                time.perf_counter() - started,
            )  # fmt: skip
            with self._webhook_cond:
                self.deliveries.append(record)
                if not record.ok and attempt > len(delays):
                    self.failed_deliveries.append(record)
            if record.ok or attempt > len(delays):
                return True
            if stop.wait(delays[attempt - 1]):
                return False
