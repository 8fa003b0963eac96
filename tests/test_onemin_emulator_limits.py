"""The 1min.ai emulator's fleet-level switches, driven by a plain aiohttp client.

Organic rate limit (sliding window per key, with and without Retry-After), features in
flight, the refused key and the empty account, and the async variant with result polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.emulators.onemin import OneMinEmulator
from tests.harness import eventually
from tests.support.images import png

KEY = "limits-test-key"


@pytest.fixture
async def emu() -> AsyncIterator[OneMinEmulator]:
    async with OneMinEmulator(KEY, upscale_cost=10) as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def upload(
    http: aiohttp.ClientSession, emu: OneMinEmulator, key: str = KEY
) -> tuple[int, dict[str, str], Any]:
    form = aiohttp.FormData()
    form.add_field("asset", png((40, 40)), filename="a.png", content_type="image/png")
    async with http.post(f"{emu.base_url}/api/assets", data=form, headers={"API-KEY": key}) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def feature(
    http: aiohttp.ClientSession, emu: OneMinEmulator, path: str, **extra: Any
) -> tuple[int, Any]:
    body = {
        "type": "IMAGE_UPSCALER",
        "model": "stable-image",
        "promptObject": {"imageUrl": path, "output_format": "png"},
        **extra,
    }
    async with http.post(
        f"{emu.base_url}/api/features", json=body, headers={"API-KEY": KEY}
    ) as response:
        return response.status, await response.json(content_type=None)


async def asset_path(http: aiohttp.ClientSession, emu: OneMinEmulator) -> str:
    status, _, body = await upload(http, emu)
    assert status == 200
    path: str = body["fileContent"]["path"]
    return path


async def test_the_call_after_n_in_the_window_gets_429_without_retry_after(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """With retry_after=False the N+1th call in the window is a 429 with no Retry-After."""
    emu.rate_limit(requests=3, window=60.0, retry_after=False)
    for _ in range(3):
        assert (await upload(http, emu))[0] == 200
    status, headers, body = await upload(http, emu)
    assert status == 429 and "Retry-After" not in headers
    assert body["errorCode"] == "RATE_LIMIT_EXCEEDED"
    assert emu.rate_limited_count == 1 and emu.calls["upload"] == 4
    assert len(emu.assets) == 3 and emu.statuses[("upload", 429)] == 1


async def test_the_call_after_n_in_the_window_gets_429_with_retry_after(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """With retry_after=True the 429 says in whole seconds when the oldest slot frees."""
    emu.rate_limit(requests=2, window=30.0, retry_after=True)
    await upload(http, emu)
    await upload(http, emu)
    status, headers, _ = await upload(http, emu)
    assert status == 429
    assert 29 <= int(headers["Retry-After"]) <= 30


async def test_every_api_route_counts_toward_the_limit(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """Uploads, feature calls and result polls share one window; S3 downloads do not."""
    emu.rate_limit(requests=3, window=60.0)
    path = await asset_path(http, emu)
    status, body = await feature(http, emu, path)
    assert status == 200
    async with http.get(body["aiRecord"]["temporaryUrl"]) as response:
        assert response.status == 200  # a download: no key, not counted
    poll = f"{emu.base_url}/api/results/{body['aiRecord']['uuid']}"
    async with http.get(poll, headers={"API-KEY": KEY}) as response:
        assert response.status == 200
    async with http.get(poll, headers={"API-KEY": KEY}) as response:
        assert response.status == 429
    assert [r.route for r in emu.api_requests] == ["upload", "upscale", "result", "result"]


async def test_the_window_slides(emu: OneMinEmulator, http: aiohttp.ClientSession) -> None:
    """A slot frees exactly one window after the call that took it, not at a fixed tick."""
    emu.rate_limit(requests=2, window=0.6)
    assert (await upload(http, emu))[0] == 200
    await asyncio.sleep(0.35)
    assert (await upload(http, emu))[0] == 200
    assert (await upload(http, emu))[0] == 429
    await asyncio.sleep(0.35)  # the first call left the window; the second is still in it
    assert (await upload(http, emu))[0] == 200
    assert (await upload(http, emu))[0] == 429
    assert emu.max_in_window(admitted_only=True) == 2
    assert emu.max_in_window() == 4  # the refused calls arrived too
    assert emu.rate_limited_count == 2


async def test_each_key_has_its_own_window(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """A second key is not limited by the first key's calls (and is still refused 401)."""
    emu.rate_limit(requests=1, window=60.0)
    assert (await upload(http, emu))[0] == 200
    assert (await upload(http, emu))[0] == 429
    assert (await upload(http, emu, key="another-key"))[0] == 401
    assert emu.max_in_window(key=KEY) == 2 and emu.max_in_window(key="another-key") == 1


