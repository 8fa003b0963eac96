"""Shared pieces of the benchmarks: statistics, tables, emulators in their own process."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import random
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "within_3s_share": sum(x < 3000 for x in ms) / len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    for r in rows:
        lines.append(
            "  ".join(cell(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True))
        )
    return "\n".join(lines)


def emit(name: str, result: Any, json_path: Path | None, text: str | None = None) -> None:
    """Print ``result`` (as a one-row table unless ``text`` is given); write JSON if asked."""
    print(text if text is not None else table([result], list(result)))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({name: result}, indent=2))


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 120, 200)).save(out, "PNG")
    return out.getvalue()


def noise_png(size: tuple[int, int], seed: int = 1) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _serve_onemin(api_key: str, upscale_delay: float, conn: Any) -> None:
    from tests.emulators.onemin import OneMinEmulator

    async def serve() -> None:
        async with OneMinEmulator(api_key=api_key) as emu:
            emu.upscale_delay = upscale_delay
            conn.send(emu.base_url)
            await asyncio.to_thread(conn.recv)  # any message: stop

    asyncio.run(serve())


@contextmanager
def onemin_in_subprocess(api_key: str, upscale_delay: float = 0.0) -> Iterator[str]:
    """Serve the 1min.ai emulator from another process (its 4x encodes then do not share
    the measured process's GIL). Yields its base URL."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_onemin, args=(api_key, upscale_delay, child))
    process.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
