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
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from bot.failures import FailureKind
from bot.retry import Backoff, retry
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

log = logging.getLogger(__name__)

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

ASSETS_PATH = "/api/assets"
FEATURES_PATH = "/api/features"
# Route names given to the ``on_request`` hook (the ``route`` label of the bot's
# ``upscale_onemin_requests_total``): uploads, feature calls, result polls, downloads.
ROUTE_ASSETS = "assets"
ROUTE_FEATURES = "features"
ROUTE_RESULTS = "results"  # GET /api/results/{uuid}; the client makes no such call yet
ROUTE_DOWNLOAD = "download"
_API_ROUTES = {ASSETS_PATH: ROUTE_ASSETS, FEATURES_PATH: ROUTE_FEATURES}
UPSCALER_TYPE = "IMAGE_UPSCALER"
UPSCALER_MODEL = "stable-image"

MAX_JSON_BYTES = 1024 * 1024  # largest API response body we read, bytes
MAX_REDIRECTS = 3  # redirect hops a download may take, each one re-checked
DOWNLOAD_CHUNK_BYTES = 64 * 1024  # read size while streaming a download, bytes
JOIN_IN_THREAD_BYTES = 1024 * 1024  # bodies larger than this are joined in a thread
SPOOL_WRITE_BYTES = 1024 * 1024  # download_to hands the file this much at a time, bytes
MAX_REASON_CHARS = 300  # longest service message kept in an error, characters
REDACTED = "[redacted]"

_CREDITS_RE = re.compile(
    r"requires\s+(?P<required>\d[\d,]*)\s+credits?.*?only\s+has\s+(?P<available>-?\d[\d,]*)",
    re.IGNORECASE | re.DOTALL,
)
_S3_ERROR_RE = re.compile(r"<(Code|Message)>([^<]{1,200})</\1>")

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


# -- errors -----------------------------------------------------------------------------


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


