"""One thread that writes the webhook's acknowledgements, so the event loop never waits on a commit.

Why a thread of its own rather than the thread pool: handing a request to the pool costs more CPU
than the acknowledgement's SQL (a capacity limiter, a worker thread woken per call), and concurrent
writers on SQLite only queue on one lock anyway. Here the loop puts the ack on a queue and awaits a
future; the thread takes whatever is waiting — up to `BATCH` — writes it in one transaction (one
fsync for all of them) and answers each future through the loop. The 2xx is sent only after the
commit, so an acknowledged delivery survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading

from bot.config import InfrastructureError
from bot.store.acks import Ack, Acked, AckWriter

log = logging.getLogger("loopgate.webhooks")
BATCH = 64
Waiter = tuple[Ack, asyncio.Future[Acked], asyncio.AbstractEventLoop]


class AckQueue:
    def __init__(self, writer: AckWriter) -> None:
        self._writer = writer
        self._queue: queue.SimpleQueue[Waiter | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    async def write(self, ack: Ack) -> Acked:
        """The ack, committed; raises what the write raised (InfrastructureError: the database, or
        the server stopping, answered 503 so that GitHub may redeliver)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Acked] = loop.create_future()
        with self._lock:
            if self._closed:
                raise InfrastructureError("the webhook's writer has stopped: the server is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loopgate-acks", daemon=True)
                self._thread.start()
            self._queue.put((ack, future, loop))
        return await future

    def close(self) -> None:
        """Write what is queued, then stop the thread and release its connection. Nothing is queued
        after the stop (`write` refuses under the same lock), so no request waits forever."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout=30)
        self._writer.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    waiter = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiter is None:
                    stopping = True
                    break
                batch.append(waiter)
            try:
                results = self._writer.write([ack for ack, _, _ in batch])
            except BaseException as exc:  # the writer returns failures; this is a bug in it
                log.exception("writing acknowledgements failed")
                results = [exc if isinstance(exc, Exception) else RuntimeError(str(exc))] * len(batch)
            for (_, future, loop), result in zip(batch, results, strict=True):
                # A closed loop raises RuntimeError: nobody waits for that answer any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, result)


def _settle(future: asyncio.Future[Acked], result: Acked | Exception) -> None:
    if future.done():  # the request was cancelled (the client went away); the write stands
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
