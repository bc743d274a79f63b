"""Error answers in Clerk's ``ClerkErrors`` shape, shared by the HTTP layer, the routes and the faults."""


class _ApiError(Exception):
    """An error answer in Clerk's ``ClerkErrors`` shape."""

    def __init__(
        self, status: int, code: str, message: str, long_message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.long_message = long_message
        self.headers = headers or {}


def _not_found(long_message: str) -> _ApiError:
    return _ApiError(404, "resource_not_found", "not found", long_message)


def _too_many_requests(retry_after: int | None) -> _ApiError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return _ApiError(429, "too_many_requests", "Too many requests", "Too many requests, retry later", headers)


def _invalid_param(name: str, detail: str) -> _ApiError:
    return _ApiError(422, "form_param_value_invalid", "is invalid", f"{name} {detail}")
