"""Calls to 1min.ai's API: a POST with the API key, its answer decoded into JSON or into
the error it stands for.

The key is sent only to the API base, and never appears in an exception, a log line or a
repr: service text kept in an error has it masked, and an aiohttp error about an invalid
response forgets the request headers it carries.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from bot.onemin.errors import (
    BadResponse,
    InputRejected,
    OneMinError,
    OutOfCredits,
    RateLimited,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
    parse_retry_after,
)
from bot.onemin.http import MAX_JSON_BYTES, ROUTE_ASSETS, ROUTE_FEATURES, OnRequest, read_capped

ASSETS_PATH = "/api/assets"
FEATURES_PATH = "/api/features"
_API_ROUTES = {ASSETS_PATH: ROUTE_ASSETS, FEATURES_PATH: ROUTE_FEATURES}
MAX_REASON_CHARS = 300  # longest service message kept in an error, characters
REDACTED = "[redacted]"

_CREDITS_RE = re.compile(
    r"requires\s+(?P<required>\d[\d,]*)\s+credits?.*?only\s+has\s+(?P<available>-?\d[\d,]*)",
    re.IGNORECASE | re.DOTALL,
)


class ApiCalls:
    """POSTs to the API at ``base_url`` on ``session``, with ``api_key``.

    ``before_request`` is awaited before every request (the bot's pacing gate);
    ``count`` hears every request's route and status.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str,
        *,
        before_request: Callable[[], Awaitable[None]] | None,
        count: OnRequest,
    ) -> None:
        self._session = session
        self._api_key = api_key
        self._base_url = base_url
        self._before_request = before_request
        self._count = count

    async def post(self, path: str, body: Any, time_limit: float) -> Any:
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
                    raw = await read_capped(response, MAX_JSON_BYTES, capped_error=ok)
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
            retry_after = parse_retry_after(response.headers.get("Retry-After"), body)
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


def _drop_request_headers(err: aiohttp.ClientResponseError) -> None:
    """Forget the request headers (the API key among them) an aiohttp error carries."""
    err.request_info = err.request_info._replace(headers=CIMultiDictProxy(CIMultiDict()))
    err.args = (err.request_info, *err.args[1:])


def _int(text: str) -> int:
    return int(text.replace(",", ""))
