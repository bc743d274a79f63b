"""The process-wide client-side limit on requests to Clerk's Backend API.

Clerk allows a number of requests per 10 s per instance (secret key): 1,000 on production instances
(``sk_live_``), 100 on development ones (``sk_test_``). Every ``ClerkClient`` of a process that talks to the
same instance takes its requests from one ``RateLimiter``, so listings, point lookups and on-demand syncs
share the budget instead of each spending all of it.

The limiter keeps the send times of the last ``limit`` requests (a sliding log), and a request waits until
sending it leaves at most ``limit`` requests in any ``window + margin`` seconds. No window of 10 s can then
hold more than the limit, whatever algorithm Clerk counts with (a sliding window, or fixed ones), and a
listing may spend the whole first window's budget at once: a crawl takes about
``(requests - limit) / (limit / window)``, the least Clerk allows. A 429 pauses every waiting request for
the answer's ``Retry-After`` and halves the budget, which then recovers linearly.
"""

import hashlib
import threading
import time
from collections import deque

LIVE_KEY_PREFIX = "sk_live_"
LIVE_RATE_LIMIT = 1000
TEST_RATE_LIMIT = 100
RATE_WINDOW_SECONDS = 10.0

# Requests reach Clerk a little later than they leave the limiter, and not all equally late: the limiter
# counts over a slightly longer window than Clerk's, so that jitter cannot push one request too many into
# Clerk's window.
WINDOW_MARGIN_SECONDS = 0.2
SLOWDOWN_FACTOR = 0.5
MIN_RATE_FACTOR = 0.1
RECOVERY_SECONDS = 60.0


def default_rate_limit(secret_key: str) -> int:
    """Clerk's limit for the key's instance, in requests per 10 s: 1,000 for ``sk_live_`` keys, else 100
    (development instances, and the safe choice for a key of unknown kind)."""
    return LIVE_RATE_LIMIT if secret_key.startswith(LIVE_KEY_PREFIX) else TEST_RATE_LIMIT


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds, shared by every thread that calls ``acquire``."""

    def __init__(self, limit: int, window: float = RATE_WINDOW_SECONDS) -> None:
        if limit < 1:
            raise ValueError(f"a rate limit must allow at least one request per window, got {limit}")
        self.limit = limit
        self.window = window
        self.span = window + WINDOW_MARGIN_SECONDS  # the window the log counts over
        self.rate = limit / self.span  # requests/s once the first window's budget is spent
        self.throttled = 0  # 429 answers reported through ``penalize``
        self._lock = threading.Lock()
        self._sent: deque[float] = deque(maxlen=limit)  # send times (some in the future), oldest first
        self._resume_at = 0.0  # no request before this moment (the last Retry-After)
        self._factor = 1.0  # share of the budget allowed right after the last 429
        self._penalized_at = 0.0

    def __repr__(self) -> str:
        return f"RateLimiter(limit={self.limit}, window={self.window:g})"

    def acquire(self, *, after_retry_wait: bool = False) -> float:
        """Block until one more request may be sent; returns the seconds waited. ``after_retry_wait``: the
        caller has just waited out a ``Retry-After`` itself, so only the budget applies, not the pause."""
        with self._lock:
            now = time.monotonic()
            budget = max(1, int(self.limit * self._rate_factor(now)))
            send_at = now if after_retry_wait else max(now, self._resume_at)
            if len(self._sent) >= budget:
                send_at = max(send_at, self._sent[-budget] + self.span)
            self._sent.append(max(send_at, self._sent[-1]) if self._sent else send_at)
        wait = send_at - now
        if wait > 0:
            time.sleep(wait)
        return max(wait, 0.0)

    def penalize(self, retry_after: float) -> None:
        """Clerk answered 429: hold every request for ``retry_after`` seconds and shrink the budget (it
        halves, down to a tenth, and recovers over a minute)."""
        with self._lock:
            now = time.monotonic()
            self.throttled += 1
            self._factor = max(MIN_RATE_FACTOR, self._rate_factor(now) * SLOWDOWN_FACTOR)
            self._penalized_at = now
            self._resume_at = max(self._resume_at, now + retry_after)

    def current_rate(self) -> float:
        """Requests/s allowed now, once a window's budget is spent: ``rate``, or less after a 429."""
        with self._lock:
            return self.rate * self._rate_factor(time.monotonic())

    def _rate_factor(self, now: float) -> float:
        if self._factor >= 1.0:
            return 1.0
        recovered = (now - self._penalized_at) / RECOVERY_SECONDS
        if recovered >= 1.0:
            self._factor = 1.0
            return 1.0
        return self._factor + (1.0 - self._factor) * recovered


_shared: dict[tuple[str, str, int, float], RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(
    api_url: str, secret_key: str, limit: int, window: float = RATE_WINDOW_SECONDS
) -> RateLimiter:
    """The process's limiter for one Clerk instance (API URL and key) at ``limit`` requests per ``window``."""
    # A digest, so that this registry never holds the key itself.
    fingerprint = hashlib.sha256(secret_key.encode()).hexdigest()
    with _shared_lock:
        key = (api_url, fingerprint, limit, window)
        limiter = _shared.get(key)
        if limiter is None:
            limiter = _shared[key] = RateLimiter(limit, window)
        return limiter
