"""The HTTP layer: a loopback ``ThreadingHTTPServer`` whose handler authenticates each request, applies the
API version check, rate limit, faults and hooks, routes it and records it."""

import hmac
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from orgsync_pipeline.clerk.emulator.errors import _ApiError, _not_found
from orgsync_pipeline.clerk.emulator.faults import FaultInjection
from orgsync_pipeline.clerk.emulator.routes import ApiRoutes
from orgsync_pipeline.clerk.emulator.state import Json

API_PREFIX = "/v1"
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class RequestRecord:
    """One request the emulator answered.

    ``path`` is relative to ``/v1`` (e.g. ``"/organizations"``; a path outside ``/v1`` is kept whole) and
    ``query`` maps each parameter to all its values, in order.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    api_version: str | None
    has_authorization: bool
    user_agent: str | None
    at: float = field(default_factory=time.time)

    def param(self, name: str) -> str | None:
        """First value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: "HttpApi"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a 2000-page crawl should not open 2000 connections
    disable_nagle_algorithm = True  # headers and body are separate writes; Nagle would stall each by ~40 ms
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: one line per request would drown test and benchmark output

    def _serve(self) -> None:
        self.server.emulator._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class HttpApi(ApiRoutes, FaultInjection):
    """Serve requests for the emulator: the server's state, its URL and the request pipeline."""

    def _init_server(self, secret_key: str, latency_seconds: float) -> None:
        self.secret_key = secret_key
        self.latency_seconds = latency_seconds
        self.requests: list[RequestRecord] = []
        self.errors: list[BaseException] = []  # unexpected exceptions while serving (answered as 500)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    @property
    def api_url(self) -> str:
        """Base URL of the running API, e.g. ``http://127.0.0.1:54321/v1``."""
        url = self._api_url()
        if url is None:
            raise RuntimeError("the Clerk emulator is not running; call start() first")
        return url

    def _api_url(self) -> str | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{API_PREFIX}"

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ------------------------------------------------------------------ HTTP

    def _serve(self, handler: _Handler) -> None:
        method = handler.command
        url = urlsplit(handler.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        raw_path = url.path
        if raw_path == API_PREFIX or raw_path.startswith(API_PREFIX + "/"):
            path = raw_path[len(API_PREFIX) :] or "/"
        else:
            path = raw_path
        headers: dict[str, str] = {}
        try:
            body: Any = self._answer(method, raw_path, path, query, handler)
            status = 200
        except _ApiError as err:
            status, body = err.status, self._error_body(err)
            headers.update(err.headers)
        except Exception as exc:  # a bug or a failing hook: answer like Clerk would, keep it for the test
            self.errors.append(exc)
            status = 500
            body = self._error_body(_ApiError(500, "internal_clerk_error", "Oops!", "Internal error"))
        record = RequestRecord(
            method=method,
            path=path,
            query=query,
            status=status,
            api_version=handler.headers.get("Clerk-API-Version"),
            has_authorization=handler.headers.get("Authorization") is not None,
            user_agent=handler.headers.get("User-Agent"),
        )
        with self._lock:
            self.requests.append(record)
        payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:  # the client gave up (e.g. a read timeout during a delay fault)
            handler.close_connection = True

    def _answer(
        self,
        method: str,
        raw_path: str,
        path: str,
        query: dict[str, list[str]],
        handler: _Handler,
    ) -> bytes:
        """The serialised 200 body, or an _ApiError for every Clerk error answer."""
        if self.latency_seconds > 0:  # outside _lock: concurrent requests wait in parallel, as over a network
            self._stopping.wait(self.latency_seconds)
        self._authenticate(handler.headers.get("Authorization"))
        self._check_api_version(handler.headers.get("Clerk-API-Version"), query)
        self._check_rate_limit()
        fault = self._take_fault(path, query)
        if fault is not None:
            if fault.delay_seconds > 0:
                self._stopping.wait(fault.delay_seconds)
            if fault.status >= 400:
                raise self._fault_error(fault)
        simple_query = {key: values[0] for key, values in query.items()}
        for hook in list(self._hooks):
            hook(method, path, simple_query)
        if not raw_path.startswith(API_PREFIX + "/") or method != "GET":
            raise _not_found("Page not found")
        segments = [unquote(s) for s in path.strip("/").split("/")]
        with self._lock:
            body = self._route(segments, query)
            # Serialise under the lock: rendered objects share dicts with live state.
            return json.dumps(body, separators=(",", ":")).encode()

    def _authenticate(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or not token or " " in token:
            raise _ApiError(
                401,
                "authorization_header_format_invalid",
                "Invalid Authorization header format",
                'Invalid Authorization header format. Must be "Bearer <YOUR_API_KEY>"',
            )
        if not hmac.compare_digest(token.encode(), self.secret_key.encode()):
            raise _ApiError(
                401,
                "clerk_key_invalid",
                "Secret Key invalid",
                "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.",
            )

    def _check_api_version(self, header: str | None, query: dict[str, list[str]]) -> None:
        in_query = query.get("__clerk_api_version")
        if header is not None and in_query:
            raise _ApiError(
                400,
                "request_header_invalid",
                "Conflicting API versions",
                "Send the API version either in the Clerk-API-Version header or in __clerk_api_version.",
            )
        value = header if header is not None else (in_query[0] if in_query else None)
        if value is not None and not _API_VERSION_RE.match(value.strip()):
            raise _ApiError(
                400,
                "request_header_invalid",
                "Invalid API version",
                f"{value!r} is not an API version (YYYY-MM-DD).",
            )

    def _error_body(self, err: _ApiError) -> Json:
        return {
            "errors": [{"message": err.message, "long_message": err.long_message, "code": err.code}],
            "clerk_trace_id": secrets.token_hex(16),
        }
