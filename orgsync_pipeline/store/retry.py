"""Write transactions that survive the failures concurrency can cause: deadlocks, serialization
failures and lock timeouts are rolled back and run again, a bounded number of times with backoff.

The apply layer takes row locks in one order (sorted keys, parents before children), so two of its
writers should never deadlock; this is the second line of defence, for writers outside it and for
what the ordering cannot cover (a foreign-key check, an index page split).
"""

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs a rerun of the same transaction can get past.
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
RETRYABLE_SQLSTATES = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE, LOCK_NOT_AVAILABLE})
# Connection lost (08), insufficient resources such as too many connections (53), operator
# intervention: a server shutting down or restarting, a statement or lock timeout (57). The next
# attempt may find the server again (a new transaction on a new connection).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")

DEFAULT_ATTEMPTS = 5
BASE_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy or psycopg error, if there is one."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


def is_retryable(exc: BaseException) -> bool:
    """A deadlock, serialization failure or lock timeout: rerunning the transaction can succeed."""
    return sqlstate(exc) in RETRYABLE_SQLSTATES


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass by itself: :func:`is_retryable`, a lost or refused database
    connection, a server short of resources, a statement timeout, a timeout of ours, or Clerk
    unavailable after the client's own retries. Anything else (bad data, a
    refused deletion, a wrong key or URL) fails the same way on every attempt."""
    from orgsync_pipeline.clerk.errors import ClerkUnavailableError

    if isinstance(exc, ClerkUnavailableError | TimeoutError | ConnectionError) or is_retryable(exc):
        return True
    state = sqlstate(exc)
    if state is not None:
        return state.startswith(_TRANSIENT_SQLSTATE_CLASSES)
    # No SQLSTATE: the connection broke (or never opened) before the server could answer.
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


def backoff_seconds(attempt: int) -> float:
    """Jittered exponential delay before retry ``attempt`` (1-based), at most ``MAX_DELAY_SECONDS``."""
    ceiling: float = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2.0 ** (attempt - 1))
    return random.uniform(0.5, 1.0) * ceiling


def run_in_transaction(
    engine: Engine | Connection,
    fn: Callable[[Connection], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    what: str = "write transaction",
) -> T:
    """Run ``fn(conn)`` in a transaction of its own and commit; on a deadlock, serialization failure
    or lock timeout, roll back and run it again (at most ``attempts`` times in all). Given a connection
    rather than an engine, every attempt runs on it (its session's temporary tables stay visible).

    ``fn`` must do nothing but database work in ``conn`` (it may run more than once, and only the
    last run commits). Any other error, or the last attempt's, is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            with _transaction(engine) as conn:
                return fn(conn)
        except sa.exc.DBAPIError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            delay = backoff_seconds(attempt)
            log.warning(
                "%s: %s (SQLSTATE %s), retrying in %.2f s (attempt %d of %d)",
                what,
                type(exc.orig).__name__,
                sqlstate(exc),
                delay,
                attempt + 1,
                attempts,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextmanager
def _transaction(target: Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Engine):
        with target.begin() as conn:
            yield conn
    else:
        with target.begin():
            yield target
