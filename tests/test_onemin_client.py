"""The 1min.ai client against the emulator: happy path, every error, retries, allow-list."""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.onemin import http as onemin_http
from bot.onemin.client import (
    BadResponse,
    DownloadRefused,
    InputRejected,
    OneMinClient,
    OneMinError,
    OutOfCredits,
    RateLimited,
    ResponseTooLarge,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
)
from tests.emulators.onemin import OneMinEmulator

KEY = "onemin-test-key-Qw7Zr3xP"
INPUT_SIZE = (64, 48)  # px; small enough to keep every upscale quick
SHORT_TIMEOUT = 0.3  # seconds, for the tests that wait for a hang


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = INPUT_SIZE) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(out, fmt)
    return out.getvalue()


class RequestLog:
    """Every URL the session started a request for (an aiohttp trace)."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)

    async def _started(self, _session: Any, _ctx: SimpleNamespace, params: Any) -> None:
        self.urls.append(str(params.url))


@pytest.fixture
async def emu() -> AsyncIterator[OneMinEmulator]:
    async with OneMinEmulator(KEY, upscale_cost=10) as emulator:
        yield emulator


@pytest.fixture
def traced() -> RequestLog:
    return RequestLog()


@pytest.fixture
async def session(traced: RequestLog) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trace_configs=[traced.trace]) as http:
        yield http


@pytest.fixture
def unused_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sleeps() -> list[float]:
    """The waits between attempts of the clients made here, recorded instead of slept."""
    return []


@pytest.fixture
def nap(sleeps: list[float]) -> Callable[[float], Awaitable[None]]:
    """A client's ``sleep``: records the wait in ``sleeps`` and returns at once."""

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    return record


@pytest.fixture
def make_client(
    session: aiohttp.ClientSession, emu: OneMinEmulator, nap: Callable[[float], Awaitable[None]]
) -> Callable[..., OneMinClient]:
    def make(**overrides: Any) -> OneMinClient:
        options: dict[str, Any] = {
            "base_url": emu.base_url,
            "request_timeout": 5.0,
            "upscale_timeout": 5.0,
            "download_timeout": 5.0,
            "backoff_base": 0.01,
            "backoff_cap": 1.0,
            "sleep": nap,
        }
        options.update(overrides)
        api_key = options.pop("api_key", KEY)
        return OneMinClient(session, api_key, **options)

    return make


@pytest.fixture
def client(make_client: Callable[..., OneMinClient]) -> OneMinClient:
    return make_client()


async def upload(client: OneMinClient) -> str:
    return await client.upload(image_bytes(), "cat.png", "image/png")


async def upscaled_url(client: OneMinClient, fmt: str = "png") -> str:
    return (await client.upscale(await upload(client), fmt)).temporary_url


# -- happy path -------------------------------------------------------------------------


async def test_upload_returns_the_asset_path(client: OneMinClient, emu: OneMinEmulator) -> None:
    """upload() returns fileContent.path, the path the service handed out."""
    path = await upload(client)
    assert [asset.path for asset in emu.assets] == [path]


async def test_upload_sends_one_asset_field(client: OneMinClient, emu: OneMinEmulator) -> None:
    """The upload is multipart with exactly one file, in field asset, with its name and type."""
    await client.upload(image_bytes("JPEG"), "photo.jpg", "image/jpeg")
    sent = emu.last_requests["upload"]
    assert sent.body == {
        "fields": ["asset"],
        "filename": "photo.jpg",
        "content_type": "image/jpeg",
        "size": len(image_bytes("JPEG")),
    }
    assert sent.headers["API-KEY"] == KEY


