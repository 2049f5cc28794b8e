"""The decoder pool: a crash, a hang or a cancelled caller fails one call; the pool keeps serving."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from server.media import MediaError
from server.media.pool import DecodePool


def crash() -> None:
    os._exit(3)  # as a native segfault would: no exception, the process is gone


def hang(seconds: float) -> None:
    time.sleep(seconds)


def refuse() -> None:
    raise MediaError("invalid_image", "no")


def add(a: int, b: int) -> int:
    return a + b


def test_crash_hang_and_cancel_fail_one_call_each():
    async def scenario() -> None:
        pool = DecodePool(num_workers=1)
        await pool.start()
        try:
            assert await pool.run(add, 2, 3, timeout=10) == 5
            with pytest.raises(MediaError) as e:
                await pool.run(crash, timeout=10)
            assert e.value.code == "crashed"
            assert await pool.run(add, 1, 1, timeout=10) == 2  # a fresh worker took over
            with pytest.raises(MediaError) as e:  # without the kill at 0.5 s the call returns after 30 s
                await pool.run(hang, 30, timeout=0.5)
            assert e.value.code == "timeout"
            with pytest.raises(MediaError) as e:
                await pool.run(refuse, timeout=10)
            assert e.value.code == "invalid_image"
            call = asyncio.ensure_future(pool.run(hang, 30, timeout=60))
            await asyncio.sleep(0.3)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await asyncio.wait_for(pool.run(add, 4, 4, timeout=10), 10) == 8
            assert pool.num_restarts == 3
        finally:
            await pool.close()

    asyncio.run(scenario())
