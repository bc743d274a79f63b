"""What PostgreSQL can store, checked on untrusted values: text without NUL or lone surrogates,
JSON within depth and number limits, ids that fit an index entry; and a bounded ``repr`` for reasons
and logs.

Standard library only: the webhook receiver checks payloads with it before they reach the inbox,
without loading the validation layer (pandas, pandera).
"""

import math
import reprlib
from typing import Any

# Clerk ids are about 30 characters. The cap keeps every id far below what a btree index entry holds
# (about 2,700 bytes): a longer one would fail the whole batch's insert, not just its own record.
MAX_ID_LENGTH = 255
# PostgreSQL's jsonb parser recurses (its limit is the server's stack, about 10,000 levels by default),
# and so do Python's json and repr: 100 levels is far past any real metadata and far below both.
MAX_JSON_DEPTH = 100
# jsonb numbers are numeric (131,072 digits), but Python refuses to print an int over 4,300 digits.
MAX_INT_BITS = 3_300  # about 1,000 decimal digits


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store ``value`` as text, in words a person can act on; None if it can."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def json_problem(value: Any, *, where: str = "the value", max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why PostgreSQL cannot store ``value`` as jsonb (NUL or lone surrogates in a string or key, a
    number JSON cannot hold, nesting deeper than ``max_depth``), naming where; None if it can.

    Iterative, so a value nested thousands of levels deep is reported, not a RecursionError.
    """
    # A path is (parent path, key), rendered only for the one value reported.
    stack: list[tuple[Any, Any, int]] = [(value, None, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return f"{_render_path(where, path)} is nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(item, dict):
                    problem = text_problem(key) if isinstance(key, str) else "is not text"
                    if problem:
                        return f"a key in {_render_path(where, path)} {problem} (got {short_repr(key)})"
                stack.append((child, (path, key), depth + 1))
            continue
        problem = _scalar_json_problem(item)
        if problem:
            return f"{_render_path(where, path)} {problem}"
    return None


def _scalar_json_problem(item: Any) -> str | None:
    if isinstance(item, str):
        problem = text_problem(item)
        return f"{problem} (got {short_repr(item)})" if problem else None
    if isinstance(item, bool) or item is None:
        return None
    if isinstance(item, int):
        return "is a number of over 1,000 digits" if item.bit_length() > MAX_INT_BITS else None
    if isinstance(item, float):
        return None if math.isfinite(item) else f"is {item!r}, which JSON cannot hold"
    return f"is a {type(item).__name__}, not a JSON value"


def _render_path(where: str, path: Any) -> str:
    keys: list[Any] = []
    while path is not None:
        path, key = path
        keys.append(key)
    rendered = where + "".join(f"[{short_repr(key)}]" for key in reversed(keys[-20:]))
    return _clip(rendered)


def storable_text(value: str) -> str:
    """``value`` with what PostgreSQL cannot store written out as escapes: NUL as the six characters
    ``\\u0000``, a lone surrogate as ``\\udXXX`` (for quarantine payloads: readable, never lost)."""
    if value.isascii() and "\x00" not in value:
        return value
    escaped = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return escaped.replace("\x00", "\\u0000")


def storable_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``value`` as JSON that jsonb can hold: strings and keys through :func:`storable_text`, numbers
    JSON cannot hold and other objects as text, containers deeper than ``max_depth`` replaced by a note."""
    return _storable(value, max_depth, 1)


def _storable(value: Any, max_depth: int, depth: int) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= MAX_INT_BITS else f"<a number of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict | list | tuple):
        if depth > max_depth:
            return f"<cut: nested deeper than {max_depth} levels>"
        if isinstance(value, dict):
            return {
                storable_text(key if isinstance(key, str) else short_repr(key)): _storable(
                    child, max_depth, depth + 1
                )
                for key, child in value.items()
            }
        return [_storable(child, max_depth, depth + 1) for child in value]
    return storable_text(str(value))


def storable_id(value: Any) -> str | None:
    """``value`` when it can key a row (text PostgreSQL can store, at most ``MAX_ID_LENGTH``
    characters, not empty), else None."""
    if isinstance(value, str) and value and len(value) <= MAX_ID_LENGTH and text_problem(value) is None:
        return value
    return None


class _SafeRepr(reprlib.Repr):
    """``repr`` bounded in depth and length: safe on values nested thousands of levels deep and on
    integers Python refuses to print in full."""

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if x.bit_length() <= MAX_INT_BITS else f"<a number of {x.bit_length()} bits>"


_safe_repr = _SafeRepr()
_safe_repr.maxlevel = 3
_safe_repr.maxstring = 80
_safe_repr.maxother = 80
_safe_repr.maxlong = 80


def short_repr(value: Any) -> str:
    """A ``repr`` of an untrusted value fit for reasons and logs: at most 80 characters, NUL and
    surrogates escaped, never a RecursionError."""
    return _clip(_safe_repr.repr(value))


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
