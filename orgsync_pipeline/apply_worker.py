"""Inline apply: the receiver process applies the events it committed, right after answering.

One background thread per receiver process, woken after each committed event, drains the inbox
through the same path as the ``clerk_webhook_apply`` job (:func:`events.apply_pending_events`):
claims in Clerk's order, a savepoint per event, retry/dead/quarantine rules, and a write-log entry
per table touched, which ``clerk_webhook_sensor`` reports to Dagster. The HTTP answer never waits
for it. Whatever it leaves behind (a crash, a database outage, a retry not yet due) is picked up
on its next wake-up, by its periodic poll, or by the sensor's backstop run.

The write path (validation with pandas and pandera) is imported by the worker's thread when it
starts, not with this module, so that importing the receiver does not load it.
"""

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine

from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store.retry import is_transient

log = logging.getLogger(__name__)

# After a wake, wait this long so that the events of a busy moment share one set-based batch: a
# batch's cost is mostly fixed, so fewer, larger batches leave more of the CPU to receiving.
COALESCE_SECONDS = 0.05
# When another drain holds the inbox it may have just finished its last claim: look again soon.
BUSY_RETRY_SECONDS = 0.2
# After a failure (database down), wait before draining again; doubles up to the maximum.
ERROR_BACKOFF_SECONDS = 0.5
ERROR_BACKOFF_MAX_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0


class ApplyWorker:
    """The receiver's background applier: :meth:`start` it, :meth:`wake` it after each commit,
    :meth:`stop` it when the app shuts down (it finishes the batch in hand first)."""

    def __init__(self, engine: Callable[[], Engine], settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Even with no commit to wake it, look for due retries and leftovers this often.
        self._poll_seconds = max(1.0, min(settings.webhook_backstop_seconds, 30.0))

    def start(self) -> None:
        """Start the thread; it drains once at start, for events left by an earlier process."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="orgsync-apply-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for a drain soon (cheap; called after every committed event)."""
        self._wake.set()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop after the batch in hand; pending events stay in the inbox for the next process."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the apply worker did not stop within %.0f s", timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the worker's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backoff = ERROR_BACKOFF_SECONDS
        timeout = self._poll_seconds
        while not self._stopping.is_set():
            self._wake.wait(timeout)
            if self._stopping.is_set():
                break
            self._stopping.wait(COALESCE_SECONDS)
            self._wake.clear()
            try:
                busy = self._drain()
            except Exception as exc:  # the database went away, or worse: never let the thread die
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "inline apply failed (%s); retrying in %.1f s", type(exc).__name__, backoff)
                timeout, backoff = backoff, min(backoff * 2, ERROR_BACKOFF_MAX_SECONDS)
                continue
            backoff = ERROR_BACKOFF_SECONDS
            timeout = BUSY_RETRY_SECONDS if busy else self._poll_seconds

    def _drain(self) -> bool:
        """Apply until the inbox has nothing claimable; True when another drain held the inbox."""
        from orgsync_pipeline.events import apply_pending_events  # loaded once, by the first drain

        report = apply_pending_events(
            self._engine(),
            self._settings,
            log,
            write_path="webhook",
            batch_size=self._settings.webhook_batch_size,
            max_batches=10**9,
            should_stop=self._stopping.is_set,
        )
        if report.batches:
            log.info(
                "inline apply: %s in %d batches (%.3f s)",
                dict(report.statuses),
                report.batches,
                report.duration_seconds,
            )
        return report.skipped_reason is not None
