"""Why a job failed: one closed set of kinds shared by the core and the front end.

The 1min.ai client, the job queue and the cogs all name failures with
:class:`FailureKind`; the user's text for each kind lives with the other messages, keyed
by this enum, and a test checks that every kind has one.
"""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """A failed (or stopped) job's reason, as stored in ``jobs.error_kind``."""

    # 1min.ai refused or failed the request.
    UNAUTHORIZED = "unauthorized"  # the API key was refused (401/403)
    OUT_OF_CREDITS = "out_of_credits"  # 406 INSUFFICIENT_CREDITS
    RATE_LIMITED = "rate_limited"  # still rate limited after ONEMIN_BUSY_TIMEOUT
    INPUT_REJECTED = "input_rejected"  # the service could not process the image
    UNAVAILABLE = "unavailable"  # 5xx, dropped connection
    TIMEOUT = "timeout"  # the call took longer than allowed
    BAD_RESPONSE = "bad_response"  # malformed or unsuccessful answer
    DOWNLOAD_REFUSED = "download_refused"  # result URL off the allow-list
    TOO_LARGE = "too_large"  # answer over the byte cap
    ERROR = "error"  # any other 1min.ai error
    # The result or its delivery.
    BAD_RESULT = "bad_result"  # not an upscale of the input
    MISSING_PERMISSIONS = "missing_permissions"  # cannot post in the channel
    DELIVERY_ERROR = "delivery_error"  # Discord refused the message
    # The member's image.
    INPUT_INVALID = "input_invalid"  # not a usable image (the reason says which check)
    SOURCE_GONE = "source_gone"  # the attachment was deleted or its link expired
    SOURCE_FAILED = "source_failed"  # the attachment could not be downloaded
    # The bot's own reasons.
    CIRCUIT_OPEN = "circuit_open"  # 1min.ai kept refusing the account for too long
    INPUT_LOST = "input_lost"  # the input is gone (e.g. after an upgrade), or not storable
    EXPIRED = "expired"  # unfinished for longer than JOB_MAX_AGE (the bot was down)
    SHUTDOWN = "shutdown"  # refused because the bot is stopping
    CANCELLED = "cancelled"  # the member or a moderator pressed Cancel
    BUG = "bug"  # an unexpected exception (logged with its traceback)