async def test_turning_the_limit_off_admits_everything(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """rate_limit(None) removes the limit."""
    emu.rate_limit(requests=1, window=60.0)
    await upload(http, emu)
    emu.rate_limit(None)
    assert [(await upload(http, emu))[0] for _ in range(3)] == [200, 200, 200]


async def test_the_most_features_in_flight_is_recorded(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """Four concurrent feature calls held together: four in flight at most, then 0."""
    path = await asset_path(http, emu)
    hold = emu.hold("upscale")
    calls = asyncio.gather(*(feature(http, emu, path) for _ in range(4)))
    await hold.reached(4)  # processed together, not one by one
    assert emu.features_in_flight == 4
    hold.release()
    assert [status for status, _ in await calls] == [200] * 4
    assert emu.max_features_in_flight == 4 and emu.features_in_flight == 0


def test_feature_latency_is_the_upscale_delay() -> None:
    """feature_latency is another name for upscale_delay (both ways)."""
    emu = OneMinEmulator(KEY)
    emu.feature_latency = 0.3
    assert emu.upscale_delay == 0.3
    emu.upscale_delay = 0.1
    assert emu.feature_latency == 0.1


async def test_a_held_upscale_stays_in_flight_until_released(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """hold("upscale"): the call waits, credits held and nothing upscaled, until the test
    releases it; then it succeeds, and later calls pass straight through."""
    path = await asset_path(http, emu)
    hold = emu.hold("upscale")
    call = asyncio.create_task(feature(http, emu, path))
    await hold.reached()
    assert emu.features_in_flight == 1 and emu.upscales == 0 and not call.done()
    assert emu.credits_left == emu.credit_limit - emu.upscale_cost
    hold.release()
    assert (await call)[0] == 200
    assert (await feature(http, emu, path))[0] == 200
    assert emu.upscales == 2 and hold.arrived == 2 and hold.waiting == 0


async def test_a_held_upload_is_stored_only_once_released(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """hold("upload"): the file arrived but is not stored or answered until released."""
    hold = emu.hold("upload")
    call = asyncio.create_task(upload(http, emu))
    await hold.reached()
    assert emu.assets == [] and not call.done()
    hold.release()
    assert (await call)[0] == 200
    assert len(emu.assets) == 1


async def test_stopping_the_emulator_ends_a_held_call(http: aiohttp.ClientSession) -> None:
    """A call still held when the emulator stops ends instead of hanging the test."""
    emu = OneMinEmulator(KEY)
    await emu.start()
    hold = emu.hold("upload")
    call = asyncio.create_task(upload(http, emu))
    await hold.reached()
    await emu.stop()
    with contextlib.suppress(aiohttp.ClientError):  # closed under it: ended all the same
        await call
    assert call.done()


async def test_an_upscale_cut_short_by_the_stop_makes_no_image(
    http: aiohttp.ClientSession,
) -> None:
    """An upscale still in its delay when the emulator stops ends without upscaling: no
    image work is left running after the emulator is gone."""
    emu = OneMinEmulator(KEY)
    await emu.start()
    path = await asset_path(http, emu)
    emu.upscale_delay = 600
    call = asyncio.create_task(feature(http, emu, path))
    await eventually(lambda: emu.features_in_flight == 1)
    await emu.stop()
    with contextlib.suppress(aiohttp.ClientError):  # closed under it: ended all the same
        await call
    await eventually(lambda: emu.features_in_flight == 0)
    assert emu.upscales == 0 and emu.results == {}


async def test_a_hold_with_times_holds_only_that_many_calls(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """hold(route, times=1): the first call waits for the release; the next goes through."""
    hold = emu.hold("upload", times=1)
    first = asyncio.create_task(upload(http, emu))
    await hold.reached()
    assert (await upload(http, emu))[0] == 200
    assert not first.done() and hold.arrived == 1
    hold.release()
    assert (await first)[0] == 200


def test_holding_an_unknown_route_is_refused() -> None:
    """hold() names one of the emulator's routes."""
    with pytest.raises(ValueError, match="unknown route"):
        OneMinEmulator(KEY).hold("features")


async def test_sequential_features_never_overlap(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """Calls made one after the other leave the in-flight maximum at 1."""
    path = await asset_path(http, emu)
    for _ in range(3):
        assert (await feature(http, emu, path))[0] == 200
    assert emu.max_features_in_flight == 1


async def test_a_refused_key_gets_401_until_switched_back(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """refuse_key(True) answers 401 to every call; refuse_key(False) restores service."""
    path = await asset_path(http, emu)
    emu.refuse_key(True)
    assert (await upload(http, emu))[0] == 401
    assert (await feature(http, emu, path))[0] == 401
    emu.refuse_key(False)
    assert (await feature(http, emu, path))[0] == 200
    assert emu.calls["upload"] == 2 and emu.calls["upscale"] == 2
    assert emu.statuses[("upload", 401)] == 1 and emu.statuses[("upscale", 401)] == 1


async def test_an_empty_account_gets_406_until_credits_return(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """set_credits(0) makes feature calls 406 INSUFFICIENT_CREDITS; uploads still work."""
    path = await asset_path(http, emu)
    emu.set_credits(0)
    status, body = await feature(http, emu, path)
    assert status == 406 and body["errorCode"] == "INSUFFICIENT_CREDITS"
    assert (await upload(http, emu))[0] == 200
    emu.set_credits(25)
    assert emu.credits_left == 25
    assert (await feature(http, emu, path))[0] == 200
    assert emu.credits_left == 15 and emu.upscales == 1


async def test_an_async_feature_call_is_polled_to_success(
    emu: OneMinEmulator, http: aiohttp.ClientSession
) -> None:
    """ "async": true answers PROCESSING at once; polling the uuid later gives SUCCESS."""
    emu.feature_latency = 0.2
    path = await asset_path(http, emu)
    status, body = await feature(http, emu, path, **{"async": True})
    assert status == 200 and body["aiRecord"]["status"] == "PROCESSING"
    assert emu.features_in_flight == 1
    poll = f"{emu.base_url}/api/results/{body['aiRecord']['uuid']}"
    record: dict[str, Any] = {}
    for _ in range(50):
        async with http.get(poll, headers={"API-KEY": KEY}) as response:
            record = (await response.json())["aiRecord"]
        if record["status"] != "PROCESSING":
            break
        await asyncio.sleep(0.05)
    assert record["status"] == "SUCCESS" and record["temporaryUrl"]
    assert emu.features_in_flight == 0
    async with http.get(f"{emu.base_url}/api/results/unknown", headers={"API-KEY": KEY}) as r:
        assert (await r.json()) == {"aiRecord": None}
