"""Reading a webhook request the receiver cannot trust: every check answers in our own words.

Nothing here raises on hostile input: a problem comes back as a short reason for a 400, never as
a RecursionError, a decoder's message or database text.
"""

import json
import re
from typing import Any

from orgsync_pipeline.storable import json_problem

# Svix ids are msg_ and about 27 base62 characters; the inbox keys on them (a btree index entry).
MAX_SVIX_ID_LENGTH = 255
SVIX_ID = re.compile(r"[A-Za-z0-9_.:-]+")
# Deeper than any Clerk event (envelope, data, metadata); Python's json decoder recurses per level.
MAX_JSON_DEPTH = 256
LOG_LIMIT = 80


class BadRequest(ValueError):
    """The request can never succeed; its message is the 400's reason."""


def check_svix_id(value: str) -> None:
    """Refuse a ``svix-id`` the inbox cannot key on: empty, over-long, or with odd characters."""
    if not value:
        raise BadRequest("svix-id header is empty")
    if len(value) > MAX_SVIX_ID_LENGTH:
        raise BadRequest(f"svix-id header is over {MAX_SVIX_ID_LENGTH} characters")
    if not SVIX_ID.fullmatch(value):
        raise BadRequest("svix-id header may only hold letters, digits and _ . : -")


def decode_body(body: bytes) -> str:
    """The body as text; Svix signs UTF-8 text, so anything else is refused before verification."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None


def parse_event(text: str) -> dict[str, Any]:
    """A verified body as a Clerk event envelope (a string ``type``, an object ``data``) whose values
    PostgreSQL's jsonb can hold."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        event = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise BadRequest("body is not JSON") from None
    if not (
        isinstance(event, dict) and isinstance(event.get("type"), str) and isinstance(event.get("data"), dict)
    ):
        raise BadRequest("body is not a Clerk event (needs a string type and an object data)")
    if len(event["type"]) > MAX_SVIX_ID_LENGTH:
        raise BadRequest(f"event type is over {MAX_SVIX_ID_LENGTH} characters")
    if json_problem(event, max_depth=MAX_JSON_DEPTH) is not None:
        raise BadRequest("event holds text the database cannot store (a NUL character or a lone surrogate)")
    return event


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def clip(value: object) -> str:
    """An attacker-controlled value cut for a log line, with control characters escaped."""
    text = repr(value) if not isinstance(value, str) else value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= LOG_LIMIT else text[: LOG_LIMIT - 3] + "..."


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