# -- results ----------------------------------------------------------------------------


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
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._result_hosts = frozenset(h.strip().lower() for h in result_hosts if h.strip())
        self._allow_loopback = is_loopback_url(self._base_url)
        self._upscale_timeout = upscale_timeout
        self._request_timeout = request_timeout
        self._download_timeout = download_timeout
        self._max_attempts = max_attempts
        self._backoff = Backoff(base=backoff_base, cap=backoff_cap)
        # Awaited before every API request, retries included (the bot's pacing gate).
        self._before_request = before_request
        # False: a 429 is raised at once (the caller waits in line and tries again).
        self._retry_rate_limited = retry_rate_limited
        self._on_request = on_request
        # How a wait between attempts is waited (tests record it instead of sleeping).
        self._sleep = sleep

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

        payload = await self._retrying(
            "upload",
            lambda: self._call_api(ASSETS_PATH, form(), self._request_timeout),
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
        payload = await self._retrying(
            "upscale",
            lambda: self._call_api(FEATURES_PATH, body, self._upscale_timeout),
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
        self._check_download_url(url)

        async def read(response: aiohttp.ClientResponse) -> bytes:
            return await _read_capped(response, max_bytes, capped_error=True)

        return await self._retrying("download", lambda: self._fetch(url, read), _is_transient)

    async def download_to(self, url: str, path: Path, max_bytes: int) -> int:
        """Stream a result URL into the file ``path`` (replaced); return its length.

        Like :meth:`download` (the same allow-list, redirect checks, cap, timeout per
        attempt, retries and errors), but the body goes to the file as it arrives, so at
        most about ``SPOOL_WRITE_BYTES`` of it is in memory; file writes run in a thread.
        Each attempt starts the file again. When the download fails or is cancelled the
        file is removed: ``path`` then holds nothing.
        """
        self._check_download_url(url)

        async def write(response: aiohttp.ClientResponse) -> int:
            return await _stream_capped(response, max_bytes, path)

        try:
            return await self._retrying("download", lambda: self._fetch(url, write), _is_transient)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink, missing_ok=True)
            raise

    # -- requests -----------------------------------------------------------------------

    def _retryable_429(self, err: OneMinError) -> bool:
        return self._retry_rate_limited or not isinstance(err, RateLimited)

    def _transient(self, err: OneMinError) -> bool:
        return _is_transient(err) and self._retryable_429(err)

    async def _call_api(self, path: str, body: Any, time_limit: float) -> Any:
        """POST ``body`` (JSON or a form) to the API and return the decoded JSON reply."""
        if self._before_request is not None:
            await self._before_request()
        headers = {"API-KEY": self._api_key}
        data = body
        if not isinstance(body, aiohttp.FormData):
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        status: int | None = None
        try:
            async with asyncio.timeout(time_limit):
                async with self._session.post(
                    self._base_url + path,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    # Replaces the session's default total timeout, which could cut a
                    # long synchronous upscale short; asyncio.timeout bounds the call.
                    timeout=aiohttp.ClientTimeout(total=None),
                ) as response:
                    status = response.status
                    ok = 200 <= response.status < 300
                    raw = await _read_capped(response, MAX_JSON_BYTES, capped_error=ok)
                    return self._decode(response, raw)
        except OneMinError:
            raise
        except TimeoutError as err:
            raise TimedOut(f"1min.ai did not answer {path} within {time_limit:g} s") from err
        except aiohttp.ClientConnectorError as err:
            raise ServiceUnavailable(
                f"could not connect to 1min.ai: {type(err).__name__}", not_started=True
            ) from err
        except aiohttp.ClientResponseError as err:  # an invalid HTTP response
            _drop_request_headers(err)
            raise ServiceUnavailable(
                f"1min.ai sent an invalid HTTP response to {path}", status=err.status or None
            ) from err
        except aiohttp.ClientError as err:
            raise ServiceUnavailable(
                f"connection to 1min.ai failed during {path}: {type(err).__name__}"
            ) from err
        finally:
            self._count(_API_ROUTES.get(path, path), status)

    def _count(self, route: str, status: int | None) -> None:
        """Tell the ``on_request`` hook about one finished request (never raises)."""
        if self._on_request is None:
            return
        try:
            self._on_request(route, status)
        except Exception:
            log.warning("The 1min.ai request hook failed", exc_info=True)

    def _decode(self, response: aiohttp.ClientResponse, raw: bytes) -> Any:
        """Turn a finished API response into JSON, or raise the error it stands for."""
        status = response.status
        ok = 200 <= status < 300
        is_html = "html" in response.content_type or raw.lstrip()[:1] == b"<"
        try:
            payload: Any = json.loads(raw)
        except ValueError as err:
            if ok and is_html:  # a proxy's error or challenge page
                raise ServiceUnavailable("1min.ai sent an HTML page", status=status) from err
            if ok:
                raise BadResponse("1min.ai sent malformed JSON", status=status) from err
            payload = None
        if not ok:
            raise self._error_for(response, payload if isinstance(payload, dict) else {}, is_html)
        if not isinstance(payload, dict):
            raise BadResponse("1min.ai sent JSON that is not an object", status=status)
        return payload

    def _error_for(
        self, response: aiohttp.ClientResponse, body: dict[str, Any], is_html: bool
    ) -> OneMinError:
        """Build the typed error for a non-2xx API response."""
        status = response.status
        code = self._clean(body.get("errorCode")) or None
        error = body.get("error")
        text = self._clean(
            body.get("message") or (error.get("message") if isinstance(error, dict) else error)
        )
        what = f"1min.ai answered {status}" + (f" {code}" if code else "")
        message = f"{what}: {text}" if text else what
        if status in (401, 403):
            return Unauthorized(message, status=status, error_code=code)
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"), body)
            return RateLimited(
                message, status=status, error_code=code, retry_after=retry_after, not_started=True
            )
        if status == 406 and (code == "INSUFFICIENT_CREDITS" or _CREDITS_RE.search(text)):
            match = _CREDITS_RE.search(text)
            required, available = (
                (_int(match["required"]), _int(match["available"])) if match else (None, None)
            )
            return OutOfCredits(
                message, status=status, error_code=code, required=required, available=available
            )
        if status in (400, 406, 413, 415, 422):
            details = self._clean(body.get("details"), limit=2 * MAX_REASON_CHARS) or None
            if details:
                message = f"{message} ({details})"
            return InputRejected(message, status=status, error_code=code, details=details)
        if status >= 500:
            if is_html:
                message = f"1min.ai answered {status} with an HTML page"
            return ServiceUnavailable(
                message, status=status, error_code=code, not_started=status == 503
            )
        return BadResponse(message, status=status, error_code=code)

    def _clean(self, value: Any, limit: int = MAX_REASON_CHARS) -> str:
        """Service text made safe to keep: a string, shortened, with the API key masked."""
        if value is None:
            return ""
        text = value if isinstance(value, str) else json.dumps(value)
        if self._api_key:
            text = text.replace(self._api_key, REDACTED)
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    async def _fetch(self, url: str, read: Callable[[aiohttp.ClientResponse], Awaitable[_T]]) -> _T:
        """GET ``url``, following allowed redirects; ``read`` takes the 2xx body."""
        host = urlsplit(url).hostname
        try:
            async with asyncio.timeout(self._download_timeout):
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
                                self._check_download_url(url)
                                continue
                            if response.status >= 400:
                                raw = await _read_capped(
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
            raise TimedOut(
                f"result download from {host} took over {self._download_timeout:g} s"
            ) from err
        except aiohttp.ClientConnectorError as err:
            raise ServiceUnavailable(
                f"could not connect to {host}: {type(err).__name__}", not_started=True
            ) from err
        except aiohttp.ClientError as err:
            raise ServiceUnavailable(
                f"result download from {host} failed: {type(err).__name__}"
            ) from err

    def _check_download_url(self, url: str) -> None:
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

    # -- retries ------------------------------------------------------------------------

    async def _retrying(
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


# -- helpers ----------------------------------------------------------------------------


def _drop_request_headers(err: aiohttp.ClientResponseError) -> None:
    """Forget the request headers (the API key among them) an aiohttp error carries."""
    err.request_info = err.request_info._replace(headers=CIMultiDictProxy(CIMultiDict()))
    err.args = (err.request_info, *err.args[1:])


def _is_transient(err: OneMinError) -> bool:
    return isinstance(err, ServiceUnavailable | RateLimited)


async def _read_capped(
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


async def _stream_capped(response: aiohttp.ClientResponse, max_bytes: int, path: Path) -> int:
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


def _download_error(response: aiohttp.ClientResponse, raw: bytes) -> OneMinError:
    """The typed error for a failed result download (S3 answers errors in XML)."""
    status = response.status
    fields = dict(_S3_ERROR_RE.findall(raw[:4096].decode("utf-8", "replace")))
    code = fields.get("Code")
    reason = f"result download answered {status}" + (f" {code}" if code else "")
    if "Message" in fields:
        reason += f": {fields['Message']}"
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"), {})
        return RateLimited(reason, status=status, error_code=code, retry_after=retry_after)
    if status >= 500:
        return ServiceUnavailable(reason, status=status, error_code=code)
    return BadResponse(reason, status=status, error_code=code)


def _retry_after(header: str | None, body: dict[str, Any]) -> float | None:
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


def _int(text: str) -> int:
    return int(text.replace(",", ""))
