"""The image worker: results are checked, cropped and fitted from their files, large ones
in the worker process, small ones in a thread; a dead or abandoned worker is replaced."""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from PIL import Image

from bot.images import compare, imagework, workers
from bot.images.compare import CompareCrops
from bot.images.download import DownloadFailed
from bot.images.imagework import ResultCheck, inspect_result
from bot.images.workers import ImageWorkers, ResultUnusable, WorkerDied
from tests import imagecorpus as corpus
from tests.harness import eventually

INPUT_SIZE = (64, 48)


@pytest.fixture
async def pool() -> AsyncIterator[ImageWorkers]:
    image_workers = ImageWorkers()
    yield image_workers
    await image_workers.close()


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
    real = inspect_result

    def recording(
        result: Path, input_image: bytes | None, input_size: tuple[int, int]
    ) -> ResultCheck:
        calls.append(result)
        return real(result, input_image, input_size)

    monkeypatch.setattr(workers, "inspect_result", recording)
    return calls


def exited(pid: int) -> bool:
    """True once ``pid`` has exited: gone, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def started(pool: ImageWorkers) -> int:
    """The worker's pid, once a call has started it."""
    async with asyncio.timeout(10):
        while pool.worker_pid is None:  # noqa: ASYNC110 - set by the call in another task
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    return pool.worker_pid


def test_inspect_result_reads_the_result_from_its_file(tmp_path: Path) -> None:
    """A 4x result file is checked (format, size) and gets the input's Compare crop."""
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
    assert calls == [path] and pool.worker_pid is None


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
    assert calls == [] and pool.worker_pid is not None
    assert list(pool.spool().iterdir()) == []


def fetch_copy(source: Path, seen: list[Path]) -> Callable[[Path], Awaitable[int]]:
    """A ``fetch`` for render_compare that copies ``source`` and records the spool path."""
    data = source.read_bytes()

    async def fetch(path: Path) -> int:
        seen.append(path)
        return await asyncio.to_thread(path.write_bytes, data)

    return fetch


def compare_crops() -> CompareCrops:
    """What a job with the test input and a 4x result keeps for Compare."""
    return compare.input_crop(input_png(), (256, 192))


