"""URL checks shared by the configuration schema."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


def check_url(value: str, schemes: Iterable[str], *, allow_credentials: bool = False) -> str:
    """Return `value` when it is an absolute URL with one of `schemes`, else raise ValueError."""
    allowed = tuple(schemes)
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in allowed:
        shown = parts.scheme or "none"
        raise ValueError(f"scheme {shown!r} is not supported: use {' or '.join(allowed)}://")
    if not parts.hostname:
        raise ValueError("has no host name")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain spaces")
    if (parts.username or parts.password) and not allow_credentials:
        raise ValueError(
            "must not embed user:password; credentials never go in group_data "
            "(they would be printed and written to world-readable files)"
        )
    del port
    return value
