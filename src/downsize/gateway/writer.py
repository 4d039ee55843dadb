"""Writes the gateway's exchanges to the store from a background thread, in batches.

The request path only appends to a queue; one thread drains it into `Store.record_many`, up to
`max_batch` records or `max_wait_s` at a time, so that one transaction carries many exchanges. An item is
either a finished `(exchange, decision, specialist_id)` record or a zero-argument callable returning one:
the gateway hands over raw response bytes that way, and the JSON parsing, stream reassembly, origin
hashing and redaction (`prepare`) happen here, after the agent has its answer.

When the queue is full the caller chooses: `put` sheds (drops the record and counts it), `put_async(...,
block=True)` waits for room. `put_committed` waits until the record's batch is committed (the gateway's
`sync` capture mode): many concurrent requests still share one transaction (group commit). None of them
ever raises: logging must not fail the agent's call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from downsize.types import Exchange, RouteDecision

logger = logging.getLogger(__name__)

Record = tuple[Exchange, RouteDecision | None, int | None]
Item = Record | Callable[[], Record]
Prepare = Callable[[Exchange], Exchange | None]


class RecordSink(Protocol):
    """What the writer needs of a store (`downsize.store.store.Store` is one)."""

    def record_many(self, items: list[Record]) -> list[int]: ...


class _Stop:
    """Sentinel telling the thread to write what it has and exit."""


_STOP = _Stop()


class _Ack:
    """An item whose committing someone awaits on an event loop (sync capture, or an async flush)."""

    __slots__ = ("item", "loop", "future")

    def __init__(
        self, item: Item | None, loop: asyncio.AbstractEventLoop, future: asyncio.Future[bool]
    ) -> None:
        self.item = item
        self.loop = loop
        self.future = future


def _settle(results: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, ok in results:
        if not future.done():
            future.set_result(ok)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ExchangeWriter:
    """A queue of exchanges and the thread that stores them. `start()`, `put()`, `flush()`, `close()`."""

    def __init__(
        self,
        store: RecordSink,
        max_batch: int = 256,
        max_wait_s: float = 0.05,
        max_queue: int = 100_000,
        prepare: Prepare | None = None,
        observe_write: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.prepare = prepare
        self.observe_write = observe_write
        # SimpleQueue: C-implemented, no Python-level locks on put; its size bound is enforced in put().
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serialises inline drains (before start / after close)
        self._hurry = threading.Event()  # cuts the linger short: a flush or a close is waiting
        self._room_lock = threading.Lock()
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.filtered = 0  # records the redaction hook chose not to store
        self.sync_timeouts = 0  # sync-mode requests answered before their commit was confirmed

    @property
    def depth(self) -> int:
        """Items waiting to be written (approximate while the thread runs)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the writing thread (idempotent)."""
        if not self.running:
            self._thread = threading.Thread(target=self._run, name="downsize-exchange-writer", daemon=True)
            self._thread.start()

    # -- putting ---------------------------------------------------------------------------------------

    def _shed(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            logger.warning(
                "exchange queue full (%d items): %d exchange(s) dropped so far; the store is too slow",
                self.max_queue,
                self.dropped,
            )

    def put(self, item: Item) -> bool:
        """Queue one record (or a callable making it) without blocking; False if the queue was full and it was dropped."""
        if self._queue.qsize() >= self.max_queue:
            self._shed()
            return False
        self._queue.put(item)
        return True

    async def put_async(self, item: Item | _Ack, block: bool = True, wait_s: float = 5.0) -> bool:
        """Queue from the event loop; when full, wait up to `wait_s` for room (block) or drop at once (shed)."""
        if self._queue.qsize() < self.max_queue:
            self._queue.put(item)
            return True
        if block:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while (remaining := deadline - loop.time()) > 0:
                room: asyncio.Future[None] = loop.create_future()
                with self._room_lock:
                    self._room_waiters.append((loop, room))
                if self._queue.qsize() >= self.max_queue:  # else the writer made room meanwhile
                    try:
                        await asyncio.wait_for(room, remaining)
                    except TimeoutError:
                        break
                if self._queue.qsize() < self.max_queue:
                    self._queue.put(item)
                    return True
        self._shed()
        if isinstance(item, _Ack):
            _settle([(item.future, False)])
        return False

    async def put_committed(self, item: Item, block: bool = True, wait_s: float = 5.0) -> bool:
        """Queue and wait until the record is committed (True), dropped or failed (False), for `wait_s` at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        ack = _Ack(item, loop, loop.create_future())
        if not await self.put_async(ack, block, wait_s):
            return False
        try:
            return await asyncio.wait_for(ack.future, max(deadline - loop.time(), 0.001))
        except TimeoutError:
            self.sync_timeouts += 1
            logger.warning("an exchange was not committed within %s s; answering anyway", wait_s)
            return False

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued before this call is written (or failed); False on timeout."""
        if not self.running:
            self._drain_inline()
            return True
        marker = threading.Event()
        self._queue.put(marker)
        self._hurry.set()
        return marker.wait(timeout)

    async def flush_async(self, timeout: float = 10.0) -> bool:
        """`flush` for the event loop: awaits without blocking it."""
        if not self.running:
            await asyncio.to_thread(self._drain_inline)
            return True
        loop = asyncio.get_running_loop()
        ack = _Ack(None, loop, loop.create_future())
        self._queue.put(ack)
        self._hurry.set()
        try:
            return await asyncio.wait_for(ack.future, timeout)
        except TimeoutError:
            return False

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued and stop the thread; later puts are written by the next flush or close."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            self._hurry.set()
            thread.join(timeout)
            if thread.is_alive():
                logger.error(
                    "exchange writer did not finish within %s s; %d item(s) unwritten", timeout, self.depth
                )
                return
        self._thread = None
        self._drain_inline()

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        """Wait for work, linger `max_wait_s` so that a batch gathers, drain without blocking, write.

        The linger is a plain sleep (cut short by `flush`), not a `get(timeout)` per item: a put wakes
        the thread only when it is idle, instead of handing the GIL over once per exchange (which cost the
        event loop ~20 us a request). Exchanges that arrive during a write wait for the next batch: with
        `max_wait_s=0` (sync capture) that is a group commit of everything that came in meanwhile.
        """
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            # Cleared before looking at the queue, so that a flush or close that comes after cuts the linger.
            self._hurry.clear()
            try:
                first = get_nowait()  # a backlog: write it now
            except queue.Empty:
                first = get()
                if self.max_wait_s > 0 and not isinstance(first, threading.Event | _Stop | _Ack):
                    self._hurry.wait(self.max_wait_s)
            batch: list[Any] = []
            markers: list[threading.Event] = []
            stop = False
            item = first
            while True:
                if isinstance(item, _Stop):
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for marker in markers:
                marker.set()
            if stop:
                self._drain_inline()  # what was put after the stop sentinel, if anything
                return

    def _drain_inline(self) -> None:
        with self._lock:
            batch: list[Any] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, threading.Event):
                    item.set()
                elif not isinstance(item, _Stop):
                    batch.append(item)
                if len(batch) >= self.max_batch:
                    self._write(batch)
                    batch = []
            if batch:
                self._write(batch)

    def _build(self, item: Item) -> Record | None:
        try:
            record = item if isinstance(item, tuple) else item()
            if self.prepare is None:
                return record
            exchange = self.prepare(record[0])
        except (
            Exception
        ) as exc:  # a bug building or redacting one record must not lose the batch or the thread
            self.failed += 1
            # Type only: a redaction hook's message could quote the very text it was meant to hide.
            logger.error(
                "could not build or redact an exchange record (%s); it was not stored", type(exc).__name__
            )
            return None
        if exchange is None:
            self.filtered += 1
            return None
        return exchange, record[1], record[2]

    def _write(self, batch: list[Any]) -> None:
        """Build, prepare and store a batch; then tell whoever awaits which of their records were committed."""
        records: list[Record] = []
        owners: list[int] = []  # index in `batch` of each record
        for index, entry in enumerate(batch):
            item = entry.item if isinstance(entry, _Ack) else entry
            if item is None:
                continue
            record = self._build(item)
            if record is not None:
                records.append(record)
                owners.append(index)
        stored = self._store(records)
        ok = [False] * len(batch)
        for index, done in zip(owners, stored, strict=True):
            ok[index] = done
        self._notify(batch, ok)
        self._make_room()

    def _store(self, records: list[Record]) -> list[bool]:
        if not records:
            return []
        started = time.perf_counter()
        try:
            self.store.record_many(records)
            if self.observe_write is not None:
                self.observe_write(time.perf_counter() - started)
            self.written += len(records)
            return [True] * len(records)
        except Exception as exc:  # StoreError or anything else: logged and counted, never raised to a request
            if len(records) == 1:
                self.failed += 1
                logger.error("could not store an exchange: %s", _short(exc))
                return [False]
            logger.warning(
                "could not store a batch of %d exchanges (%s); retrying one by one", len(records), _short(exc)
            )
        results = []
        for record in records:  # one bad record should not cost the others
            try:
                self.store.record_many([record])
                self.written += 1
                results.append(True)
            except Exception as exc:  # as above
                self.failed += 1
                logger.error("could not store an exchange: %s", _short(exc))
                results.append(False)
        return results

    @staticmethod
    def _notify(batch: list[Any], ok: list[bool]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
        for entry, done in zip(batch, ok, strict=True):
            if isinstance(entry, _Ack):
                # A flush marker (no item) succeeds once everything before it was attempted.
                by_loop.setdefault(entry.loop, []).append((entry.future, done or entry.item is None))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, results)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _make_room(self) -> None:
        if not self._room_waiters:
            return
        with self._room_lock:
            waiters, self._room_waiters = self._room_waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # the loop is closed
                pass


def _short(exc: BaseException) -> str:
    """An error's type and the start of its message: SQL errors can echo whole request bodies."""
    return f"{type(exc).__name__}: {str(exc)[:300]}"
