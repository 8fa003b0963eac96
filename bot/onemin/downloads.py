"""Result downloads: the presigned URLs 1min.ai hands out, fetched under an allow-list.

Only ``https`` URLs on the configured result hosts are fetched, plus plain loopback URLs
when the API base itself is loopback (a local relay or the test emulator). Redirects are
re-checked hop by hop, so a hostile response cannot make the bot fetch an internal
address; no API key is ever sent. Transient failures (5xx, dropped or truncated bodies,
429) are tried again (:class:`bot.onemin.http.Attempts`); a body is read under its cap,
or streamed to a file as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp

from bot.onemin.errors import (
    BadResponse,
    DownloadRefused,
    OneMinError,
    RateLimited,
    ServiceUnavailable,
    TimedOut,
    is_transient,
    parse_retry_after,
)
from bot.onemin.http import (
    MAX_JSON_BYTES,
    ROUTE_DOWNLOAD,
    Attempts,
    OnRequest,
    is_loopback_url,
    read_capped,
    stream_capped,
)

MAX_REDIRECTS = 3  # redirect hops a download may take, each one re-checked

_S3_ERROR_RE = re.compile(r"<(Code|Message)>([^<]{1,200})</\1>")

_T = TypeVar("_T")


class ResultDownloads:
    """Fetches result URLs on ``session``, each attempt within ``timeout`` seconds.

    ``result_hosts`` are the hosts allowed; with ``allow_loopback`` loopback URLs are
    allowed too. ``count`` hears every request, redirect hops included.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        result_hosts: Iterable[str],
        allow_loopback: bool,
        timeout: float,
        attempts: Attempts,
        count: OnRequest,
    ) -> None:
        self._session = session
        self._result_hosts = frozenset(h.strip().lower() for h in result_hosts if h.strip())
        self._allow_loopback = allow_loopback
        self._timeout = timeout
        self._attempts = attempts
        self._count = count

    async def download(self, url: str, max_bytes: int) -> bytes:
        """Fetch a result URL (no API key sent), at most ``max_bytes`` long.

        The URL and every redirect hop must pass the allow-list, or
        :class:`DownloadRefused` is raised without fetching it. The cap is enforced
        while streaming. Transient failures are retried. Raises
        :class:`DownloadRefused`, :class:`ResponseTooLarge`, :class:`RateLimited`,
        :class:`ServiceUnavailable` (5xx, dropped or truncated body),
        :class:`TimedOut` or :class:`BadResponse` (403 expired link, other 4xx).
        """
        self._check_url(url)

        async def read(response: aiohttp.ClientResponse) -> bytes:
            return await read_capped(response, max_bytes, capped_error=True)

        return await self._attempts.run("download", lambda: self._fetch(url, read), is_transient)

    async def download_to(self, url: str, path: Path, max_bytes: int) -> int:
        """Stream a result URL into the file ``path`` (replaced); return its length.

        Like :meth:`download` (the same allow-list, redirect checks, cap, timeout per
        attempt, retries and errors), but the body goes to the file as it arrives, so at
        most about ``SPOOL_WRITE_BYTES`` of it is in memory; file writes run in a thread.
        Each attempt starts the file again. When the download fails or is cancelled the
        file is removed: ``path`` then holds nothing.
        """
        self._check_url(url)

        async def write(response: aiohttp.ClientResponse) -> int:
            return await stream_capped(response, max_bytes, path)

        try:
            return await self._attempts.run(
                "download", lambda: self._fetch(url, write), is_transient
            )
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink, missing_ok=True)
            raise

    async def _fetch(self, url: str, read: Callable[[aiohttp.ClientResponse], Awaitable[_T]]) -> _T:
        """GET ``url``, following allowed redirects; ``read`` takes the 2xx body."""
        host = urlsplit(url).hostname
        try:
            async with asyncio.timeout(self._timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    status: int | None = None
                    try:
                        async with self._session.get(
                            url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=None)
                        ) as response:
                            status = response.status
                            if response.status in (301, 302, 303, 307, 308):
                                location = response.headers.get("Location", "")
                                url = urljoin(url, location)
                                self._check_url(url)
                                continue
                            if response.status >= 400:
                                raw = await read_capped(
                                    response, MAX_JSON_BYTES, capped_error=False
                                )
                                raise _download_error(response, raw)
                            return await read(response)
                    finally:
                        self._count(ROUTE_DOWNLOAD, status)
                raise BadResponse(f"result download redirected more than {MAX_REDIRECTS} times")
        except OneMinError:
            raise
        except TimeoutError as err:
            raise TimedOut(f"result download from {host} took over {self._timeout:g} s") from err
        except aiohttp.ClientConnectorError as err:
            raise ServiceUnavailable(
                f"could not connect to {host}: {type(err).__name__}", not_started=True
            ) from err
        except aiohttp.ClientError as err:
            raise ServiceUnavailable(
                f"result download from {host} failed: {type(err).__name__}"
            ) from err

    def _check_url(self, url: str) -> None:
        """Raise :class:`DownloadRefused` unless ``url`` may be fetched."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port
        except ValueError:
            raise DownloadRefused("result URL is malformed") from None
        where = f"{parts.scheme}://{host}" if host else repr(parts.scheme or "no scheme")
        if parts.username is not None or parts.password is not None:
            raise DownloadRefused(f"result URL {where} carries credentials")
        if self._allow_loopback and parts.scheme in ("http", "https") and is_loopback_url(url):
            return
        if parts.scheme != "https":
            raise DownloadRefused(f"result URL {where} is not https")
        if host not in self._result_hosts:
            raise DownloadRefused(f"result host {host or '(none)'} is not on the allow-list")
        if port not in (None, 443):
            raise DownloadRefused(f"result URL {where} uses port {port}")


def _download_error(response: aiohttp.ClientResponse, raw: bytes) -> OneMinError:
    """The typed error for a failed result download (S3 answers errors in XML)."""
    status = response.status
    fields = dict(_S3_ERROR_RE.findall(raw[:4096].decode("utf-8", "replace")))
    code = fields.get("Code")
    reason = f"result download answered {status}" + (f" {code}" if code else "")
    if "Message" in fields:
        reason += f": {fields['Message']}"
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), {})
        return RateLimited(reason, status=status, error_code=code, retry_after=retry_after)
    if status >= 500:
        return ServiceUnavailable(reason, status=status, error_code=code)
    return BadResponse(reason, status=status, error_code=code)
