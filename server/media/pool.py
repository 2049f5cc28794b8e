"""An isolated pool of decoder processes: a native crash, a hang or a memory blow-up fails one item.

Each worker is a separate process (forkserver, with the decoders preloaded) that runs one call at
a time: a picklable function and its arguments in, its result or a `MediaError` out. A call that
outlives its timeout, a worker that dies mid-call and a call whose caller was cancelled (client
gone) all end the same way: that worker is killed and replaced, the item fails, the pool goes on.
`session()` keeps one worker for several calls (a video's probe, then its decode).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import resource
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from typing import Any

from server.media import MediaError

log = logging.getLogger(__name__)

PRELOAD = ["server.media.image", "server.media.audio", "server.media.video"]
_KILL_WAIT_S = 2.0


def _worker_main(conn: Connection, memory_bytes: int) -> None:
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        reply: tuple[Any, ...]  # ("ok", result) | ("media_error", code, message) | ("error", exception name)
        try:
            reply = ("ok", fn(*args))
        except MediaError as e:
            reply = ("media_error", e.code, e.message)
        except MemoryError:
            reply = ("media_error", "invalid_request", "the media item needs more memory than a decoder may use")
        except Exception as e:
            log.exception("decoder call %s failed", getattr(fn, "__name__", fn))
            reply = ("error", type(e).__name__)
        try:
            conn.send(reply)
        except Exception as e:  # an unpicklable result is a bug in the decoder, not the item
            log.exception("decoder result could not be sent")
            conn.send(("error", type(e).__name__))


class _Worker:
    def __init__(self, ctx, memory_bytes: int) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, memory_bytes), daemon=True,
                                   name="llava-media-decoder")
        self.process.start()
        child.close()
        self.is_broken = False

    def kill(self) -> None:
        self.is_broken = True
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(_KILL_WAIT_S)
        with contextlib.suppress(Exception):
            self.conn.close()


class DecoderSession:
    """One worker held for a sequence of calls."""

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker

    async def call(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        worker = self._worker
        if worker.is_broken:
            raise MediaError("invalid_request", "the media decoder was restarted")
        loop = asyncio.get_running_loop()
        finished = False
        try:
            await asyncio.to_thread(worker.conn.send, (fn, args))
            readable = loop.create_future()

            def wake() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(worker.conn.fileno(), wake)
            try:
                await asyncio.wait_for(readable, timeout)
            except TimeoutError as e:
                raise _Timeout() from e
            finally:
                loop.remove_reader(worker.conn.fileno())
            reply = await asyncio.to_thread(worker.conn.recv)
            finished = True
        except _Timeout:
            worker.kill()
            raise MediaError("timeout", f"decoding took longer than {timeout:.0f} s") from None
        except (EOFError, OSError, BrokenPipeError) as e:
            log.warning("media decoder process died (exit code %s)", worker.process.exitcode)
            worker.kill()
            raise MediaError("crashed", "the media decoder failed on this item") from e
        finally:
            if not finished and not worker.is_broken:
                worker.kill()  # cancelled mid-call: the worker may still be busy with it
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "media_error":
            raise MediaError(reply[1], reply[2])
        raise MediaError("crashed", "the media decoder failed on this item")


class _Timeout(Exception):
    pass


class DecodePool:
    def __init__(self, num_workers: int, memory_mb: int = 0) -> None:
        self.num_workers = num_workers
        self.memory_bytes = memory_mb * 2**20
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._is_closed = False
        self._tasks: set[asyncio.Task] = set()
        self.num_restarts = 0

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(asyncio.to_thread(self._spawn) for _ in range(self.num_workers)))
        for worker in workers:
            self._idle.put_nowait(worker)

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self.memory_bytes)
        self._all.add(worker)
        return worker

    async def close(self) -> None:
        self._is_closed = True
        for worker in list(self._all):
            await asyncio.to_thread(worker.kill)
        self._all.clear()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[DecoderSession]:
        assert self._idle is not None, "DecodePool.start() first"
        worker = await self._idle.get()
        try:
            yield DecoderSession(worker)
        finally:
            if worker.is_broken or not worker.process.is_alive():
                self._all.discard(worker)
                worker.kill()
                self.num_restarts += 1
                # replace it off the caller's path (the caller may be cancelled already)
                task = asyncio.get_running_loop().create_task(self._replace())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._idle.put_nowait(worker)

    async def _replace(self) -> None:
        if self._is_closed:
            return
        try:
            worker = await asyncio.to_thread(self._spawn)
        except Exception:
            log.exception("could not start a media decoder process")
            return
        if self._is_closed:
            worker.kill()
        else:
            assert self._idle is not None  # replacements start from sessions, after start()
            self._idle.put_nowait(worker)

    async def run(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        async with self.session() as s:
            return await s.call(fn, *args, timeout=timeout)
