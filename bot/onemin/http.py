"""What the 1min.ai client's API calls and its result downloads share: how often a call
is tried (:class:`Attempts`), the request hook, and bodies read under a byte cap."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

import aiohttp

from bot.onemin.errors import OneMinError, RateLimited, ResponseTooLarge
from bot.retry import Backoff, retry

log = logging.getLogger(__name__)

# Route names given to the ``on_request`` hook (the ``route`` label of the bot's
# ``upscale_onemin_requests_total``): uploads, feature calls, result polls, downloads.
ROUTE_ASSETS = "assets"
ROUTE_FEATURES = "features"
ROUTE_RESULTS = "results"  # GET /api/results/{uuid}; the client makes no such call yet
ROUTE_DOWNLOAD = "download"

MAX_JSON_BYTES = 1024 * 1024  # largest API response body we read, bytes
DOWNLOAD_CHUNK_BYTES = 64 * 1024  # read size while streaming a download, bytes
JOIN_IN_THREAD_BYTES = 1024 * 1024  # bodies larger than this are joined in a thread
SPOOL_WRITE_BYTES = 1024 * 1024  # download_to hands the file this much at a time, bytes

# Called after every HTTP request with the route and the status (None: no answer came).
OnRequest = Callable[[str, int | None], None]

_T = TypeVar("_T")


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is localhost or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_hook(on_request: OnRequest | None) -> OnRequest:
    """``on_request`` made safe to call after every request: what it raises is logged
    and ignored (without a hook, nothing is called)."""

    def count(route: str, status: int | None) -> None:
        if on_request is None:
            return
        try:
            on_request(route, status)
        except Exception:
            log.warning("The 1min.ai request hook failed", exc_info=True)

    return count


class Attempts:
    """How often a call is tried: up to ``max_attempts`` times, with ``backoff`` between
    tries (or the ``Retry-After`` the service asked for, when within the backoff's cap),
    waited by ``sleep``."""

    def __init__(
        self,
        max_attempts: int,
        backoff: Backoff,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._sleep = sleep

    async def run(
        self,
        what: str,
        call: Callable[[], Awaitable[_T]],
        retryable: Callable[[OneMinError], bool],
    ) -> _T:
        """Run ``call`` up to ``max_attempts`` times while its errors are ``retryable``."""

        def wait(err: OneMinError, attempt: int) -> float | None:
            if attempt == self._max_attempts or not retryable(err):
                return None
            delay = self._delay(err, attempt)
            if delay is not None:
                log.info(
                    "1min.ai %s failed (%s: %s); retry %d of %d in %.2f s",
                    what,
                    err.kind,
                    err,
                    attempt,
                    self._max_attempts - 1,
                    delay,
                )
            return delay

        return await retry(call, OneMinError, wait, sleep=self._sleep)

    def _delay(self, err: OneMinError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if isinstance(err, RateLimited) and err.retry_after is not None:
            return err.retry_after if err.retry_after <= self._backoff.cap else None
        return self._backoff.delay(attempt)


async def read_capped(
    response: aiohttp.ClientResponse, max_bytes: int, *, capped_error: bool
) -> bytes:
    """Read the body, stopping at ``max_bytes``.

    With ``capped_error`` a longer body raises :class:`ResponseTooLarge` (before reading
    when Content-Length already says so); without it the body is silently truncated.
    """
    length = response.content_length
    if capped_error and length is not None and length > max_bytes:
        raise ResponseTooLarge(
            f"response of {length} bytes exceeds the {max_bytes}-byte cap",
            status=response.status,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            if capped_error:
                raise ResponseTooLarge(
                    f"response exceeds the {max_bytes}-byte cap", status=response.status
                )
            chunks.append(chunk[: max_bytes - (size - len(chunk))])
            break
        chunks.append(chunk)
    if size > JOIN_IN_THREAD_BYTES:
        # Joining ~50 MB holds the event loop for 50-90 ms; in a thread it does not.
        return await asyncio.to_thread(b"".join, chunks)
    return b"".join(chunks)


async def stream_capped(response: aiohttp.ClientResponse, max_bytes: int, path: Path) -> int:
    """Write the body to ``path`` (truncated first) as it arrives; return its length.

    A body longer than ``max_bytes`` raises :class:`ResponseTooLarge` (before anything
    is read when Content-Length already says so). Chunks are handed to the file in
    batches of about ``SPOOL_WRITE_BYTES``, each written in a thread.
    """
    length = response.content_length
    if length is not None and length > max_bytes:
        raise ResponseTooLarge(
            f"response of {length} bytes exceeds the {max_bytes}-byte cap",
            status=response.status,
        )
    fh: BinaryIO = await asyncio.to_thread(path.open, "wb")
    try:
        size = 0
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(
                    f"response exceeds the {max_bytes}-byte cap", status=response.status
                )
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= SPOOL_WRITE_BYTES:
                await asyncio.to_thread(fh.writelines, pending)
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(fh.writelines, pending)
    finally:
        # In a thread too: closing flushes, and waits for a write still running there.
        await asyncio.to_thread(fh.close)
    return size
