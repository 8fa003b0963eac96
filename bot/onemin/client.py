"""Async client for 1min.ai: upload an image, upscale it 4x, download the result.

A small library on an injected :class:`aiohttp.ClientSession` (it never creates or closes
one), following the contract in ``docs/onemin-api.md``::

    client = OneMinClient(session, api_key)
    path = await client.upload(data, "cat.png", "image/png")  # POST /api/assets
    result = await client.upscale(path, "webp")                # POST /api/features
    image = await client.download(result.temporary_url, max_bytes=50 * 1024 * 1024)
    size = await client.download_to(result.temporary_url, path, max_bytes=200 * 1024 * 1024)

Every failure is a :class:`OneMinError` subclass with a short ``kind`` the caller maps to
a user message, the HTTP ``status`` and 1min.ai ``error_code`` when there were any, and
``not_started`` telling whether the request provably never reached the service.

Retries (:mod:`bot.retry`): ``upload`` and the downloads retry transient failures
(connection errors, 5xx, dropped or truncated responses, 429) with capped exponential
backoff and jitter, or after the ``Retry-After`` the service asked for when that is within
the cap. ``upscale`` spends credits, so it is retried only when the request provably did
not start (connection refused, 429, 503). Timeouts are never retried: each call's budget
is spent by then.

Downloads fetch only ``https`` URLs on the configured result hosts (the presigned S3 URLs
1min.ai hands out), plus plain loopback URLs when the API base itself is loopback (a local
relay or the test emulator). Redirects are re-checked hop by hop, so a hostile response
cannot make the bot fetch an internal address. The API key is sent only to the API base,
and never appears in an exception, a log line or a repr.

The client is this module's :class:`OneMinClient` (what an upload and an upscale mean,
and what is retried) over three modules: :mod:`bot.onemin.api` (a POST to the API with
the key, its answer decoded into JSON or the error it stands for),
:mod:`bot.onemin.downloads` (result URLs under the allow-list) and
:mod:`bot.onemin.http` (the retry policy, the request hook, capped reads), with the
errors in :mod:`bot.onemin.errors`. Import the client's names from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bot.onemin.api import ASSETS_PATH, FEATURES_PATH, ApiCalls
from bot.onemin.downloads import ResultDownloads
from bot.onemin.errors import (
    BadResponse,
    DownloadRefused,
    InputRejected,
    OneMinError,
    OutOfCredits,
    RateLimited,
    ResponseTooLarge,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
    is_transient,
)
from bot.onemin.http import (
    ROUTE_ASSETS,
    ROUTE_DOWNLOAD,
    ROUTE_FEATURES,
    ROUTE_RESULTS,
    Attempts,
    is_loopback_url,
    request_hook,
)
from bot.retry import Backoff
from bot.timings import ONEMIN_BACKOFF_BASE

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_RESULT_HOSTS",
    "DEFAULT_UPSCALE_TIMEOUT",
    "OUTPUT_FORMATS",
    "ROUTE_ASSETS",
    "ROUTE_DOWNLOAD",
    "ROUTE_FEATURES",
    "ROUTE_RESULTS",
    "BadResponse",
    "DownloadRefused",
    "InputRejected",
    "OneMinClient",
    "OneMinError",
    "OutOfCredits",
    "RateLimited",
    "ResponseTooLarge",
    "ServiceUnavailable",
    "TimedOut",
    "Unauthorized",
    "UpscaleResult",
    "is_loopback_url",
]

# The client's defaults; the owner's settings (ONEMIN_API_BASE, ONEMIN_RESULT_HOSTS,
# ONEMIN_UPSCALE_TIMEOUT) take theirs from here.
DEFAULT_API_BASE = "https://api.1min.ai"
# Hosts that serve 1min.ai's presigned result URLs (docs/onemin-api.md, "Downloading").
DEFAULT_RESULT_HOSTS: tuple[str, ...] = (
    "s3.us-east-1.amazonaws.com",
    "asset.1min.ai.s3.us-east-1.amazonaws.com",
    "asset.1min.ai.s3.amazonaws.com",
)
DEFAULT_UPSCALE_TIMEOUT = 180.0  # seconds the synchronous IMAGE_UPSCALER call may take
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")  # what the upscaler can return

UPSCALER_TYPE = "IMAGE_UPSCALER"
UPSCALER_MODEL = "stable-image"


@dataclass(frozen=True, slots=True)
class UpscaleResult:
    """A finished IMAGE_UPSCALER record.

    ``result_paths`` are storage keys (not URLs); ``temporary_url`` is the presigned URL
    to pass to :meth:`OneMinClient.download`. The credit figures are the team user's,
    when the response carries them (``used_credit`` may lag one call).
    """

    record_uuid: str
    status: str
    result_paths: tuple[str, ...]
    temporary_url: str
    credit_limit: int | None
    used_credit: int | None


# -- the client -------------------------------------------------------------------------


class OneMinClient:
    """1min.ai's asset and IMAGE_UPSCALER endpoints on a session the caller owns.

    Timeouts are in seconds: ``request_timeout`` per upload attempt, ``upscale_timeout``
    for the synchronous upscale call, ``download_timeout`` per download attempt.
    ``max_attempts`` bounds every retry loop; backoff grows from ``backoff_base`` and is
    capped at ``backoff_cap``, which also caps how long a ``Retry-After`` is waited for
    (a longer one is raised to the caller as :class:`RateLimited`).

    ``on_request`` (optional) is called after every HTTP request the client makes,
    retries, redirect hops and probes included, with the route (:data:`ROUTE_ASSETS`,
    :data:`ROUTE_FEATURES`, :data:`ROUTE_DOWNLOAD`) and the HTTP status, or None when no
    answer came (connection error, timeout, cancelled). It must be cheap and must not
    raise (what it raises is logged and ignored); the bot counts requests with it.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        *,
        base_url: str = DEFAULT_API_BASE,
        result_hosts: Iterable[str] = DEFAULT_RESULT_HOSTS,
        upscale_timeout: float = DEFAULT_UPSCALE_TIMEOUT,
        request_timeout: float = 60.0,
        download_timeout: float = 120.0,
        max_attempts: int = 3,
        backoff_base: float = ONEMIN_BACKOFF_BASE,
        backoff_cap: float = 8.0,
        before_request: Callable[[], Awaitable[None]] | None = None,
        retry_rate_limited: bool = True,
        on_request: Callable[[str, int | None], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._upscale_timeout = upscale_timeout
        self._request_timeout = request_timeout
        # False: a 429 is raised at once (the caller waits in line and tries again).
        self._retry_rate_limited = retry_rate_limited
        count = request_hook(on_request)
        # ``sleep`` waits between attempts (tests record it instead of sleeping).
        self._attempts = Attempts(max_attempts, Backoff(base=backoff_base, cap=backoff_cap), sleep)
        # ``before_request`` is awaited before every API request, retries included (the
        # bot's pacing gate); downloads do not pass it.
        self._api = ApiCalls(
            session, api_key, self._base_url, before_request=before_request, count=count
        )
        self._downloads = ResultDownloads(
            session,
            result_hosts=result_hosts,
            allow_loopback=is_loopback_url(self._base_url),
            timeout=download_timeout,
            attempts=self._attempts,
            count=count,
        )

    def __repr__(self) -> str:
        return f"OneMinClient(base_url={self._base_url!r})"

    # -- public API ---------------------------------------------------------------------

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload ``data`` as an asset and return its path for :meth:`upscale`.

        Transient failures are retried. Raises :class:`Unauthorized`,
        :class:`InputRejected`, :class:`RateLimited`, :class:`ServiceUnavailable`,
        :class:`TimedOut`, :class:`BadResponse` (no ``fileContent.path`` nor
        ``asset.key``) or :class:`ResponseTooLarge`.
        """

        def form() -> aiohttp.FormData:  # a FormData can be sent only once
            body = aiohttp.FormData()
            body.add_field("asset", data, filename=filename, content_type=content_type)
            return body

        payload = await self._attempts.run(
            "upload",
            lambda: self._api.post(ASSETS_PATH, form(), self._request_timeout),
            self._transient,
        )
        path = _dig(payload, "fileContent", "path") or _dig(payload, "asset", "key")
        if not isinstance(path, str) or not path:
            raise BadResponse("upload response has no fileContent.path or asset.key")
        return path

    async def upscale(self, asset_path: str, output_format: str = "png") -> UpscaleResult:
        """Upscale the uploaded asset 4x into ``output_format`` (png, jpeg or webp).

        This spends credits, so it is retried only when the request provably did not
        start (``not_started``: connection refused, 429, 503). Raises
        :class:`Unauthorized`, :class:`OutOfCredits`, :class:`InputRejected`,
        :class:`RateLimited`, :class:`ServiceUnavailable`, :class:`TimedOut`,
        :class:`BadResponse` (status other than SUCCESS, no result paths, empty
        ``temporaryUrl``, missing fields) or :class:`ResponseTooLarge`; and
        :class:`ValueError` for an unknown ``output_format`` before any request.
        """
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
        body = {
            "type": UPSCALER_TYPE,
            "model": UPSCALER_MODEL,
            "promptObject": {"imageUrl": asset_path, "output_format": output_format},
        }
        payload = await self._attempts.run(
            "upscale",
            lambda: self._api.post(FEATURES_PATH, body, self._upscale_timeout),
            lambda err: err.not_started and self._retryable_429(err),
        )
        return _parse_upscale(payload)

    async def download(self, url: str, max_bytes: int) -> bytes:
        """Fetch a result URL (no API key sent), at most ``max_bytes`` long.

        The URL and every redirect hop must pass the allow-list, or
        :class:`DownloadRefused` is raised without fetching it. The cap is enforced
        while streaming. Transient failures are retried. Raises
        :class:`DownloadRefused`, :class:`ResponseTooLarge`, :class:`RateLimited`,
        :class:`ServiceUnavailable` (5xx, dropped or truncated body),
        :class:`TimedOut` or :class:`BadResponse` (403 expired link, other 4xx).
        """
        return await self._downloads.download(url, max_bytes)

    async def download_to(self, url: str, path: Path, max_bytes: int) -> int:
        """Stream a result URL into the file ``path`` (replaced); return its length.

        Like :meth:`download` (the same allow-list, redirect checks, cap, timeout per
        attempt, retries and errors), but the body goes to the file as it arrives, so at
        most about ``SPOOL_WRITE_BYTES`` of it is in memory; file writes run in a thread.
        Each attempt starts the file again. When the download fails or is cancelled the
        file is removed: ``path`` then holds nothing.
        """
        return await self._downloads.download_to(url, path, max_bytes)

    # -- retries ------------------------------------------------------------------------

    def _retryable_429(self, err: OneMinError) -> bool:
        return self._retry_rate_limited or not isinstance(err, RateLimited)

    def _transient(self, err: OneMinError) -> bool:
        return is_transient(err) and self._retryable_429(err)


# -- helpers ----------------------------------------------------------------------------


def _parse_upscale(payload: dict[str, Any]) -> UpscaleResult:
    """Validate an IMAGE_UPSCALER response and extract the result."""
    record = payload.get("aiRecord")
    if not isinstance(record, dict):
        raise BadResponse("upscale response has no aiRecord")
    status = record.get("status")
    if status != "SUCCESS":
        raise BadResponse(f"upscale finished with status {str(status)[:40]!r}")
    uuid = record.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise BadResponse("upscale response has no aiRecord.uuid")
    paths = _dig(record, "aiRecordDetail", "resultObject")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise BadResponse("upscale response has no result paths")
    url = record.get("temporaryUrl")
    if not isinstance(url, str) or not url:
        raise BadResponse("upscale response has an empty temporaryUrl")
    team_user = record.get("teamUser")
    team_user = team_user if isinstance(team_user, dict) else {}
    return UpscaleResult(
        record_uuid=uuid,
        status=status,
        result_paths=tuple(paths),
        temporary_url=url,
        credit_limit=_credit(team_user.get("creditLimit")),
        used_credit=_credit(team_user.get("usedCredit")),
    )


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _credit(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