async def test_a_small_posted_result_is_compared_in_a_thread_without_the_worker(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A posted result of at most IN_PROCESS_PIXELS is cut and rendered in this process
    into a PNG comparison; the downloaded file is removed afterwards."""
    seen: list[Path] = []
    posted = picture_file(tmp_path, (256, 192))
    image = await pool.render_compare(compare_crops(), ("B", "A"), fetch_copy(posted, seen))
    assert Image.open(io.BytesIO(image)).width == 2 * 256 + compare.GUTTER
    assert pool.worker_pid is None
    assert len(seen) == 1 and not seen[0].exists()


@pytest.mark.usefixtures("in_worker")
async def test_a_large_posted_result_is_compared_in_the_worker(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A posted result over IN_PROCESS_PIXELS is cut and rendered in the worker process,
    from the downloaded file, which is removed afterwards."""
    seen: list[Path] = []
    posted = picture_file(tmp_path, (256, 192))
    image = await pool.render_compare(compare_crops(), ("B", "A"), fetch_copy(posted, seen))
    assert Image.open(io.BytesIO(image)).width == 2 * 256 + compare.GUTTER
    assert pool.worker_pid is not None
    assert len(seen) == 1 and not seen[0].exists()


async def test_a_failed_download_fails_the_comparison_and_leaves_no_file(
    pool: ImageWorkers,
) -> None:
    """What ``fetch`` raises reaches the caller, and a partial download is removed."""
    seen: list[Path] = []

    async def failing(path: Path) -> int:
        seen.append(path)
        await asyncio.to_thread(path.write_bytes, b"\x89PNG partial")
        raise DownloadFailed("HTTP 404")

    with pytest.raises(DownloadFailed):
        await pool.render_compare(compare_crops(), ("B", "A"), failing)
    assert len(seen) == 1 and not seen[0].exists()


async def test_a_posted_file_that_is_not_the_result_is_refused(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A posted image that is not the input at one scale raises CompareError."""
    posted = picture_file(tmp_path, (256, 256))
    with pytest.raises(compare.CompareError):
        await pool.render_compare(compare_crops(), ("B", "A"), fetch_copy(posted, []))


@pytest.mark.usefixtures("in_worker")
async def test_worker_check_rejects_a_result_that_is_not_an_upscale(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """The worker's refusal of a same-size "result" reaches the caller as ResultUnusable."""
    path = picture_file(tmp_path, INPUT_SIZE)
    with pytest.raises(ResultUnusable, match="not an upscale"):
        await pool.check_result(path, input_png(), INPUT_SIZE)
    assert pool.worker_pid is not None


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
    assert pool.worker_pid is not None and list(pool.spool().iterdir()) == []
    assert path.exists()  # the caller's file is the caller's to remove


async def test_fit_of_a_result_within_the_limit_stays_in_process(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A result file already within the limit is returned as its bytes, no worker."""
    path = picture_file(tmp_path, (256, 192))
    fitted = await pool.fit(path, "png", 10 * 1024 * 1024, "cat_4x")
    assert fitted.data == path.read_bytes() and not fitted.reencoded
    assert pool.worker_pid is None


@pytest.mark.usefixtures("in_worker")
async def test_a_worker_that_died_idle_is_replaced_by_the_next_call(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A worker process that died between calls (e.g. killed for memory) is replaced by
    the next call, which succeeds."""
    path = picture_file(tmp_path, (256, 192))
    await pool.check_result(path, input_png(), INPUT_SIZE)
    first = pool.worker_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: exited(first))
    checked = await pool.check_result(path, input_png(), INPUT_SIZE)
    assert checked.size == (256, 192) and pool.worker_pid not in (None, first)


async def test_a_worker_that_dies_during_a_call_fails_it_with_worker_died(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """The call in flight when the worker dies raises WorkerDied; the next call starts
    a new worker."""
    big = tmp_path / "big.png"
    big.write_bytes(corpus.encode(corpus.noise((1500, 1500), seed=9), "PNG"))
    slow = asyncio.create_task(pool.fit(big, "png", 100_000, "slow"))
    first = await started(pool)  # the call is in flight (seconds of work)
    os.kill(first, signal.SIGKILL)
    with pytest.raises(WorkerDied):
        await slow
    fitted = await pool.fit(picture_file(tmp_path, (256, 192)), "png", 5_000, "next")
    assert len(fitted.data) <= 5_000 and pool.worker_pid not in (None, first)


@pytest.mark.usefixtures("in_worker")
async def test_a_call_cancelled_midway_leaves_no_answer_for_the_next(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """A call cancelled while the worker works on it ends that worker, so its late
    answer can never be taken for the next call's; the next call gets its own."""
    big = tmp_path / "big.png"
    big.write_bytes(corpus.encode(corpus.noise((1500, 1500), seed=9), "PNG"))
    slow = asyncio.create_task(pool.fit(big, "png", 100_000, "slow"))
    first = await started(pool)  # the call is in flight (seconds of work)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    small = picture_file(tmp_path, (256, 192))
    checked = await pool.check_result(small, input_png(), INPUT_SIZE)
    assert checked.size == (256, 192) and pool.worker_pid != first


@pytest.mark.usefixtures("in_worker")
async def test_calls_are_answered_in_turn(tmp_path: Path, pool: ImageWorkers) -> None:
    """Calls made at once are served one at a time, each with its own answer."""
    sizes = [(256, 192), (200, 160), (320, 240)]
    paths = [picture_file(tmp_path, size, f"r{i}.png") for i, size in enumerate(sizes)]
    inputs = [(64, 48), (50, 40), (80, 60)]
    checks = await asyncio.gather(
        *(pool.check_result(p, None, i) for p, i in zip(paths, inputs, strict=True))
    )
    assert [c.size for c in checks] == sizes


@pytest.mark.usefixtures("in_worker")
async def test_close_stops_the_worker_and_removes_its_files(
    tmp_path: Path, pool: ImageWorkers
) -> None:
    """close() ends the worker process (its input closes) and removes the temporary files."""
    await pool.check_result(picture_file(tmp_path, (256, 192)), input_png(), INPUT_SIZE)
    pid, spool = pool.worker_pid, pool.spool()
    assert pid is not None
    await pool.close()
    assert pool.worker_pid is None and not spool.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_worker_serves_calls_until_its_input_ends(tmp_path: Path) -> None:
    """The worker's loop answers each call in turn, an exception as the exception, and
    returns when its input ends."""
    good = picture_file(tmp_path, (256, 192))
    same = picture_file(tmp_path, INPUT_SIZE, "same.png")
    requests = io.BytesIO(
        imagework.pack(("inspect", (str(good), None, INPUT_SIZE)))
        + imagework.pack(("inspect", (str(same), None, INPUT_SIZE)))
    )
    answers = io.BytesIO()
    imagework.serve(requests, answers)
    answers.seek(0)
    replies = []
    while header := answers.read(imagework.HEADER_BYTES):
        size = int.from_bytes(header, "big")
        replies.append(pickle.loads(answers.read(size)))
    (ok, checked), (failed, error) = replies
    assert ok and checked.size == (256, 192)
    assert not failed and isinstance(error, ResultUnusable)


def test_inspect_result_leaves_no_file_open(tmp_path: Path) -> None:
    """After a check (and its crops) the result file is closed again."""
    path = picture_file(tmp_path, (256, 192))
    inspect_result(path, input_png(), INPUT_SIZE)
    fds = Path("/proc/self/fd")
    assert all(os.path.realpath(fds / fd) != str(path) for fd in os.listdir(fds))


def test_worker_module_stays_light() -> None:
    """The worker process imports bot.images.imagework: no event loop, multiprocessing, database
    driver or HTTP client come with it."""
    code = (
        "import sys, bot.images.imagework; "
        "print(','.join(m for m in ('asyncio', 'multiprocessing', 'aiohttp', 'asyncpg', "
        "'aiosqlite', 'discord') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
