"""The errors the Clerk client raises; importable without the client (the paginator raises them too)."""


class ClerkError(Exception):
    """Base class for every error raised by the Clerk client."""


class ClerkAuthError(ClerkError):
    """Clerk refused the secret key (HTTP 401/403)."""

    def __init__(self, message: str, *, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ClerkRequestError(ClerkError):
    """Clerk rejected the request (a 4xx other than 401/403/429, or a malformed answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        long_message: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.long_message = long_message
        self.trace_id = trace_id


class ClerkUnavailableError(ClerkError):
    """Clerk kept failing (5xx, 429, connection errors, timeouts) until the retry budget was spent."""

    def __init__(self, message: str, *, attempts: int, elapsed: float, last_cause: str) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed = elapsed
        self.last_cause = last_cause
