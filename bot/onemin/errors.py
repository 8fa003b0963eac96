"""The errors of the 1min.ai client: one class per reason a call failed.

Every error is a :class:`OneMinError` with a short ``kind`` (a
:class:`bot.failures.FailureKind`) the caller maps to a user message, the HTTP
``status`` and 1min.ai ``error_code`` when there were any, and ``not_started`` telling
whether the request provably never reached the service (safe to retry a paid call).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, ClassVar

from bot.failures import FailureKind

__all__ = [
    "BadResponse",
    "DownloadRefused",
    "InputRejected",
    "OneMinError",
    "OutOfCredits",
    "RateLimited",
    "ResponseTooLarge",
    "ServiceUnavailable",
    "TimedOut",
    "Unauthorized",
    "is_transient",
    "parse_retry_after",
]


class OneMinError(Exception):
    """Base class of every error the client raises.

    ``status`` is the HTTP status (None when no response arrived), ``error_code`` the
    1min.ai ``errorCode``, ``message`` the reason, and ``not_started`` is True only when
    the request provably never started on the service (safe to retry a paid call).
    """

    kind: ClassVar[FailureKind] = FailureKind.ERROR

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        not_started: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.not_started = not_started


class Unauthorized(OneMinError):
    """The API key was refused (401/403)."""

    kind = FailureKind.UNAUTHORIZED


class OutOfCredits(OneMinError):
    """The team has too few credits (406 INSUFFICIENT_CREDITS).

    ``required`` and ``available`` come from the service's message when it names them.
    """

    kind = FailureKind.OUT_OF_CREDITS

    def __init__(
        self,
        message: str,
        *,
        required: int | None = None,
        available: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.required = required
        self.available = available


class RateLimited(OneMinError):
    """Too many requests (429). ``retry_after`` is in seconds when the service said."""

    kind = FailureKind.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InputRejected(OneMinError):
    """The service refused the request or image (400); ``details`` is its explanation."""

    kind = FailureKind.INPUT_REJECTED

    def __init__(self, message: str, *, details: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.details = details


class ServiceUnavailable(OneMinError):
    """The service could not be reached or failed (5xx, HTML page, dropped connection)."""

    kind = FailureKind.UNAVAILABLE


class TimedOut(OneMinError):
    """The call did not finish within its timeout."""

    kind = FailureKind.TIMEOUT


class BadResponse(OneMinError):
    """The service answered something unusable (malformed JSON, failed or empty result)."""

    kind = FailureKind.BAD_RESPONSE


class DownloadRefused(OneMinError):
    """A result URL is not on the allow-list; nothing was fetched."""

    kind = FailureKind.DOWNLOAD_REFUSED


class ResponseTooLarge(OneMinError):
    """A response body exceeded its byte cap; reading stopped there."""

    kind = FailureKind.TOO_LARGE


def is_transient(err: OneMinError) -> bool:
    """True for a failure that may pass when tried again (5xx, dropped connection, 429)."""
    return isinstance(err, ServiceUnavailable | RateLimited)


def parse_retry_after(header: str | None, body: dict[str, Any]) -> float | None:
    """Seconds to wait, from a Retry-After header (seconds or HTTP date) or the body."""
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - time.time())
    for key in ("retryAfter", "retry_after"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None
