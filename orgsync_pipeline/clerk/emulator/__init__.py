"""An in-process emulator of the Clerk Backend API (read side), for the demo, the tests and the benchmarks.

It serves the real response shapes of ``GET /v1/organizations``, ``/organization_memberships``, ``/users``
and their point lookups over loopback HTTP (stdlib ``ThreadingHTTPServer`` in a daemon thread), and lets the
caller mutate state through Python methods that follow Clerk's semantics (unique slugs, unique
(organization, user) memberships, cascading deletes, millisecond timestamps). Faults (429/5xx/slow
answers), a sliding-window rate limiter and request hooks let tests provoke the failures a sync must survive.

With a webhook endpoint registered (``add_webhook_endpoint``) it also acts as Clerk's webhook sender: every
mutation emits Clerk's event, which a background thread POSTs with Svix signatures and Svix-like retries.

State is held in dicts in creation order; because the emulator clock is strictly increasing, creation order is
``created_at`` order, so ``order_by=created_at`` listings never sort.

One module per concern, each adding methods to ``ClerkEmulator`` (``core``):

- ``state``: tables, clock, ids, read access and the API rendering of a membership;
- ``mutations``: create, update and delete organizations, users and memberships;
- ``seed``: deterministic sample data;
- ``webhooks``: Svix signing, event envelopes and the delivery thread;
- ``faults``: injected faults, request hooks and the rate limiter;
- ``routes``: the ``GET /v1/…`` endpoints (paging, ordering, filters);
- ``server``: the HTTP server, authentication and the request pipeline;
- ``tokens``: session tokens and the JWKS that verifies them;
- ``errors``: Clerk's error answers.
"""

from orgsync_pipeline.clerk.emulator.core import DEFAULT_SECRET_KEY, ClerkEmulator
from orgsync_pipeline.clerk.emulator.faults import RequestHook
from orgsync_pipeline.clerk.emulator.routes import DEFAULT_LIMIT, MAX_LIMIT
from orgsync_pipeline.clerk.emulator.server import API_PREFIX, RequestRecord
from orgsync_pipeline.clerk.emulator.state import Json
from orgsync_pipeline.clerk.emulator.tokens import (
    DEFAULT_AUTHORIZED_PARTY,
    DEFAULT_ISSUER,
    SessionTokenMinter,
)
from orgsync_pipeline.clerk.emulator.webhooks import (
    DEFAULT_RETRY_DELAYS,
    WEBHOOK_TIMEOUT_SECONDS,
    DeliveryRecord,
    svix_headers,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_AUTHORIZED_PARTY",
    "DEFAULT_ISSUER",
    "DEFAULT_LIMIT",
    "DEFAULT_RETRY_DELAYS",
    "DEFAULT_SECRET_KEY",
    "MAX_LIMIT",
    "WEBHOOK_TIMEOUT_SECONDS",
    "ClerkEmulator",
    "DeliveryRecord",
    "Json",
    "RequestHook",
    "RequestRecord",
    "SessionTokenMinter",
    "svix_headers",
]
