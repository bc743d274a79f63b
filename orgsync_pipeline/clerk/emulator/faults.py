"""Fault injection (error answers and delays), a sliding-window rate limiter and request hooks: the
failures a sync must survive, on demand."""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from orgsync_pipeline.clerk.emulator.errors import _ApiError, _too_many_requests
from orgsync_pipeline.clerk.emulator.state import EmulatorState

RequestHook = Callable[[str, str, dict[str, str]], None]


@dataclass
class _Fault:
    path: str
    status: int
    remaining: int  # -1 = forever
    retry_after: int | None
    query: dict[str, str]
    delay_seconds: float

    def matches(self, path: str, query: dict[str, list[str]]) -> bool:
        if self.remaining == 0 or path != self.path:
            return False
        return all(value in query.get(key, ()) for key, value in self.query.items())


_FAULT_CODES = {
    400: ("request_body_invalid", "Request body invalid"),
    401: ("authentication_invalid", "Unauthorized request"),
    403: ("authorization_invalid", "Unauthorized request"),
    404: ("resource_not_found", "not found"),
    422: ("form_param_value_invalid", "is invalid"),
}


class FaultInjection(EmulatorState):
    """Faults, hooks and the rate limiter, applied by the HTTP layer after authentication."""

    def _init_faults(self, rate_limit: int | None, rate_window_seconds: float) -> None:
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self._faults: list[_Fault] = []
        self._hooks: list[RequestHook] = []
        self._rate_times: deque[float] = deque()

    def inject_fault(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        query: dict[str, str] | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests (-1: all) for ``path`` (relative to /v1) whose query holds all
        of ``query`` with ``status`` and a Clerk error body, after sleeping ``delay_seconds``. A status below
        400 only delays: the request is then served normally. Faults apply after authentication."""
        if times == 0 or times < -1:
            raise ValueError("times must be positive, or -1 for forever")
        with self._lock:
            self._faults.append(_Fault(path, status, times, retry_after, dict(query or {}), delay_seconds))

    def clear_faults(self) -> None:
        """Drop all pending faults."""
        with self._lock:
            self._faults.clear()

    def add_request_hook(self, hook: RequestHook) -> None:
        """Call ``hook(method, path, query)`` (path relative to /v1, first value per parameter) before each
        authorized request is served; it may mutate the emulator's state."""
        with self._lock:
            self._hooks.append(hook)

    def _check_rate_limit(self) -> None:
        if self.rate_limit is None:
            return
        with self._lock:
            now = time.monotonic()
            while self._rate_times and self._rate_times[0] <= now - self.rate_window_seconds:
                self._rate_times.popleft()
            if len(self._rate_times) >= self.rate_limit:
                wait = self._rate_times[0] + self.rate_window_seconds - now
                raise _too_many_requests(max(1, int(wait + 0.999)))
            self._rate_times.append(now)

    def _take_fault(self, path: str, query: dict[str, list[str]]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path, query):
                    if fault.remaining > 0:
                        fault.remaining -= 1
                    return fault
            return None

    def _fault_error(self, fault: _Fault) -> _ApiError:
        if fault.status == 429:
            return _too_many_requests(fault.retry_after)
        if fault.status >= 500:
            return _ApiError(fault.status, "internal_clerk_error", "Oops!", "There was an internal error.")
        code, message = _FAULT_CODES.get(fault.status, ("unexpected_error", "Injected error"))
        return _ApiError(fault.status, code, message, f"{message} (injected by the Clerk emulator).")
