"""Mutated media: mutants of valid files of every format, sent as data URLs, each a 200 or a 4xx.

Seeds are made here (Pillow, PyAV, soundfile through tests/media.py): PNG, JPEG, GIF, WebP, BMP,
TIFF (refused as a format, so every mutant must be a 4xx), MP4 (h264 + AAC), WebM (VP8 + Opus),
MKV (MPEG-4), WAV, FLAC, MP3, OGG. Each mutant (mutators.media_mutant) goes out as an image_url,
video_url or input_audio part with `concurrency` in flight. A 5xx, an answer slower than
`hang_s`, a decoder pool that does not come back to its size, or a valid file of the format
that is not served after its mutants, is a violation. Reports answer time percentiles per
format and the peak resident memory of the server and its decoder processes.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from collections.abc import Callable

import httpx

from bench.stress.fuzz import Tally
from bench.stress.mutators import media_mutant
from bench.stress.server import MODEL_NAME, Server
from testkit.media import audio_bytes, image_bytes, video_bytes

HANG_S = 60.0
IMAGE_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
VIDEO_FORMATS = {
    "MP4": ("video/mp4", "mp4", "h264", 1.0),
    "WEBM": ("video/webm", "webm", "libvpx", 1.0),
    "MKV": ("video/x-matroska", "matroska", "mpeg4", None),
}
AUDIO_FORMATS = {"WAV": "wav", "FLAC": "flac", "MP3": "mp3", "OGG": "ogg"}
FORMATS = [*IMAGE_FORMATS, *VIDEO_FORMATS, *AUDIO_FORMATS]


def seed_file(fmt: str) -> bytes:
    if fmt in IMAGE_FORMATS:
        return image_bytes(96, 64, fmt=fmt, seed=1)
    if fmt in VIDEO_FORMATS:
        _, container, codec, audio = VIDEO_FORMATS[fmt]
        return video_bytes(
            num_frames=8,
            fps=4,
            width=64,
            height=48,
            container=container,
            codec=codec,
            audio_seconds=audio,
            seed=1,
        )
    return audio_bytes(seconds=1.0, rate=16000, fmt=fmt, seed=1)


def part(fmt: str, data: bytes) -> dict:
    encoded = base64.b64encode(data).decode()
    if fmt in IMAGE_FORMATS:
        return {"type": "image_url", "image_url": {"url": f"data:{IMAGE_FORMATS[fmt]};base64,{encoded}"}}
    if fmt in VIDEO_FORMATS:
        mime, _, _, audio = VIDEO_FORMATS[fmt]
        return {
            "type": "video_url",
            "video_url": {"url": f"data:{mime};base64,{encoded}", "num_frames": 4, "use_audio": bool(audio)},
        }
    return {"type": "input_audio", "input_audio": {"data": encoded, "format": AUDIO_FORMATS[fmt]}}


def body(fmt: str, data: bytes) -> dict:
    return {
        "model": MODEL_NAME,
        "max_tokens": 1,
        "temperature": 0,
        "messages": [{"role": "user", "content": [part(fmt, data), {"type": "text", "text": "What is it?"}]}],
    }


class PeakMemory:
    """Samples the server's resident memory (with its decoder processes) on a thread until stopped."""

    def __init__(self, server: Server, period_s: float = 0.25) -> None:
        self.server, self.period_s = server, period_s
        self.peak_rss = self.peak_rss_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                sample = self.server.sample()
            except OSError:
                continue
            self.peak_rss = max(self.peak_rss, sample.rss_bytes)
            self.peak_rss_total = max(self.peak_rss_total, sample.rss_total_bytes)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss_mib": round(self.peak_rss / 2**20),
            "peak_rss_with_decoders_mib": round(self.peak_rss_total / 2**20),
        }


async def send_all(
    server: Server,
    bodies: list[tuple[str, dict]],
    concurrency: int,
    on_answer: Callable[[str, int, bytes, float], None],
) -> None:
    """POST every (label, body) with `concurrency` in flight; `on_answer(label, status, content, seconds)`."""
    queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=HANG_S) as client:

        async def worker() -> None:
            while not queue.empty():
                label, payload = queue.get_nowait()
                start = time.monotonic()
                try:
                    response = await client.post("/v1/chat/completions", json=payload)
                    status, content = response.status_code, response.content
                except httpx.HTTPError as e:
                    status, content = 0, repr(e).encode()
                on_answer(label, status, content, time.monotonic() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def pool_size(server: Server, expected: int, wait_s: float = 15.0) -> int:
    deadline = time.monotonic() + wait_s
    while (n := len(server.decoder_pids())) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_format(
    server: Server, fmt: str, count: int, seed: int, concurrency: int, media_workers: int, tally: Tally
) -> dict:
    rng = random.Random(f"{seed}-{fmt}")
    valid = seed_file(fmt)
    mutants = [media_mutant(rng, valid) for _ in range(count)]
    times: list[float] = []
    statuses: dict[str, int] = {}

    def on_answer(label: str, status: int, content: bytes, seconds: float) -> None:
        times.append(seconds)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        tally.record(f"{fmt} {label}", status, content)
        if seconds >= HANG_S:
            tally.violate("hang", format=fmt, mutator=label, seconds=round(seconds, 1))

    asyncio.run(send_all(server, [(name, body(fmt, data)) for name, data in mutants], concurrency, on_answer))
    workers = pool_size(server, media_workers)
    if workers != media_workers:
        tally.violate("decoder pool", format=fmt, workers=workers, expected=media_workers)
    canary = httpx.post(server.base_url + "/v1/chat/completions", json=body(fmt, valid), timeout=HANG_S)
    expected_canary = 400 if fmt == "TIFF" else 200
    if canary.status_code != expected_canary:
        tally.violate(
            "valid file after mutants", format=fmt, status=canary.status_code, response=canary.text[:300]
        )
    return {
        "mutants": count,
        "statuses": statuses,
        "p50_s": round(percentile(times, 0.5), 3),
        "p99_s": round(percentile(times, 0.99), 3),
        "max_s": round(max(times, default=0), 3),
        "decoder_workers_after": workers,
        "valid_file_after": canary.status_code,
    }


def run(
    server: Server,
    count: int,
    seed: int = 0,
    concurrency: int = 4,
    media_workers: int = 2,
    formats: list[str] | None = None,
) -> dict:
    """`count` mutants of each format; `media_workers` is the server's --media-workers."""
    tally = Tally()
    memory = PeakMemory(server)
    started = time.monotonic()
    errors_before = server.metrics().get("llava_errors_total", 0.0)
    per_format = {
        fmt: run_format(server, fmt, count, seed, concurrency, media_workers, tally)
        for fmt in formats or FORMATS
    }
    gauges = server.idle_gauges()
    if any(gauges.values()):
        tally.violate("leak", gauges=gauges)
    summary = tally.summary()
    return {
        "cases": summary["cases"],
        "num_5xx": summary["num_5xx"],
        "statuses": summary["statuses"],
        "violations": summary["violations"],
        "examples": summary["examples"],
        "formats": per_format,
        "p99_s": max(f["p99_s"] for f in per_format.values()),
        **memory.stop(),
        "idle_gauges": gauges,
        "errors_counted": server.metrics().get("llava_errors_total", 0.0) - errors_before,
        "seconds": round(time.monotonic() - started, 1),
        "passed": not tally.violations,
    }
