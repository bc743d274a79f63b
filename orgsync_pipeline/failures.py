"""Expected failures as data: each known exception → an operator's message, a cause and an exit code.

The CLI prints the message (one or two lines, no traceback) and exits with the code; a Dagster step
raises ``dg.Failure`` with the same message as its description and the cause in its metadata.
Every text leaving this module passes :func:`redact`, so no secret reaches a console or the UI.
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa

from orgsync_pipeline import exit_codes
from orgsync_pipeline.clerk.client import ClerkAuthError, ClerkRequestError, ClerkUnavailableError
from orgsync_pipeline.settings import SettingsError
from orgsync_pipeline.store.database import MigrationError
from orgsync_pipeline.store.retry import is_transient
from orgsync_pipeline.sync import DeletionGuardError

SECRET_VARIABLES = ("CLERK_SECRET_KEY", "CLERK_WEBHOOK_SECRET", "CLERK_WEBHOOK_SIGNING_SECRET")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_SECRET_SHAPES = re.compile(r"\b(sk_(?:live|test)_|whsec_)[A-Za-z0-9+/=_-]+")
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """An expected failure, told to an operator: what happened and what to do."""

    kind: str
    message: str
    cause: str
    exit_code: int


def redact(text: str) -> str:
    """``text`` without URL passwords, Clerk keys, signing secrets or the configured secrets' values."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _SECRET_SHAPES.sub(r"\1***", text)
    text = _PASSWORD_PARAM.sub(r"\1***", text)
    for value in _configured_secrets():
        text = text.replace(value, "***")
    return text


def _configured_secrets() -> list[str]:
    """The secret values in this process's environment (short ones would mask ordinary words)."""
    values = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    raw_url = os.environ.get("DATABASE_URL", "")
    if raw_url:
        try:
            values.append(sa.make_url(raw_url).password or "")
        except (sa.exc.ArgumentError, ValueError):
            values.append(raw_url)
    return [value for value in values if len(value) >= 6]


def describe(exc: BaseException) -> Problem | None:
    """The operator's story for an expected failure; None for an unexpected one (a bug: let it raise)."""
    if isinstance(exc, SettingsError):
        return Problem("settings", redact(str(exc)), type(exc).__name__, exit_codes.SETTINGS)
    if isinstance(exc, DeletionGuardError):
        return Problem("deletion_guard", redact(str(exc)), type(exc).__name__, exit_codes.DELETION_GUARD)
    if isinstance(exc, ClerkAuthError | ClerkUnavailableError | ClerkRequestError):
        return _clerk_problem(exc)
    if isinstance(exc, MigrationError):
        return Problem("database_migrations", redact(str(exc)), type(exc).__name__, exit_codes.DATABASE)
    if isinstance(exc, sa.exc.DBAPIError):
        return _database_problem(exc)
    return None


def _clerk_problem(exc: ClerkAuthError | ClerkUnavailableError | ClerkRequestError) -> Problem:
    cause = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ClerkAuthError):
        message = (
            f"Clerk refused CLERK_SECRET_KEY (HTTP {exc.status}{', ' + exc.code if exc.code else ''}).\n"
            "Set CLERK_SECRET_KEY to this instance's secret key (sk_live_… or sk_test_…) from Clerk's "
            "dashboard, API keys, and check that CLERK_API_URL points at the same instance."
        )
    elif isinstance(exc, ClerkUnavailableError):
        message = (
            f"Clerk did not answer after {exc.attempts} attempts in {exc.elapsed:.0f} s "
            f"(last: {redact(exc.last_cause)}).\n"
            "Check CLERK_API_URL and the network (or status.clerk.com); the next run retries."
        )
    else:
        detail = exc.long_message or str(exc)
        message = (
            f"Clerk rejected a request (HTTP {exc.status}): {redact(detail)}\n"
            f"Nothing was written for this step; report it with Clerk's trace id {exc.trace_id or '(none)'}."
        )
    return Problem("clerk", message, cause, exit_codes.CLERK)


def _database_problem(exc: sa.exc.DBAPIError) -> Problem:
    # psycopg's second line is a generic hint ("Is the server running…"); ours replaces it.
    detail = " ".join(redact(str(exc.orig).strip().split("\n")[0]).split())
    detail = detail.removeprefix("connection failed: ")
    cause = f"{type(exc.orig).__name__}: {detail}"
    lowered = detail.lower()
    if any(
        sign in lowered for sign in ("authentication failed", "no password supplied", "pg_hba.conf", 'role "')
    ):
        message = (
            f"PostgreSQL refused the login ({detail}).\n"
            "Fix the user and password in DATABASE_URL, or grant that role access to the database."
        )
    elif 'database "' in lowered and "does not exist" in lowered:
        message = (
            f"The database in DATABASE_URL does not exist ({detail}).\n"
            "Create it (createdb) or fix the database name in DATABASE_URL."
        )
    elif isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        message = (
            f"Cannot reach PostgreSQL ({detail}).\n"
            "Start the server, or fix the host and port in DATABASE_URL (unset, orgsync uses its own)."
        )
    else:
        message = (
            f"PostgreSQL refused a statement ({detail}).\n"
            "Check that DATABASE_URL's role may create and write orgsync's tables."
        )
    return Problem("database", message, cause, exit_codes.DATABASE)


@contextmanager
def step_failures() -> Iterator[None]:
    """Inside an asset: turn an expected failure into ``dg.Failure`` with the operator's message as
    its description and the cause in metadata; unexpected errors pass through unchanged."""
    try:
        yield
    except Exception as exc:
        problem = describe(exc)
        if problem is None:
            raise
        raise dg.Failure(
            description=problem.message,
            metadata={"cause": problem.cause, "kind": problem.kind, "exit_code": problem.exit_code},
            # The jobs' RetryPolicy retries only what may pass by itself (Clerk or database away).
            allow_retries=is_transient(exc),
        ) from None


def run_failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The description of a failed in-process run's first failed step, for a console."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return redact(data.error.message.strip().splitlines()[0])
    return "the run failed"
