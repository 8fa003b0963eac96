"""Download a member's image from Discord's CDN to a spool file, bounded in time and bytes.

The caller checks the URL's origin first; this streams the body to disk in batches
(written in a thread) and stops as soon as it passes ``max_bytes``, so a huge or endless
answer never sits in memory.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10, sock_read=30)
DOWNLOAD_CHUNK = 256 * 1024  # bytes read per chunk
WRITE_BATCH = 4 * 1024 * 1024  # bytes buffered before a write in a thread


class DownloadTooLarge(Exception):
    """The file is larger than allowed."""


class DownloadFailed(Exception):
    """The file could not be fetched (HTTP error, network, timeout)."""


class SourceGone(DownloadFailed):
    """The file is no longer there (HTTP 403, 404 or 410: deleted, or its signed link
    expired)."""


GONE_STATUSES = frozenset({403, 404, 410})


async def download_to(session: aiohttp.ClientSession, url: str, path: Path, max_bytes: int) -> int:
    """Stream ``url`` into ``path``; returns the bytes written.

    Raises :class:`DownloadTooLarge` past ``max_bytes``, :class:`SourceGone` when the file
    is no longer there, and :class:`DownloadFailed` for anything else. Redirects are not
    followed (Discord's CDN does not redirect).
    """
    try:
        async with session.get(url, timeout=DOWNLOAD_TIMEOUT, allow_redirects=False) as response:
            if response.status != 200:
                log.info("Attachment download answered HTTP %d", response.status)
                gone = response.status in GONE_STATUSES
                raise (SourceGone if gone else DownloadFailed)(f"HTTP {response.status}")
            if (response.content_length or 0) > max_bytes:
                raise DownloadTooLarge
            return await _stream_to_file(response, path, max_bytes)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("Attachment download failed: %s", type(exc).__name__)
        raise DownloadFailed(type(exc).__name__) from None


async def _stream_to_file(response: aiohttp.ClientResponse, path: Path, max_bytes: int) -> int:
    received = 0
    buffer = bytearray()
    fh = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
            received += len(chunk)
            if received > max_bytes:
                raise DownloadTooLarge
            buffer += chunk
            if len(buffer) >= WRITE_BATCH:
                await asyncio.to_thread(fh.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(fh.write, bytes(buffer))
    finally:
        await asyncio.to_thread(fh.close)
    return received
