"""``ClerkEmulator``: the state, its mutators, sample data, webhooks, faults and the HTTP server in one
object, with its lifecycle (start, stop, context manager) and session tokens."""

import contextlib
import socket
import threading
from typing import Unpack

from orgsync_pipeline.clerk.emulator.seed import SampleData
from orgsync_pipeline.clerk.emulator.server import HttpApi, _Handler, _Server
from orgsync_pipeline.clerk.emulator.tokens import TokenOptions

DEFAULT_SECRET_KEY = "sk_test_orgsync_emulator"


class ClerkEmulator(SampleData, HttpApi):
    """A loopback Clerk Backend API with Python methods to shape its state.

    Read access: ``organizations``, ``users`` and ``memberships`` return ``{id: object}`` snapshots (deep
    copies, creation order) in the shapes the API serves; ``get_organization``, ``get_user`` and
    ``get_membership`` return one object or None. Every mutator returns what Clerk would return.
    """

    def __init__(
        self,
        secret_key: str = DEFAULT_SECRET_KEY,
        *,
        rate_limit: int | None = None,
        rate_window_seconds: float = 10.0,
        id_seed: int | None = None,
        latency_seconds: float = 0.0,
    ) -> None:
        """``rate_limit``: allow at most that many requests per ``rate_window_seconds`` (then 429 with
        ``Retry-After``); None disables the limiter. ``id_seed`` makes generated ids reproducible (the same
        sequence of creations yields the same ids); None draws them at random. ``latency_seconds``: every
        answer waits that long first, like a remote API (benchmarks)."""
        self._init_state(id_seed)
        self._init_server(secret_key, latency_seconds)
        self._init_faults(rate_limit, rate_window_seconds)
        self._init_webhooks()

    def __repr__(self) -> str:
        url = self._api_url() or "not started"
        return f"ClerkEmulator({url})"

    # ------------------------------------------------------------------ lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on a loopback address (port 0 = any free port); returns the API URL (``…/v1``)."""
        if host == "localhost":
            host = "127.0.0.1"
        if not host.startswith("127."):
            raise ValueError(f"the Clerk emulator serves on IPv4 loopback only, not {host!r}")
        if self._server is not None:
            raise RuntimeError("the Clerk emulator is already running")
        self._stopping.clear()
        server = _Server((host, port), _Handler)
        server.emulator = self
        self._server = server
        # A short poll interval keeps stop() fast: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="clerk-emulator", daemon=True
        )
        self._thread.start()
        with self._webhook_cond:
            self._webhook_paused = False
            self._ensure_delivery_thread()
        return self.api_url

    def stop(self) -> None:
        """Stop serving, drop open connections and stop webhook delivery (undelivered events stay queued and
        go out after ``start``); state is kept, so ``start`` may be called again."""
        self._stop_delivery_thread()
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "ClerkEmulator":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ session tokens

    def session_token(
        self,
        user_id: str,
        org_id: str | None = None,
        **options: Unpack[TokenOptions],
    ) -> str:
        """A Clerk session token (RS256, verifiable with ``GET /v1/jwks``) for ``user_id`` with ``org_id`` as
        the active organization, in claim shape ``version`` 2 (``o.id``) or 1 (``org_id``). The org's slug and
        the user's role come from the emulator's state when it has them. ``options`` (``version``, ``azp``,
        ``expires_in``, ``issued_at``, ``kid``) are :meth:`SessionTokenMinter.mint`'s, with its defaults."""
        org = None
        if org_id is not None:
            with self._lock:
                found = self._orgs.rows.get(org_id)
                mem_id = self._pairs.get((org_id, user_id))
                role = self._memberships.rows[mem_id]["role"] if mem_id else "org:member"
            org = {"id": org_id, "slug": found.get("slug") if found else None, "role": role}
        return self.tokens.mint(user_id, org=org, **options)