async def test_upload_falls_back_to_the_asset_key(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """Without fileContent.path, upload() returns asset.key."""
    emu.fail("upload", "respond", body={"asset": {"key": "images/legacy.png"}})
    assert await upload(client) == "images/legacy.png"


async def test_upscale_sends_the_documented_request(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """The upscale body, API-KEY header and JSON content type follow the documented contract."""
    path = await upload(client)
    await client.upscale(path, "jpeg")
    sent = emu.last_requests["upscale"]
    assert sent.body == {
        "type": "IMAGE_UPSCALER",
        "model": "stable-image",
        "promptObject": {"imageUrl": path, "output_format": "jpeg"},
    }
    assert sent.headers["API-KEY"] == KEY
    assert sent.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("fmt", "pillow_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
async def test_round_trip_gives_a_4x_image_in_the_requested_format(
    client: OneMinClient, fmt: str, pillow_format: str
) -> None:
    """Upload, upscale and download yield an image in the chosen format at exactly 4x."""
    data = await client.download(await upscaled_url(client, fmt), max_bytes=10_000_000)
    with Image.open(io.BytesIO(data)) as result:
        assert result.format == pillow_format
        assert result.size == (INPUT_SIZE[0] * 4, INPUT_SIZE[1] * 4)


async def test_upscale_result_carries_record_and_credit_figures(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """UpscaleResult holds the record uuid, status, result paths and the team's credits."""
    emu.credit_limit, emu.used_credit = 500, 120
    result = await client.upscale(await upload(client))
    assert result.record_uuid
    assert result.status == "SUCCESS"
    assert result.result_paths == tuple(emu.results)
    assert (result.credit_limit, result.used_credit) == (500, 120)


async def test_download_sends_no_api_key(client: OneMinClient, emu: OneMinEmulator) -> None:
    """The presigned result URL is fetched without the API key."""
    await client.download(await upscaled_url(client), max_bytes=10_000_000)
    assert "API-KEY" not in emu.last_requests["download"].headers


async def test_unknown_output_format_is_refused_before_any_request(
    client: OneMinClient, traced: RequestLog
) -> None:
    """An output format other than png/jpeg/webp raises ValueError without calling the API."""
    with pytest.raises(ValueError):
        await client.upscale("images/x.png", "gif")
    assert traced.urls == []


# -- errors -----------------------------------------------------------------------------


async def test_wrong_key_raises_unauthorized(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator
) -> None:
    """A key the service refuses raises Unauthorized with status 401, not retried."""
    with pytest.raises(Unauthorized) as info:
        await upload(make_client(api_key="not-the-key"))
    assert (info.value.kind, info.value.status) == ("unauthorized", 401)
    assert emu.calls["upload"] == 1


async def test_out_of_credits_carries_the_message_numbers(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """406 INSUFFICIENT_CREDITS raises OutOfCredits with the required and available credits."""
    emu.credit_limit, emu.used_credit = 100, 97
    with pytest.raises(OutOfCredits) as info:
        await client.upscale(await upload(client))
    err = info.value
    assert (err.kind, err.status, err.error_code) == ("out_of_credits", 406, "INSUFFICIENT_CREDITS")
    assert (err.required, err.available) == (10, 3)
    assert emu.upscales == 0


async def test_rate_limit_carries_retry_after_from_the_header(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator
) -> None:
    """429 with Retry-After in seconds raises RateLimited with that many seconds."""
    emu.fail("upload", "rate_limited", retry_after=7)
    with pytest.raises(RateLimited) as info:
        await upload(make_client(max_attempts=1))
    assert (info.value.kind, info.value.status, info.value.retry_after) == ("rate_limited", 429, 7)


async def test_rate_limit_reads_an_http_date_retry_after(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator
) -> None:
    """A Retry-After given as an HTTP date becomes the seconds until that date."""
    emu.fail(
        "upload", "rate_limited", retry_after=email.utils.formatdate(time.time() + 60, usegmt=True)
    )
    with pytest.raises(RateLimited) as info:
        await upload(make_client(max_attempts=1))
    assert info.value.retry_after is not None
    assert 55 <= info.value.retry_after <= 61


async def test_rate_limit_reads_retry_after_from_the_body(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator
) -> None:
    """Without the header, a retryAfter field in the JSON body is used."""
    emu.fail("upload", "rate_limited", retry_after_body=12.5)
    with pytest.raises(RateLimited) as info:
        await upload(make_client(max_attempts=1))
    assert info.value.retry_after == 12.5


async def test_rate_limit_without_a_hint_has_no_retry_after(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator
) -> None:
    """429 with neither header nor body hint leaves retry_after as None."""
    emu.fail("upload", "rate_limited")
    with pytest.raises(RateLimited) as info:
        await upload(make_client(max_attempts=1))
    assert info.value.retry_after is None


async def test_provider_rejection_raises_input_rejected_with_details(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """400 EXTERNAL_API_RESPONSE_WITH_ERROR raises InputRejected keeping the provider details."""
    emu.fail("upscale", "rejected", details='{"errors":["image: too small"]}')
    with pytest.raises(InputRejected) as info:
        await client.upscale(await upload(client))
    err = info.value
    assert (err.kind, err.status) == ("input_rejected", 400)
    assert err.error_code == "EXTERNAL_API_RESPONSE_WITH_ERROR"
    assert err.details == '{"errors":["image: too small"]}'


async def test_image_outside_the_model_limits_is_rejected(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """An input the upscaler cannot take (here 20 px wide) raises InputRejected."""
    path = await client.upload(image_bytes(size=(20, 200)), "thin.png", "image/png")
    with pytest.raises(InputRejected):
        await client.upscale(path)
    assert emu.upscales == 0


async def test_server_error_raises_service_unavailable(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A 5xx JSON error raises ServiceUnavailable with the status and error code."""
    emu.fail("upscale", "server_error", status=500)
    with pytest.raises(ServiceUnavailable) as info:
        await client.upscale(await upload(client))
    err = info.value
    assert (err.kind, err.status, err.error_code) == ("unavailable", 500, "INTERNAL_SERVER_ERROR")


@pytest.mark.parametrize("status", [200, 522])
async def test_html_page_raises_service_unavailable(
    client: OneMinClient, emu: OneMinEmulator, status: int
) -> None:
    """A Cloudflare-style HTML page, even with 200, raises ServiceUnavailable without the HTML."""
    emu.fail("upscale", "html_error", status=status)
    with pytest.raises(ServiceUnavailable) as info:
        await client.upscale(await upload(client))
    assert info.value.status == status
    assert "<" not in str(info.value)


async def test_dropped_connection_raises_service_unavailable(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A connection closed mid-request raises ServiceUnavailable from the aiohttp error."""
    emu.fail("upscale", "drop")
    with pytest.raises(ServiceUnavailable) as info:
        await client.upscale(await upload(client))
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert info.value.not_started is False


async def test_connection_refused_is_marked_not_started(
    session: aiohttp.ClientSession, unused_port: int
) -> None:
    """A refused connection raises ServiceUnavailable with not_started set."""
    client = OneMinClient(session, KEY, base_url=f"http://127.0.0.1:{unused_port}", max_attempts=1)
    with pytest.raises(ServiceUnavailable) as info:
        await client.upscale("images/x.png")
    assert info.value.not_started is True


@pytest.mark.parametrize("route", ["upload", "upscale", "download"])
async def test_hanging_response_raises_timed_out(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator, route: str
) -> None:
    """A response that never ends raises TimedOut once the call's timeout passes."""
    client = make_client(
        request_timeout=SHORT_TIMEOUT, upscale_timeout=SHORT_TIMEOUT, download_timeout=SHORT_TIMEOUT
    )
    path = await upload(client)
    url = (await client.upscale(path)).temporary_url
    emu.fail(route, "hang")
    with pytest.raises(TimedOut) as info:
        if route == "upload":
            await upload(client)
        elif route == "upscale":
            await client.upscale(path)
        else:
            await client.download(url, max_bytes=10_000_000)
    assert info.value.kind == "timeout"


async def test_malformed_json_raises_bad_response(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A 200 whose body is not valid JSON raises BadResponse."""
    emu.fail("upscale", "malformed_json")
    with pytest.raises(BadResponse) as info:
        await client.upscale(await upload(client))
    assert info.value.kind == "bad_response"


@pytest.mark.parametrize("fault", ["failure_status", "empty_url", "empty_result"])
async def test_unusable_upscale_record_raises_bad_response(
    client: OneMinClient, emu: OneMinEmulator, fault: str
) -> None:
    """A FAILURE status, an empty temporaryUrl or an empty resultObject raise BadResponse."""
    emu.fail("upscale", fault)
    with pytest.raises(BadResponse):
        await client.upscale(await upload(client))


async def test_upscale_record_without_a_uuid_raises_bad_response(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A response missing aiRecord fields raises BadResponse."""
    emu.fail("upscale", "respond", body={"aiRecord": {"status": "SUCCESS"}})
    with pytest.raises(BadResponse):
        await client.upscale(await upload(client))


async def test_upload_without_a_path_raises_bad_response(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """An upload answer with neither fileContent.path nor asset.key raises BadResponse."""
    emu.fail("upload", "respond", body={"fileContent": {"path": ""}})
    with pytest.raises(BadResponse):
        await upload(client)


@pytest.mark.parametrize("fault", ["expired", "forbidden"])
async def test_refused_download_raises_bad_response_without_retrying(
    client: OneMinClient, emu: OneMinEmulator, fault: str
) -> None:
    """S3's 403 XML (expired or denied link) raises BadResponse with its code, tried once."""
    url = await upscaled_url(client)
    emu.fail("download", fault)
    with pytest.raises(BadResponse) as info:
        await client.download(url, max_bytes=10_000_000)
    assert (info.value.status, info.value.error_code) == (403, "AccessDenied")
    assert emu.calls["download"] == 1


async def test_truncated_download_every_time_raises_service_unavailable(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A body shorter than its Content-Length on every attempt raises ServiceUnavailable."""
    url = await upscaled_url(client)
    emu.fail("download", "truncated", times=3)
    with pytest.raises(ServiceUnavailable):
        await client.download(url, max_bytes=10_000_000)
    assert emu.calls["download"] == 3


# -- the allow-list ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://169.254.169.254/latest/meta-data/",
        "https://evil.example.com/asset.1min.ai/images/x.png",
        "https://s3.us-east-1.amazonaws.com.evil.example/x.png",
        "http://s3.us-east-1.amazonaws.com/asset.1min.ai/images/x.png",
        "https://s3.us-east-1.amazonaws.com:8443/asset.1min.ai/images/x.png",
        "https://user:pass@s3.us-east-1.amazonaws.com/asset.1min.ai/images/x.png",
        "http://127.0.0.1:8080/internal",
        "http://localhost/admin",
        "file:///etc/passwd",
        "ftp://s3.us-east-1.amazonaws.com/x.png",
        "images/x.png",
    ],
)
async def test_download_refuses_urls_off_the_allow_list(
    session: aiohttp.ClientSession, traced: RequestLog, url: str
) -> None:
    """With the real API base, anything but https on a result host is refused unfetched."""
    client = OneMinClient(session, KEY)
    with pytest.raises(DownloadRefused) as info:
        await client.download(url, max_bytes=1000)
    assert info.value.kind == "download_refused"
    assert traced.urls == []


async def test_loopback_result_is_refused_when_the_api_is_not_loopback(
    client: OneMinClient, session: aiohttp.ClientSession, emu: OneMinEmulator
) -> None:
    """A real, reachable loopback URL is not fetched unless the API base is loopback."""
    url = await upscaled_url(client)
    remote = OneMinClient(session, KEY, base_url="https://api.1min.ai")
    with pytest.raises(DownloadRefused):
        await remote.download(url, max_bytes=10_000_000)
    assert emu.calls["download"] == 0


async def test_hostile_temporary_url_is_never_fetched(
    client: OneMinClient, emu: OneMinEmulator, traced: RequestLog
) -> None:
    """A temporaryUrl pointing at the metadata service is refused, with no request made."""
    hostile = "http://169.254.169.254/latest/meta-data/"
    emu.fail("upscale", "temporary_url", url=hostile)
    result = await client.upscale(await upload(client))
    with pytest.raises(DownloadRefused):
        await client.download(result.temporary_url, max_bytes=10_000_000)
    assert not any("169.254" in url for url in traced.urls)


async def test_redirect_to_another_host_is_refused(
    client: OneMinClient, emu: OneMinEmulator, traced: RequestLog
) -> None:
    """A result URL redirecting to another host is refused at that hop, not followed."""
    url = await upscaled_url(client)
    emu.fail("download", "redirect", location="http://169.254.169.254/latest/meta-data/")
    with pytest.raises(DownloadRefused):
        await client.download(url, max_bytes=10_000_000)
    assert not any("169.254" in u for u in traced.urls)


async def test_allow_listed_https_host_is_fetched(
    session: aiohttp.ClientSession, traced: RequestLog
) -> None:
    """An https URL on a configured result host passes the check and is requested."""
    client = OneMinClient(session, KEY, result_hosts=["127.0.0.1"], max_attempts=1)
    with pytest.raises(ServiceUnavailable):  # nothing serves https on 127.0.0.1:443
        await client.download("https://127.0.0.1/asset.1min.ai/x.png", max_bytes=1000)
    assert traced.urls == ["https://127.0.0.1/asset.1min.ai/x.png"]


# -- byte caps --------------------------------------------------------------------------


async def test_download_over_the_cap_raises_response_too_large(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A result larger than max_bytes raises ResponseTooLarge."""
    url = await upscaled_url(client)
    (size,) = (len(data) for data in emu.results.values())
    with pytest.raises(ResponseTooLarge) as info:
        await client.download(url, max_bytes=size - 1)
    assert info.value.kind == "too_large"


async def test_download_cap_is_enforced_while_streaming(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A chunked body with no Content-Length is cut off once it passes the cap."""
    url = await upscaled_url(client)
    emu.fail("download", "oversized", size=5_000_000)
    with pytest.raises(ResponseTooLarge):
        await client.download(url, max_bytes=100_000)


async def test_json_response_over_the_cap_raises_response_too_large(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """An API answer over 1 MiB raises ResponseTooLarge instead of being read whole."""
    emu.fail("upscale", "oversized", size=2 * onemin_http.MAX_JSON_BYTES)
    with pytest.raises(ResponseTooLarge):
        await client.upscale(await upload(client))


# -- downloading to a file ----------------------------------------------------------------


async def test_download_to_writes_the_whole_result_to_the_file(
    client: OneMinClient, emu: OneMinEmulator, tmp_path: Path
) -> None:
    """download_to streams the result into the file and returns its length."""
    url = await upscaled_url(client)
    target = tmp_path / "result.bin"
    target.write_bytes(b"left from an earlier attempt, longer than nothing")
    (data,) = emu.results.values()
    assert await client.download_to(url, target, max_bytes=10_000_000) == len(data)
    assert target.read_bytes() == data
    assert "API-KEY" not in emu.last_requests["download"].headers


async def test_download_to_writes_in_batches_while_it_streams(
    client: OneMinClient,
    emu: OneMinEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body reaches the file in several writes as it arrives, never joined whole."""
    url = await upscaled_url(client)
    emu.fail("download", "respond", body=bytes(range(256)) * 4096)  # 1 MiB
    monkeypatch.setattr(onemin_http, "SPOOL_WRITE_BYTES", 64 * 1024)
    monkeypatch.setattr(onemin_http, "DOWNLOAD_CHUNK_BYTES", 16 * 1024)
    writes: list[int] = []
    real_to_thread = asyncio.to_thread

    async def counting(func: Callable[..., Any], /, *args: Any) -> Any:
        if getattr(func, "__name__", "") == "writelines":
            writes.append(sum(len(chunk) for chunk in args[0]))
        return await real_to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    target = tmp_path / "result.bin"
    assert await client.download_to(url, target, max_bytes=2 * 1024 * 1024) == 1024 * 1024
    assert target.read_bytes() == bytes(range(256)) * 4096
    assert len(writes) >= 8 and max(writes) < 128 * 1024


async def test_download_to_cap_is_enforced_while_streaming_and_leaves_no_file(
    client: OneMinClient, emu: OneMinEmulator, tmp_path: Path
) -> None:
    """A chunked body with no Content-Length is cut off at the cap; the file is removed."""
    url = await upscaled_url(client)
    emu.fail("download", "oversized", size=5_000_000)
    target = tmp_path / "result.bin"
    with pytest.raises(ResponseTooLarge):
        await client.download_to(url, target, max_bytes=100_000)
    assert not target.exists()


async def test_download_to_over_the_declared_length_cap_writes_nothing(
    client: OneMinClient, emu: OneMinEmulator, tmp_path: Path
) -> None:
    """A Content-Length over the cap raises ResponseTooLarge before the file is made."""
    url = await upscaled_url(client)
    (size,) = (len(data) for data in emu.results.values())
    target = tmp_path / "result.bin"
    with pytest.raises(ResponseTooLarge):
        await client.download_to(url, target, max_bytes=size - 1)
    assert not target.exists()


async def test_download_to_retries_a_truncated_body_from_the_start(
    client: OneMinClient, emu: OneMinEmulator, tmp_path: Path
) -> None:
    """A download cut short is retried; the file then holds the whole image once."""
    url = await upscaled_url(client)
    emu.fail("download", "truncated")
    target = tmp_path / "result.bin"
    await client.download_to(url, target, max_bytes=10_000_000)
    assert target.read_bytes() == next(iter(emu.results.values()))
    assert emu.calls["download"] == 2


async def test_download_to_refuses_urls_off_the_allow_list_unfetched(
    session: aiohttp.ClientSession, traced: RequestLog, tmp_path: Path
) -> None:
    """download_to applies the allow-list: nothing is requested and no file is made."""
    client = OneMinClient(session, KEY)
    target = tmp_path / "result.bin"
    with pytest.raises(DownloadRefused):
        await client.download_to("http://169.254.169.254/latest/", target, max_bytes=1000)
    assert traced.urls == [] and not target.exists()


async def test_download_to_redirect_to_another_host_is_refused(
    client: OneMinClient, emu: OneMinEmulator, traced: RequestLog, tmp_path: Path
) -> None:
    """A redirect hop off the allow-list is refused, not followed, and leaves no file."""
    url = await upscaled_url(client)
    emu.fail("download", "redirect", location="http://169.254.169.254/latest/meta-data/")
    target = tmp_path / "result.bin"
    with pytest.raises(DownloadRefused):
        await client.download_to(url, target, max_bytes=10_000_000)
    assert not any("169.254" in u for u in traced.urls) and not target.exists()


async def test_download_to_times_out_and_removes_the_partial_file(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator, tmp_path: Path
) -> None:
    """A body that never ends raises TimedOut after the timeout; the partial file is gone."""
    client = make_client(download_timeout=SHORT_TIMEOUT)
    url = await upscaled_url(client)
    emu.fail("download", "hang")
    target = tmp_path / "result.bin"
    with pytest.raises(TimedOut):
        await client.download_to(url, target, max_bytes=10_000_000)
    assert not target.exists()


async def test_cancelled_download_to_removes_the_partial_file(
    client: OneMinClient, emu: OneMinEmulator, tmp_path: Path
) -> None:
    """Cancelling a download in the middle of the body leaves no file behind."""
    url = await upscaled_url(client)
    emu.fail("download", "hang")
    target = tmp_path / "result.bin"
    task = asyncio.create_task(client.download_to(url, target, max_bytes=10_000_000))
    async with asyncio.timeout(5):
        while not target.exists():  # noqa: ASYNC110 - the file appears once the body starts
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not target.exists()


# -- retries ----------------------------------------------------------------------------


async def test_upload_is_retried_after_503(client: OneMinClient, emu: OneMinEmulator) -> None:
    """An upload answered 503 is retried and then succeeds."""
    emu.fail("upload", "server_error", status=503)
    path = await upload(client)
    assert emu.calls["upload"] == 2
    assert [asset.path for asset in emu.assets] == [path]


async def test_upload_is_retried_after_a_dropped_connection(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """An upload whose connection drops is retried and then succeeds."""
    emu.fail("upload", "drop")
    await upload(client)
    assert emu.calls["upload"] == 2


async def test_upload_gives_up_after_max_attempts(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """Persistent 502s stop after max_attempts (3) with ServiceUnavailable."""
    emu.fail("upload", "server_error", status=502, times=5)
    with pytest.raises(ServiceUnavailable):
        await upload(client)
    assert emu.calls["upload"] == 3


async def test_upscale_is_not_retried_after_500(client: OneMinClient, emu: OneMinEmulator) -> None:
    """A 500 on the paid upscale call may have spent credits, so it is not retried."""
    emu.fail("upscale", "server_error", status=500)
    with pytest.raises(ServiceUnavailable) as info:
        await client.upscale(await upload(client))
    assert info.value.not_started is False
    assert emu.calls["upscale"] == 1


async def test_upscale_is_not_retried_after_a_dropped_connection(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A connection dropped after the upscale request was sent is not retried."""
    emu.fail("upscale", "drop")
    with pytest.raises(ServiceUnavailable):
        await client.upscale(await upload(client))
    assert emu.calls["upscale"] == 1


async def test_upscale_is_not_retried_after_a_timeout(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator
) -> None:
    """An upscale that timed out may still be running, so it is not retried."""
    client = make_client(upscale_timeout=SHORT_TIMEOUT)
    path = await upload(client)
    emu.fail("upscale", "hang")
    with pytest.raises(TimedOut):
        await client.upscale(path)
    assert emu.calls["upscale"] == 1


async def test_upscale_is_retried_after_429(client: OneMinClient, emu: OneMinEmulator) -> None:
    """A 429 means the upscale never started: it is retried and then succeeds once."""
    emu.fail("upscale", "rate_limited")
    await client.upscale(await upload(client))
    assert (emu.calls["upscale"], emu.upscales) == (2, 1)


async def test_upscale_is_retried_after_503(client: OneMinClient, emu: OneMinEmulator) -> None:
    """A 503 means the upscale never started: it is retried and then succeeds once."""
    emu.fail("upscale", "server_error", status=503)
    await client.upscale(await upload(client))
    assert (emu.calls["upscale"], emu.upscales) == (2, 1)


async def test_upscale_is_retried_when_the_connection_is_refused(
    session: aiohttp.ClientSession,
    traced: RequestLog,
    unused_port: int,
    nap: Callable[[float], Awaitable[None]],
) -> None:
    """A refused connection is retried up to max_attempts, even for the paid call."""
    url = f"http://127.0.0.1:{unused_port}"
    client = OneMinClient(session, KEY, base_url=url, max_attempts=3, backoff_base=0.01, sleep=nap)
    with pytest.raises(ServiceUnavailable):
        await client.upscale("images/x.png")
    assert len(traced.urls) == 3


async def test_download_is_retried_after_a_truncated_body(
    client: OneMinClient, emu: OneMinEmulator
) -> None:
    """A download cut short is retried and then returns the whole image."""
    url = await upscaled_url(client)
    emu.fail("download", "truncated")
    data = await client.download(url, max_bytes=10_000_000)
    assert data == next(iter(emu.results.values()))
    assert emu.calls["download"] == 2


async def test_retry_after_is_waited_for(
    client: OneMinClient, emu: OneMinEmulator, sleeps: list[float]
) -> None:
    """The retry waits exactly the Retry-After the service asked for."""
    emu.fail("upload", "rate_limited", retry_after=0.25)
    await upload(client)
    assert sleeps == [0.25]


async def test_retry_after_beyond_the_cap_is_raised_not_waited(
    client: OneMinClient, emu: OneMinEmulator, sleeps: list[float]
) -> None:
    """A Retry-After longer than backoff_cap is handed to the caller instead of waited."""
    emu.fail("upload", "rate_limited", retry_after=30)
    with pytest.raises(RateLimited) as info:
        await upload(client)
    assert info.value.retry_after == 30
    assert (sleeps, emu.calls["upload"]) == ([], 1)


async def test_backoff_grows_with_jitter_under_the_cap(
    make_client: Callable[..., OneMinClient], emu: OneMinEmulator, sleeps: list[float]
) -> None:
    """Waits double from backoff_base, are jittered down by at most half, and stop at the cap."""
    client = make_client(max_attempts=5, backoff_base=0.1, backoff_cap=0.3)
    emu.fail("upload", "server_error", status=503, times=4)
    await upload(client)
    ceilings = [0.1, 0.2, 0.3, 0.3]
    assert len(sleeps) == len(ceilings)
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))


# -- secrets ----------------------------------------------------------------------------


def chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


async def test_api_key_never_appears_in_errors_or_logs(
    make_client: Callable[..., OneMinClient],
    emu: OneMinEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Across every error class, the key is absent from str, repr, args and the log."""
    caplog.set_level(logging.DEBUG)
    client = make_client(request_timeout=SHORT_TIMEOUT, max_attempts=2)
    echo = {"errorCode": "INVALID", "message": f"API key {KEY} is not valid"}
    path = await upload(client)
    url = await upscaled_url(client)
    emu.credit_limit = emu.used_credit  # every plain upscale is now out of credits
    scenarios: list[tuple[str, str, dict[str, Any]]] = [
        ("upload", "respond", {"status": 401, "body": echo}),
        ("upload", "respond", {"status": 400, "body": {**echo, "details": KEY}}),
        ("upload", "respond", {"status": 429, "body": echo, "headers": {"Retry-After": "60"}}),
        ("upload", "respond", {"status": 503, "body": echo, "times": 2}),
        ("upload", "garbage", {"times": 2}),
        ("upload", "malformed_json", {}),
        ("upload", "hang", {}),
        ("upload", "oversized", {}),
        ("upscale", "rejected", {"details": KEY}),
        ("upscale", "out_of_credits", {}),
        ("download", "expired", {}),
    ]
    errors: list[OneMinError] = []
    for route, fault, options in scenarios:
        emu.fail(route, fault, **options)
        with pytest.raises(OneMinError) as info:
            if route == "upload":
                await upload(client)
            elif route == "upscale":
                await client.upscale(path)
            else:
                await client.download(url, max_bytes=10_000_000)
        errors.append(info.value)
    with pytest.raises(OneMinError) as refused:
        await client.download("http://169.254.169.254/", max_bytes=1)
    errors.append(refused.value)
    assert {type(e) for e in errors} == {
        Unauthorized, InputRejected, RateLimited, ServiceUnavailable, BadResponse,
        TimedOut, ResponseTooLarge, OutOfCredits, DownloadRefused,
    }  # fmt: skip
    for err in errors:
        for link in chain(err):
            assert KEY not in str(link)
            assert KEY not in repr(link)
            assert KEY not in repr(link.args)
            assert KEY not in repr(getattr(link, "__dict__", {}))
    assert KEY not in caplog.text


async def test_client_repr_hides_the_key(session: aiohttp.ClientSession) -> None:
    """repr(client) shows the base URL but not the API key."""
    text = repr(OneMinClient(session, KEY))
    assert "api.1min.ai" in text
    assert KEY not in text
