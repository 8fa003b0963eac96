"""An emulator of 1min.ai's asset and IMAGE_UPSCALER API on 127.0.0.1.

Tests, benchmarks and the end-to-end harness point the real client at it. It is strict
about the contract in ``docs/onemin-api.md`` and really upscales: the result is the uploaded
image at 4x its size, encoded with Pillow (in a thread) in the requested format, served
at a presigned-looking ``temporaryUrl`` on the same host::

    async with OneMinEmulator(api_key="test-key") as emu:
        client = OneMinClient(session, "test-key", base_url=emu.base_url)
        emu.fail("upscale", "rate_limited", times=1, retry_after=2)
        ...
        assert emu.calls["upscale"] == 2 and emu.upscales == 1

Routes (the names used by :meth:`OneMinEmulator.fail` and the counters):

* ``"upload"``: ``POST /api/assets``, multipart with one file in field ``asset``;
* ``"upscale"``: ``POST /api/features``, ``{"type": "IMAGE_UPSCALER", "model":
  "stable-image", "promptObject": {"imageUrl": <a path it handed out>, "output_format":
  png|jpeg|webp}}``;
* ``"download"``: ``GET /asset.1min.ai/<key>?X-Amz-...``, no API key needed (a signature
  it did not issue gets S3's 403 XML).

The two API routes require the ``API-KEY`` header to equal the configured key (401
otherwise). Upscales cost ``upscale_cost`` credits out of ``credit_limit``; when the rest
is too small the answer is 406 ``INSUFFICIENT_CREDITS``. Stability's input limits are
enforced (400 ``EXTERNAL_API_RESPONSE_WITH_ERROR``).

Faults: ``emu.fail(route, fault, times=1, **options)`` makes the next ``times`` calls to
``route`` misbehave; queued faults are consumed in order, and a faulted call spends no
credits. Faults for every route:

* ``latency(seconds=1.0)``: wait, then answer normally;
* ``rate_limited(retry_after=None, retry_after_body=None)``: 429; ``retry_after`` is the
  ``Retry-After`` header (a number of seconds or any string, e.g. an HTTP date),
  ``retry_after_body`` a ``retryAfter`` field in the JSON body;
* ``server_error(status=500)``: a JSON error body; ``html_error(status=502)``: an HTML page;
* ``drop``: read the request, then close the connection without answering;
* ``garbage``: answer bytes that are not HTTP, then close;
* ``hang``: send the headers and part of the body, then never finish;
* ``oversized(size=2 MiB)``: 200 with a chunked body of ``size`` bytes (no Content-Length);
* ``respond(status=200, body=..., headers=None)``: any answer (a dict/list is sent as JSON,
  a string as text, bytes as they are), e.g. a response shape the client must cope with.

API routes only: ``malformed_json``, ``unauthorized`` (401), ``rejected(details=...)``
(400 ``EXTERNAL_API_RESPONSE_WITH_ERROR``). Upscale only: ``out_of_credits`` (406),
``failure_status`` (200 with ``status: "FAILURE"``), ``empty_url`` (``temporaryUrl: ""``),
``empty_result`` (``resultObject: []``), ``temporary_url(url=...)`` (a success whose
``temporaryUrl`` is ``url``). Download only: ``expired`` and ``forbidden`` (S3 403 XML),
``truncated`` (Content-Length larger than the bytes sent, then close),
``redirect(location=...)`` (302).

Counters for assertions: ``calls`` (per route, faulted calls included), ``upscales``
(successful), ``credits_spent``, ``assets`` (every upload), ``upload_filenames`` (the
multipart file name of every upload whose file arrived, in order, as the
``Content-Disposition`` header carried it: also those refused, or caught in a hold
when the bot died), ``results`` (key -> bytes),
``last_requests`` (per route: headers and body), ``statuses`` (``(route, status)`` ->
count of answers). ``upscale_delay`` (alias ``feature_latency``, seconds) makes every
upscale take that long, for throughput benchmarks.

Catching the bot mid-call: ``hold = emu.hold(route)`` makes every call to ``route`` (or,
with ``times=n``, the next n calls) wait (uploads once their file arrived, upscales once
their credits are held, downloads and result polls before they are answered) until
``hold.release()``; ``await hold.reached()`` returns once a call waits there (see
:class:`tests.emulators.hold.Hold`). A test that must see a job in a stage holds it there
instead of guessing a delay long enough.

Async variant: a feature body with ``"async": true`` is answered at once with ``status:
"PROCESSING"``; the upscale goes on in the background and ``GET /api/results/{uuid}``
(route ``"result"``) returns the record (``{"aiRecord": null}`` for an unknown id).

Fleet-level behaviour (runtime switches, all off by default):

* ``rate_limit(requests=180, window=60.0, retry_after=False)``: an organic limit of
  ``requests`` API calls (uploads, feature calls, result polls; not S3 downloads) per
  sliding ``window`` seconds per presented ``API-KEY``. Calls over it get 429
  ``RATE_LIMIT_EXCEEDED``, with ``Retry-After`` (whole seconds until the window frees a
  slot) only when ``retry_after`` is true. Refused calls do not take a slot.
  ``rate_limit(None)`` turns it off. ``rate_limited_count`` counts those 429s (not the
  ``rate_limited`` fault's); ``api_requests`` logs every API call's arrival
  (``at``: ``time.monotonic()``, key, route, status) and :meth:`max_in_window` gives the
  most calls any window held.
* ``refuse_key(True)``: 401 for every API call whatever the key; ``refuse_key(False)``
  undoes it. ``set_credits(n)``: the team has ``n`` credits left (0: every upscale gets
  406 ``INSUFFICIENT_CREDITS``).
* ``features_in_flight`` / ``max_features_in_flight``: IMAGE_UPSCALER calls admitted and
  not yet answered (or, async, not yet finished), now and at most;
  ``features_in_flight_from``: the synchronous ones by the caller's address (``(host,
  port)`` of its connection), to tell which of several client processes made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import secrets
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler
from PIL import Image

from tests.emulators.hold import Hold

__all__ = ["FAULTS", "ROUTES", "ApiRequest", "Asset", "OneMinEmulator", "RecordedRequest"]

ROUTES = ("upload", "upscale", "result", "download")
_COMMON = frozenset(
    {
        "latency",
        "rate_limited",
        "server_error",
        "html_error",
        "drop",
        "garbage",
        "hang",
        "oversized",
        "respond",
    }
)
_API = _COMMON | {"malformed_json", "unauthorized", "rejected"}
FAULTS: dict[str, frozenset[str]] = {
    "upload": _API,
    "upscale": _API
    | {"out_of_credits", "failure_status", "empty_url", "empty_result", "temporary_url"},
    "result": _API,
    "download": _COMMON | {"expired", "forbidden", "truncated", "redirect"},
}

BUCKET = "asset.1min.ai"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # 1min.ai's asset size limit, bytes
SCALE = 4  # IMAGE_UPSCALER output size per side, times the input
MIN_SIDE, MAX_SIDE = 32, 1536  # Stability fast upscaler input limits, px per side
MIN_PIXELS, MAX_PIXELS = 1024, 1_048_576  # ... and in total pixels
MAX_ASPECT = 2.5  # ... and in aspect ratio (either way)
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_OVERSIZED_BYTES = 2 * 1024 * 1024
SHUTDOWN_TIMEOUT = 1.0  # seconds stop() waits for handlers still running

CLOUDFLARE_PAGE = (
    "<!DOCTYPE html><html><head><title>api.1min.ai | 522: Connection timed out</title>"
    "</head><body><h1>Connection timed out</h1><p>Cloudflare</p></body></html>"
)
STABILITY_DETAILS = '{"name":"bad_request","errors":["image: dimensions are not supported"]}'


@dataclass(frozen=True, slots=True)
class Asset:
    """One uploaded file."""

    path: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """What a route last received: headers and the decoded body (JSON, or a summary)."""

    headers: dict[str, str]
    body: Any
    query: dict[str, str]


@dataclass(slots=True)
class ApiRequest:
    """One API call (upload, feature call or result poll) as it arrived."""

    at: float  # time.monotonic() on arrival
    key: str  # the API-KEY header, "" when missing
    route: str
    status: int | None = None  # the answer's status, once sent (None: dropped or hung)
    limited: bool = False  # answered 429 by the organic rate limit


@dataclass(frozen=True, slots=True)
class _RateLimit:
    requests: int
    window: float
    retry_after: bool


@dataclass(slots=True)
class _Fault:
    name: str
    remaining: int
    options: dict[str, Any]


class _Rejected(Exception):
    """Answer the current request with this JSON error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class OneMinEmulator:
    """A strict, fault-injectable 1min.ai on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        api_key: str = "emulator-api-key",
        *,
        credit_limit: int = 1_000_000,
        used_credit: int = 0,
        upscale_cost: int = 10,
        team_name: str = "Emulated",
    ) -> None:
        self.api_key = api_key
        self.credit_limit = credit_limit
        self.used_credit = used_credit
        self.upscale_cost = upscale_cost
        self.team_name = team_name
        self.upscale_delay = 0.0
        self.calls: Counter[str] = Counter()
        self.upscales = 0
        self.credits_spent = 0
        self.assets: list[Asset] = []
        self.upload_filenames: list[str] = []
        self.results: dict[str, bytes] = {}
        self.last_requests: dict[str, RecordedRequest] = {}
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.api_requests: list[ApiRequest] = []
        self.rate_limited_count = 0
        self.key_refused = False
        self.features_in_flight = 0
        self.max_features_in_flight = 0
        self.features_in_flight_from: Counter[tuple[str, int]] = Counter()
        self._rate_limit: _RateLimit | None = None
        self._admitted: dict[str, deque[float]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._assets_by_path: dict[str, Asset] = {}
        self._signatures: dict[str, str] = {}
        self._faults: dict[str, deque[_Fault]] = {route: deque() for route in ROUTES}
        self._holds: dict[str, Hold] = {}
        self._team_id = secrets.token_hex(8)
        self._user_id = secrets.token_hex(8)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Serve on 127.0.0.1 on a free port."""
        app = web.Application(
            client_max_size=MAX_UPLOAD_BYTES + 1024 * 1024, middlewares=[self._front_door]
        )
        app.add_routes(
            [
                web.post("/api/assets", self._upload),
                web.post("/api/features", self._upscale),
                web.get("/api/results/{uuid}", self._result),
                web.get(f"/{BUCKET}/{{key:.+}}", self._download),
            ]
        )
        self._stopping.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop serving; requests left hanging are ended."""
        self._stopping.set()
        for task in list(self._background):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the API base and the host of result URLs."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    # -- test controls ------------------------------------------------------------------

    def fail(self, route: str, fault: str, *, times: int = 1, **options: Any) -> None:
        """Make the next ``times`` calls to ``route`` answer with ``fault``."""
        if route not in FAULTS:
            raise ValueError(f"unknown route {route!r}; expected one of {', '.join(ROUTES)}")
        if fault not in FAULTS[route]:
            raise ValueError(f"fault {fault!r} does not apply to {route!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._faults[route].append(_Fault(fault, times, options))

    def clear_faults(self) -> None:
        """Forget every queued fault."""
        for queue in self._faults.values():
            queue.clear()

    def hold(self, route: str, *, times: int | None = None) -> Hold:
        """Make calls to ``route`` (only the next ``times`` ones, if given) wait until the
        returned hold is released."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {', '.join(ROUTES)}")
        hold = self._holds[route] = Hold(times)
        return hold

    async def _held(self, route: str) -> None:
        hold = self._holds.get(route)
        if hold is not None:
            await hold.passage(self._stopping)

    @property
    def credits_left(self) -> int:
        """Credits the team has left (``credit_limit - used_credit``)."""
        return self.credit_limit - self.used_credit

    def set_credits(self, credits_left: int) -> None:
        """Give the team exactly ``credits_left`` credits (0: upscales get 406)."""
        self.credit_limit = self.used_credit + credits_left

    def refuse_key(self, refused: bool = True) -> None:
        """Answer 401 to every API call while ``refused`` (a revoked key), whatever the key."""
        self.key_refused = refused

    @property
    def feature_latency(self) -> float:
        """Seconds every IMAGE_UPSCALER call takes (the same knob as ``upscale_delay``)."""
        return self.upscale_delay

    @feature_latency.setter
    def feature_latency(self, seconds: float) -> None:
        self.upscale_delay = seconds

    def rate_limit(
        self, requests: int | None = 180, window: float = 60.0, *, retry_after: bool = False
    ) -> None:
        """Allow ``requests`` API calls per sliding ``window`` s per key (None: no limit).

        Over the limit the answer is 429, with a ``Retry-After`` header only when
        ``retry_after`` is true. Calls already admitted keep their slots.
        """
        if requests is None:
            self._rate_limit = None
            return
        if requests < 1 or window <= 0:
            raise ValueError("requests must be at least 1 and window positive")
        self._rate_limit = _RateLimit(requests, window, retry_after)

    def max_in_window(
        self, window: float | None = None, *, key: str | None = None, admitted_only: bool = False
    ) -> int:
        """The most API calls that arrived within any ``window`` s (default: the limit's).

        ``key`` restricts to one API key; ``admitted_only`` leaves out the limiter's 429s.
        """
        if window is None:
            if self._rate_limit is None:
                raise ValueError("no rate limit set: pass window")
            window = self._rate_limit.window
        times = sorted(
            r.at
            for r in self.api_requests
            if (key is None or r.key == key) and not (admitted_only and r.limited)
        )
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    # -- routes -------------------------------------------------------------------------

    @web.middleware
    async def _front_door(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Log API calls, apply the organic rate limit and the refused key, count answers."""
        route = _route_of(request.path)
        if route is None:
            passed = await handler(request)
            if request.path.startswith(f"/{BUCKET}/"):
                self.statuses[("download", passed.status)] += 1
            return passed
        entry = ApiRequest(time.monotonic(), request.headers.get("API-KEY", ""), route)
        self.api_requests.append(entry)
        response: web.StreamResponse | None = self._limit(entry)
        if response is not None:
            self.calls[route] += 1
            self.rate_limited_count += 1
            entry.limited = True
            await request.read()
        elif self.key_refused:
            self.calls[route] += 1
            await request.read()
            response = web.json_response({"message": "Invalid API Key"}, status=401)
        else:
            response = await handler(request)
        entry.status = response.status
        self.statuses[(route, response.status)] += 1
        return response

    def _limit(self, entry: ApiRequest) -> web.Response | None:
        """A 429 when ``entry`` would overfill its key's window; else take a slot."""
        limit = self._rate_limit
        if limit is None:
            return None
        admitted = self._admitted.setdefault(entry.key, deque())
        while admitted and entry.at - admitted[0] >= limit.window:
            admitted.popleft()
        if len(admitted) < limit.requests:
            admitted.append(entry.at)
            return None
        headers = {}
        if limit.retry_after:
            wait = admitted[0] + limit.window - entry.at
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        body = {"errorCode": "RATE_LIMIT_EXCEEDED", "message": "Too many requests"}
        return web.json_response(body, status=429, headers=headers)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        self.calls["result"] += 1
        fault = self._next_fault("result")
        if fault is not None and (answer := await self._apply_fault(fault, request)) is not None:
            return answer
        self._remember("result", request, None)
        try:
            self._authorize(request)
        except _Rejected as rejected:
            return web.json_response(rejected.body, status=rejected.status)
        await self._held("result")
        return web.json_response({"aiRecord": self._records.get(request.match_info["uuid"])})

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        self.calls["upload"] += 1
        fault = self._next_fault("upload")
        if fault is not None and (answer := await self._apply_fault(fault, request)) is not None:
            return answer
        try:
            self._authorize(request)
            asset = await self._read_asset(request)
        except _Rejected as rejected:
            return web.json_response(rejected.body, status=rejected.status)
        await self._held("upload")
        self.assets.append(asset)
        self._assets_by_path[asset.path] = asset
        return web.json_response(self._asset_response(asset))

    async def _upscale(self, request: web.Request) -> web.StreamResponse:
        self.calls["upscale"] += 1
        peer = _peer(request)
        self._enter_feature()
        self.features_in_flight_from[peer] += 1
        try:
            return await self._feature_call(request)
        finally:
            self._leave_feature()
            self.features_in_flight_from[peer] -= 1
            if not self.features_in_flight_from[peer]:
                del self.features_in_flight_from[peer]

    async def _feature_call(self, request: web.Request) -> web.StreamResponse:
        fault = self._next_fault("upscale")
        if fault is not None and (answer := await self._apply_fault(fault, request)) is not None:
            return answer
        try:
            self._authorize(request)
            asset, fmt, body = await self._read_feature(request)
            if self.credits_left < self.upscale_cost:
                raise _Rejected(406, self._credits_error())
        except _Rejected as rejected:
            return web.json_response(rejected.body, status=rejected.status)
        # Held at once so concurrent calls cannot overspend; given back if the image fails.
        used_before = self.used_credit  # usedCredit lags one call on the real service
        self.used_credit += self.upscale_cost
        if body.get("async") is True:
            record = self._record(body["promptObject"], [], "", used_before)
            record["status"] = "PROCESSING"
            self._records[record["uuid"]] = record
            self._enter_feature()
            task = asyncio.create_task(self._finish_async(record, asset, fmt, fault))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return web.json_response({"aiRecord": record})
        try:
            record = await self._work(body["promptObject"], asset, fmt, fault, used_before)
        except _Rejected as rejected:
            return web.json_response(rejected.body, status=rejected.status)
        self._records[record["uuid"]] = record
        return web.json_response({"aiRecord": record})

    async def _work(
        self,
        prompt: dict[str, Any],
        asset: Asset,
        fmt: str,
        fault: _Fault | None,
        used_before: int,
    ) -> dict[str, Any]:
        """Upscale (after the latency knob) and build the record; credits given back on
        a rejected image."""
        try:
            await self._held("upscale")
            if self.upscale_delay > 0:
                await self._pause(self.upscale_delay)
            if self._stopping.is_set():
                # Woken by the stop: nobody waits for this image any more, and a thread
                # still encoding a large one would load the CPU after the emulator is gone
                # (under the next test or benchmark).
                raise _Rejected(503, {"message": "The service is shutting down"})
            data = await asyncio.to_thread(_upscale_image, asset.data, fmt)
        except _Rejected:
            self.used_credit -= self.upscale_cost
            raise
        key = self._unique_path(f"upscaled.{fmt}")
        self.results[key] = data
        self._signatures[key] = secrets.token_hex(32)
        self.credits_spent += self.upscale_cost
        self.upscales += 1
        record = self._record(prompt, [key], self._temporary_url(key), used_before)
        if fault is not None:
            _adjust_record(record, fault)
        return record

    async def _finish_async(
        self, record: dict[str, Any], asset: Asset, fmt: str, fault: _Fault | None
    ) -> None:
        try:
            prompt = record["aiRecordDetail"]["promptObject"]
            used_before = record["teamUser"]["usedCredit"]
            done = await self._work(prompt, asset, fmt, fault, used_before)
            done["uuid"] = record["uuid"]
        except _Rejected as rejected:
            done = record | {"status": "FAILURE", "additionalData": rejected.body}
        finally:
            self._leave_feature()
        self._records[record["uuid"]] = done

    def _enter_feature(self) -> None:
        self.features_in_flight += 1
        self.max_features_in_flight = max(self.max_features_in_flight, self.features_in_flight)

    def _leave_feature(self) -> None:
        self.features_in_flight -= 1

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self.calls["download"] += 1
        self._remember("download", request, None)
        key = request.match_info["key"]
        fault = self._next_fault("download")
        if fault is not None and (answer := await self._apply_fault(fault, request)) is not None:
            return answer
        signature = self._signatures.get(key)
        if signature is None or request.query.get("X-Amz-Signature") != signature:
            return _s3_error("AccessDenied", "Access Denied")
        await self._held("download")
        data = self.results[key]
        content_type = Image.MIME[_format_of(key)]
        if fault is not None and fault.name == "truncated":
            return await _truncated(request, data, content_type)
        return web.Response(body=data, content_type=content_type)

    # -- request handling ---------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        if request.headers.get("API-KEY") != self.api_key:
            raise _Rejected(401, {"message": "Invalid API Key"})

    async def _read_asset(self, request: web.Request) -> Asset:
        if request.content_type != "multipart/form-data":
            raise _Rejected(400, _missing("asset"))
        reader = await request.multipart()
        asset: Asset | None = None
        fields: list[str] = []
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise _Rejected(400, _missing("asset"))  # a nested multipart
            fields.append(part.name or "")
            if part.name != "asset" or not part.filename or asset is not None:
                continue
            data = await part.read()
            self.upload_filenames.append(part.filename)
            if len(data) > MAX_UPLOAD_BYTES:
                raise _Rejected(413, {"message": "File too large"})
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            asset = Asset(self._unique_path(part.filename), part.filename, content_type, data)
        body: dict[str, object] = {"fields": fields}
        if asset is not None:
            body |= {"filename": asset.filename, "content_type": asset.content_type}
            body["size"] = len(asset.data)
        self._remember("upload", request, body)
        if asset is None or fields != ["asset"]:
            raise _Rejected(400, _missing("asset"))
        return asset

    async def _read_feature(self, request: web.Request) -> tuple[Asset, str, dict[str, Any]]:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _Rejected(400, {"errorCode": "UNKNOWN_ERROR", "message": "Bad JSON"}) from None
        self._remember("upscale", request, body)
        if request.content_type != "application/json" or not isinstance(body, dict):
            raise _Rejected(400, {"errorCode": "UNKNOWN_ERROR", "message": "Expected JSON"})
        if body.get("type") != "IMAGE_UPSCALER":
            message = f"Unsupported feature type: {body.get('type')}"
            raise _Rejected(400, {"errorCode": "UNKNOWN_ERROR", "message": message})
        if body.get("model") != "stable-image":
            message = f"Model {body.get('model')} is not supported for feature IMAGE_UPSCALER"
            raise _Rejected(400, {"errorCode": "UNSUPPORTED_MODEL", "message": message})
        prompt = body.get("promptObject")
        if not isinstance(prompt, dict) or not prompt.get("imageUrl"):
            raise _Rejected(400, _missing("imageUrl"))
        asset = self._assets_by_path.get(prompt["imageUrl"])
        if asset is None:
            message = f"Failed to analyze media file: {prompt['imageUrl']}"
            raise _Rejected(400, {"errorCode": "UNKNOWN_ERROR", "message": message})
        fmt = prompt.get("output_format", "png")
        if fmt not in OUTPUT_FORMATS:
            details = '{"name":"bad_request","errors":["output_format: must be png, jpeg or webp"]}'
            raise _Rejected(400, _provider_error(details))
        return asset, fmt, body

    def _remember(self, route: str, request: web.Request, body: Any) -> None:
        self.last_requests[route] = RecordedRequest(
            headers=dict(request.headers), body=body, query=dict(request.query)
        )

    # -- faults -------------------------------------------------------------------------

    def _next_fault(self, route: str) -> _Fault | None:
        queue = self._faults[route]
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            queue.popleft()
        return fault

    async def _apply_fault(self, fault: _Fault, request: web.Request) -> web.StreamResponse | None:
        """Answer with ``fault``, or return None to let the call proceed."""
        name, options = fault.name, fault.options
        if name == "latency":
            await self._pause(options.get("seconds", 1.0))
            return None
        if name in ("failure_status", "empty_url", "empty_result", "temporary_url", "truncated"):
            return None  # applied to the normal answer
        await request.read()
        if name == "rate_limited":
            headers = {}
            if options.get("retry_after") is not None:
                headers["Retry-After"] = str(options["retry_after"])
            body: dict[str, Any] = {"errorCode": "RATE_LIMIT_EXCEEDED", "message": "Too many"}
            if options.get("retry_after_body") is not None:
                body["retryAfter"] = options["retry_after_body"]
            return web.json_response(body, status=429, headers=headers)
        if name == "server_error":
            body = {"errorCode": "INTERNAL_SERVER_ERROR", "message": "Something went wrong"}
            return web.json_response(body, status=options.get("status", 500))
        if name == "html_error":
            return web.Response(
                text=CLOUDFLARE_PAGE, status=options.get("status", 502), content_type="text/html"
            )
        if name in ("drop", "garbage"):
            if request.transport is not None:
                if name == "garbage":
                    request.transport.write(b"HTTP/1.1 OK-ish\r\n\r\n")
                request.transport.close()
            return web.Response()  # never delivered: the connection is gone
        if name == "hang":
            return await self._hang(request)
        if name == "oversized":
            return await _oversized(request, options.get("size", DEFAULT_OVERSIZED_BYTES))
        if name == "respond":
            status, answer = options.get("status", 200), options.get("body")
            if isinstance(answer, bytes):
                return web.Response(body=answer, status=status, headers=options.get("headers"))
            if isinstance(answer, str):
                return web.Response(text=answer, status=status, headers=options.get("headers"))
            return web.json_response(answer, status=status, headers=options.get("headers"))
        if name == "malformed_json":
            return web.Response(text='{"aiRecord": {"uuid": ', content_type="application/json")
        if name == "unauthorized":
            return web.json_response({"message": "Invalid API Key"}, status=401)
        if name == "rejected":
            details = options.get("details", STABILITY_DETAILS)
            return web.json_response(_provider_error(details), status=400)
        if name == "out_of_credits":
            return web.json_response(self._credits_error(), status=406)
        if name == "expired":
            return _s3_error("AccessDenied", "Request has expired")
        if name == "forbidden":
            return _s3_error("AccessDenied", "Access Denied")
        if name == "redirect":
            return web.Response(status=302, headers={"Location": options["location"]})
        raise AssertionError(f"unhandled fault {name!r}")

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1024
        await response.prepare(request)
        await response.write(b'{"aiRecord": ')
        await self._stopping.wait()
        if request.transport is not None:
            request.transport.close()
        return response

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up early when the emulator stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- response shapes ----------------------------------------------------------------

    def _unique_path(self, filename: str) -> str:
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[-100:]
        stamp = datetime.now(UTC).strftime("%Y_%m_%d_%H_%M_%S_%f")[:-3]
        path = f"images/{stamp}_{name}"
        n = 0
        while path in self._assets_by_path or path in self.results:
            n += 1
            path = f"images/{stamp}_{n}_{name}"
        return path

    def _temporary_url(self, key: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return (
            f"{self.base_url}/{BUCKET}/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIAEMULATOR%2F{stamp[:8]}%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Date={stamp}&X-Amz-Expires=604800"
            f"&X-Amz-Signature={self._signatures[key]}&X-Amz-SignedHeaders=host"
        )

    def _asset_response(self, asset: Asset) -> dict[str, Any]:
        now = _now()
        name = asset.path.rsplit("/", 1)[-1]
        return {
            "asset": {
                "fieldname": "asset",
                "originalname": asset.filename,
                "encoding": "7bit",
                "mimetype": asset.content_type,
                "size": len(asset.data),
                "bucket": BUCKET,
                "key": asset.path,
                "acl": "private",
                "contentType": "application/octet-stream",
                "storageClass": "STANDARD",
                "metadata": {"team-id": self._team_id, "user-id": self._user_id},
                "location": f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{asset.path}",
                "etag": f'"{secrets.token_hex(16)}"',
            },
            "fileContent": {
                "uuid": _uuid(),
                "path": asset.path,
                "type": name.rsplit(".", 1)[-1] if "." in name else "",
                "name": name,
                "content": "",
                "status": "ACTIVE",
                "metadata": {"token": 0, "character": 0},
                "createdAt": now,
            },
        }

    def _record(
        self, prompt: dict[str, Any], keys: list[str], url: str, used_credit: int
    ) -> dict[str, Any]:
        now = _now()
        return {
            "uuid": _uuid(),
            "userId": self._user_id,
            "teamId": self._team_id,
            "teamUser": {
                "teamId": self._team_id,
                "userId": self._user_id,
                "userName": "emulator",
                "userAvatar": None,
                "status": "ACTIVE",
                "role": "ADMIN",
                "creditLimit": self.credit_limit,
                "usedCredit": used_credit,
                "createdAt": now,
                "createdBy": "SYSTEM",
                "updatedAt": now,
                "updatedBy": "SYSTEM",
            },
            "model": "stable-image",
            "type": "IMAGE_UPSCALER",
            "metadata": None,
            "rating": None,
            "feedback": None,
            "conversationId": None,
            "status": "SUCCESS",
            "createdAt": now,
            "aiRecordDetail": {
                "promptObject": prompt,
                "resultObject": keys,
                "responseObject": {},
            },
            "additionalData": None,
            "temporaryUrl": url,
        }

    def _credits_error(self) -> dict[str, Any]:
        return {
            "errorCode": "INSUFFICIENT_CREDITS",
            "message": (
                f"The feature requires {self.upscale_cost} credits, but the "
                f"{self.team_name} team only has {max(self.credits_left, 0)} credits"
            ),
        }


# -- helpers ----------------------------------------------------------------------------


def _upscale_image(data: bytes, fmt: str) -> bytes:
    """Decode, check Stability's input limits, resize 4x and encode (CPU: run in a thread)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            if not (
                MIN_SIDE <= width <= MAX_SIDE
                and MIN_SIDE <= height <= MAX_SIDE
                and MIN_PIXELS <= width * height <= MAX_PIXELS
                and 1 / MAX_ASPECT <= width / height <= MAX_ASPECT
            ):
                raise _Rejected(400, _provider_error(STABILITY_DETAILS))
            mode = "RGB" if fmt == "jpeg" else ("RGBA" if "A" in image.getbands() else "RGB")
            result = image.convert(mode).resize((width * SCALE, height * SCALE))
    except _Rejected:
        raise
    except Exception:
        details = '{"name":"bad_request","errors":["image: could not be decoded"]}'
        raise _Rejected(400, _provider_error(details)) from None
    out = io.BytesIO()
    result.save(out, OUTPUT_FORMATS[fmt])
    return out.getvalue()


def _peer(request: web.Request) -> tuple[str, int]:
    """The caller's address (host, port), or ("", 0) once its connection is gone."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return (str(peer[0]), int(peer[1])) if peer else ("", 0)


def _route_of(path: str) -> str | None:
    """The API route a path belongs to (None for S3 downloads and unknown paths)."""
    if path == "/api/assets":
        return "upload"
    if path == "/api/features":
        return "upscale"
    if path.startswith("/api/results/"):
        return "result"
    return None


def _adjust_record(record: dict[str, Any], fault: _Fault) -> None:
    if fault.name == "failure_status":
        record["status"] = "FAILURE"
    elif fault.name == "empty_url":
        record["temporaryUrl"] = ""
    elif fault.name == "empty_result":
        record["aiRecordDetail"]["resultObject"] = []
    elif fault.name == "temporary_url":
        record["temporaryUrl"] = fault.options["url"]


async def _truncated(request: web.Request, data: bytes, content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = len(data) + 4096
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


async def _oversized(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b" " * 65536
    sent = 0
    try:
        while sent < size:
            await response.write(chunk[: size - sent])
            sent += len(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client stopped reading at its cap
    return response


def _s3_error(code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>"
    )
    return web.Response(text=body, status=403, content_type="application/xml")


def _provider_error(details: str) -> dict[str, Any]:
    return {
        "errorCode": "EXTERNAL_API_RESPONSE_WITH_ERROR",
        "message": "External API responded with an error",
        "details": details,
    }


def _missing(name: str) -> dict[str, Any]:
    return {
        "errorCode": "MISSING_REQUIRED_FIELDS",
        "message": f"Missing required fields: {name}",
        "details": json.dumps([{"field": name, "message": f"{name} is required"}]),
    }


def _format_of(key: str) -> str:
    return OUTPUT_FORMATS[key.rsplit(".", 1)[-1]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uuid() -> str:
    return str(uuid.uuid4())
