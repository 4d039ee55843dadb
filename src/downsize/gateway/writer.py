"""Writes the gateway's exchanges to the store from a background thread, in batches.

The request path only appends to a queue (`put` never blocks and never raises); one thread drains it
into `Store.record_many`, up to 256 records or 50 ms at a time, so that one SQLite transaction carries
many exchanges. An item is either a finished `(exchange, decision, specialist_id)` record or a
zero-argument callable returning one: the gateway hands over raw response bytes that way and the
JSON parsing and stream reassembly happen here, after the agent has its answer.
"""

from __future__ import annotations

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


class RecordSink(Protocol):
    """What the writer needs of a store (`downsize.store.store.Store` is one)."""

    def record_many(self, items: list[Record]) -> list[int]: ...


class _Stop:
    """Sentinel telling the thread to write what it has and exit."""


_STOP = _Stop()


class ExchangeWriter:
    """A queue of exchanges and the thread that stores them. `start()`, `put()`, `flush()`, `close()`."""

    def __init__(
        self, store: RecordSink, max_batch: int = 256, max_wait_s: float = 0.05, max_queue: int = 100_000
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        # SimpleQueue: C-implemented, no Python-level locks on put; its size bound is enforced in put().
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serialises inline drains (before start / after close)
        self.written = 0
        self.failed = 0
        self.dropped = 0

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

    def put(self, item: Item) -> bool:
        """Queue one record (or a callable making it) without blocking; False if the queue was full and it was dropped."""
        if self._queue.qsize() >= self.max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "exchange queue full (%d items): %d exchange(s) dropped so far; the store is too slow",
                    self.max_queue,
                    self.dropped,
                )
            return False
        self._queue.put(item)
        return True

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued before this call is written (or failed); False on timeout."""
        if not self.running:
            self._drain_inline()
            return True
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued and stop the thread; later puts are written by the next flush or close."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
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
        get = self._queue.get
        while True:
            batch: list[Item] = []
            markers: list[threading.Event] = []
            stop = False
            item = get()
            deadline = time.monotonic() + self.max_wait_s
            while True:
                if isinstance(item, _Stop):
                    stop = True
                    break
                if isinstance(item, threading.Event):
                    markers.append(item)
                    break  # a flush is waiting: write now rather than wait for the batch to fill
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                remaining = deadline - time.monotonic()
                try:
                    item = get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for marker in markers:
                marker.set()
            if stop:
                return

    def _drain_inline(self) -> None:
        with self._lock:
            batch: list[Item] = []
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

    def _write(self, batch: list[Item]) -> None:
        records: list[Record] = []
        for item in batch:
            if isinstance(item, tuple):
                records.append(item)
                continue
            try:
                records.append(item())
            except Exception:  # a bug building one record must not lose the batch or kill the thread
                self.failed += 1
                logger.exception("could not build an exchange record; it was not stored")
        if not records:
            return
        try:
            self.store.record_many(records)
            self.written += len(records)
            return
        except Exception as exc:  # StoreError or anything else: logged and counted, never raised to a request
            if len(records) == 1:
                self.failed += 1
                logger.error("could not store an exchange: %s", _short(exc))
                return
            logger.warning(
                "could not store a batch of %d exchanges (%s); retrying one by one", len(records), _short(exc)
            )
        for record in records:  # one bad record should not cost the others
            try:
                self.store.record_many([record])
                self.written += 1
            except Exception as exc:  # as above
                self.failed += 1
                logger.error("could not store an exchange: %s", _short(exc))


def _short(exc: BaseException) -> str:
    """An error's type and the start of its message: SQL errors can echo whole request bodies."""
    return f"{type(exc).__name__}: {str(exc)[:300]}"
