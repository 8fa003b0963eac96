"""The image worker pool: results are checked, cropped and fitted from their files, large
ones in the worker process, small ones in a thread; a dead worker is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from bot import workers
from bot.compare import CompareCrops
from bot.workers import ImageWorkers, ResultUnusable, inspect_result
from tests import imagecorpus as corpus

INPUT_SIZE = (64, 48)


@pytest.fixture
async def pool() -> AsyncIterator[ImageWorkers]:
    image_workers = ImageWorkers()
    yield image_workers
    image_workers.close()


@pytest.fixture
def in_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even the small test images are checked in the worker process."""
    monkeypatch.setattr(workers, "IN_PROCESS_PIXELS", 1000)


def picture_file(tmp_path: Path, size: tuple[int, int], name: str = "result.png") -> Path:
    path = tmp_path / name
    path.write_bytes(corpus.encode(corpus.picture(size), "PNG"))
    return path


def input_png() -> bytes:
    return corpus.encode(corpus.picture(INPUT_SIZE), "PNG")


def in_thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records the results checked in a thread of this process."""
    calls: list[Path] = []
    real = workers._inspect_and_trim

    def recording(result: Path, *args: object) -> workers.ResultCheck:
        calls.append(result)
        return real(result, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(workers, "_inspect_and_trim", recording)
    return calls


def test_inspect_result_reads_the_result_from_its_file(tmp_path: Path) -> None:
    """A 4x result file is checked (format, size) and gets Compare crops."""
    path = picture_file(tmp_path, (256, 192))
    checked = inspect_result(path, input_png(), INPUT_SIZE)
    assert (checked.format, checked.size) == ("png", (256, 192))
    assert isinstance(checked.crops, CompareCrops) and checked.crops.scale == (4.0, 4.0)


def test_inspect_result_rejects_a_result_not_larger_than_the_input(tmp_path: Path) -> None:
    """A "result" less than twice the input per side is refused as unusable."""
    path = picture_file(tmp_path, (100, 96))
    with pytest.raises(ResultUnusable, match="not an upscale"):
        inspect_result(path, input_png(), INPUT_SIZE)


def test_inspect_result_rejects_a_truncated_result(tmp_path: Path) -> None:
    """A result file cut short is not a decodable image."""
    path = picture_file(tmp_path, (256, 192))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ResultUnusable, match="not a decodable image"):
        inspect_result(path, input_png(), INPUT_SIZE)


def test_inspect_result_without_the_input_has_no_crops(tmp_path: Path) -> None:
    """With the input no longer stored the result still passes, without crops."""
    checked = inspect_result(picture_file(tmp_path, (256, 192)), None, INPUT_SIZE)
    assert checked.crops is None and checked.no_crops


async def test_small_result_is_checked_in_a_thread_without_the_worker(
    tmp_path: Path, pool: ImageWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result of at most IN_PROCESS_PIXELS never starts the worker process."""
    calls = in_thread_calls(monkeypatch)
    path = picture_file(tmp_path, (256, 192))
    checked = await pool.check_result(path, input_png(), INPUT_SIZE)
    assert checked.size == (256, 192) and checked.crops is not None
    assert calls == [path] and pool._pool is None


@pytest.mark.usefixtures("in_worker")
async def test_large_result_is_checked_and_cropped_in_the_worker(
    tmp_path: Path, pool: ImageWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result over IN_PROCESS_PIXELS is checked and cropped in the worker, from its
    file; only the small answer comes back, and the input's temporary file is removed."""
    calls = in_thread_calls(monkeypatch)
    path = picture_file(tmp_path, (256, 192))
    checked = await pool.check_result(path, input_png(), INPUT_SIZE)
    assert (checked.format, checked.size) == ("png", (256, 192))
    assert checked.crops is not None and checked.crops.scale == (4.0, 4.0)
    assert calls == [] and pool._pool is not None
    assert list(pool._spool().iterdir()) == []


@pytest.mark.usefixtures("in_worker")
async def test_worker_check_rejects_a_result_that_is_not_an_upscale(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """The worker's refusal of a same-size "result" reaches the caller as ResultUnusable."""
    path = picture_file(tmp_path, INPUT_SIZE)
    with pytest.raises(ResultUnusable, match="not an upscale"):
        await pool.check_result(path, input_png(), INPUT_SIZE)
    assert pool._pool is not None


async def test_fit_of_a_large_result_runs_in_the_worker_from_the_file(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A result file over the limit is fitted in the worker; the fitted bytes come back
    within the limit and the temporary output file is removed."""
    path = tmp_path / "result.png"
    path.write_bytes(corpus.encode(corpus.noise((300, 300), seed=5), "PNG"))
    limit = path.stat().st_size // 3
    fitted = await pool.fit(path, "png", limit, "cat_4x")
    assert fitted.reencoded and 0 < len(fitted.data) <= limit
    assert fitted.filename == f"cat_4x.{fitted.format}"
    assert pool._pool is not None and list(pool._spool().iterdir()) == []
    assert path.exists()  # the caller's file is the caller's to remove


async def test_fit_of_a_result_within_the_limit_stays_in_process(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A result file already within the limit is returned as its bytes, no worker."""
    path = picture_file(tmp_path, (256, 192))
    fitted = await pool.fit(path, "png", 10 * 1024 * 1024, "cat_4x")
    assert fitted.data == path.read_bytes() and not fitted.reencoded
    assert pool._pool is None


@pytest.mark.usefixtures("in_worker")
async def test_a_dead_worker_is_replaced_for_the_next_call(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """When the worker process dies (e.g. killed for memory), the call in flight fails
    and the next one starts a new worker."""
    path = picture_file(tmp_path, (256, 192))
    await pool.check_result(path, input_png(), INPUT_SIZE)
    assert pool._pool is not None
    for pid in list(pool._pool._processes):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        for _ in range(50):  # until the pool has noticed
            await pool.check_result(path, input_png(), INPUT_SIZE)
    checked = await pool.check_result(path, input_png(), INPUT_SIZE)
    assert checked.size == (256, 192)


def test_worker_module_stays_light() -> None:
    """The worker process imports bot.workers: no database driver or HTTP client with it."""
    code = (
        "import sys, bot.workers; "
        "print(','.join(m for m in ('aiohttp', 'asyncpg', 'aiosqlite', 'discord') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_inspect_result_leaves_no_file_open(tmp_path: Path) -> None:
    """After a check (and its crops) the result file is closed again."""
    path = picture_file(tmp_path, (256, 192))
    inspect_result(path, input_png(), INPUT_SIZE)
    fds = Path("/proc/self/fd")
    assert all(os.path.realpath(fds / fd) != str(path) for fd in os.listdir(fds))
